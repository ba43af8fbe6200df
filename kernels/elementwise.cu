// Element-wise ops of the backend interface; each mirrors the CPU op named in its comment
// (src/engine/ops.rs, src/engine/cpu.rs). One thread per element, grid-stride loops.

// relu_dropout_fwd: x [n] → relu_out = max(x, 0), y = relu_out ⊙ mask (mask may be null: eval mode).
extern "C" __global__ void relu_dropout_fwd(const float* x, const float* mask, float* relu_out, float* y, long long n) {
    FOR_EACH(i, n) {
        float r = fmaxf(x[i], 0.0f);
        relu_out[i] = r;
        y[i] = mask ? r * mask[i] : r;
    }
}

// relu_dropout_bwd: dx = dy ⊙ mask where relu_out > 0, else 0.
extern "C" __global__ void relu_dropout_bwd(const float* dy, const float* relu_out, const float* mask, float* dx, long long n) {
    FOR_EACH(i, n) {
        float g = mask ? dy[i] * mask[i] : dy[i];
        dx[i] = relu_out[i] > 0.0f ? g : 0.0f;
    }
}

// reparam_fwd: z = μ + e^{ls}·ε.
extern "C" __global__ void reparam_fwd(const float* mu, const float* ls, const float* eps, float* z, long long n) {
    FOR_EACH(i, n) { z[i] = mu[i] + expf(ls[i]) * eps[i]; }
}

// reparam_bwd: dμ += dz, dls += dz·e^{ls}·ε.
extern "C" __global__ void reparam_bwd(const float* dz, const float* ls, const float* eps, float* dmu, float* dls, long long n) {
    FOR_EACH(i, n) {
        dmu[i] += dz[i];
        dls[i] += dz[i] * expf(ls[i]) * eps[i];
    }
}

// exp_add: y = e^{a + c}.
extern "C" __global__ void exp_add(const float* a, float c, float* y, long long n) {
    FOR_EACH(i, n) { y[i] = expf(a[i] + c); }
}

// axpy: y += α·x.
extern "C" __global__ void axpy(float alpha, const float* x, float* y, long long n) {
    FOR_EACH(i, n) { y[i] += alpha * x[i]; }
}

// mul: y = x ⊙ z.
extern "C" __global__ void mul(const float* x, const float* z, float* y, long long n) {
    FOR_EACH(i, n) { y[i] = x[i] * z[i]; }
}

// softplus: y = log(1 + e^x) without overflow.
extern "C" __global__ void softplus(const float* x, float* y, long long n) {
    FOR_EACH(i, n) { y[i] = fmaxf(x[i], 0.0f) + log1pf(expf(-fabsf(x[i]))); }
}

// gather_exp_rows: θ[r, :] = exp(log_alpha[batch[r], :]) for rows r of [rows×n].
extern "C" __global__ void gather_exp_rows(const float* log_alpha, const unsigned* batch, float* theta, long long rows, long long n) {
    FOR_EACH(i, rows * n) { theta[i] = expf(log_alpha[(long long)batch[i / n] * n + i % n]); }
}

// gather_rows: dst[r, :] = src[rows[r], :].
extern "C" __global__ void gather_rows(const float* src, const unsigned* rows, float* dst, long long nrows, long long n) {
    FOR_EACH(i, nrows * n) { dst[i] = src[(long long)rows[i / n] * n + i % n]; }
}

// adam (adam_step): m ← β1 m + (1−β1) g; v ← β2 v + (1−β2) g²; p ← p − step·m / (√v/sq + eps), with
// step = lr/(1−β1^t) and sq = √(1−β2^t) computed on the host in f64.
extern "C" __global__ void adam(float* p, const float* g, float* m, float* v, float b1, float b2, float step, float sq, float eps, long long n) {
    FOR_EACH(i, n) {
        float gi = g[i];
        float mi = b1 * m[i] + (1.0f - b1) * gi;
        float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] -= step * mi / (sqrtf(vi) / sq + eps);
    }
}

// all_finite: flag[0] = 0 if any element is NaN or ±inf (flag preset to 1 by the host). Atomic: several
// threads may clear it at once (harmless on a GPU, but a data race for the emulator's sanitizer).
extern "C" __global__ void all_finite(const float* x, int* flag, long long n) {
    FOR_EACH(i, n) {
        if (!isfinite(x[i])) atomicExch(flag, 0);
    }
}

// add_bias (linear_fwd after the cuBLAS GEMM): y[rows×n] += b[n] broadcast over rows.
extern "C" __global__ void add_bias(float* y, const float* b, long long rows, long long n) {
    FOR_EACH(i, rows * n) { y[i] += b[i % n]; }
}

// scatter_theta_grad: dla[S×n] row s = Σ_{i: batch[i] = s} dθ[i, :] ⊙ θ[i, :], rows in order
// (deterministic, as the CPU loop); one thread per (s, gene), overwriting every row.
extern "C" __global__ void scatter_theta_grad(const float* dtheta, const float* theta, const unsigned* batch, float* dla, long long rows,
                                              long long s, long long n) {
    FOR_EACH(i, s * n) {
        long long b = i / n, j = i % n;
        float acc = 0.0f;
        for (long long r = 0; r < rows; ++r) {
            if ((long long)batch[r] == b) acc += dtheta[r * n + j] * theta[r * n + j];
        }
        dla[i] = acc;
    }
}

// copy_cols: dst[rows×w] = columns [c0, c0+w) of src[rows×cols].
extern "C" __global__ void copy_cols(const float* src, float* dst, long long rows, long long cols, long long c0, long long w) {
    FOR_EACH(i, rows * w) { dst[i] = src[(i / w) * cols + c0 + i % w]; }
}

// set_cols: columns [c0, c0+w) of dst[rows×cols] = src[rows×w].
extern "C" __global__ void set_cols(const float* src, float* dst, long long rows, long long cols, long long c0, long long w) {
    FOR_EACH(i, rows * w) { dst[(i / w) * cols + c0 + i % w] = src[i]; }
}

// to_bf16 (the ranking GEMMs' operands, `--precision bf16` on the GPU): y = x rounded to bfloat16 to
// nearest even, as the CPU's bf16 GEMM packs them; NaN stays a (quiet) NaN.
extern "C" __global__ void to_bf16(const float* x, unsigned short* y, long long n) {
    FOR_EACH(i, n) {
        unsigned u = __float_as_uint(x[i]);
        y[i] = (u & 0x7fffffffu) > 0x7f800000u ? (unsigned short)((u >> 16) | 0x40u) : (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
}
