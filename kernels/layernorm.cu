// LayerNorm over the last dimension (ops::layernorm_fwd/bwd), one block per row, 256 threads.
// Shapes: x, y, x̂ [rows×d]; γ, β [d]; rstd [rows]. ε = 1e-5 as LN_EPS.

#define LN_EPS 1e-5f
#define THREADS 256

// y = γ x̂ + β, x̂ = (x − mean)·rstd, rstd = 1/√(var + ε) (biased variance).
extern "C" __global__ void layernorm_fwd(const float* x, const float* gamma, const float* beta, float* y, float* xhat, float* rstd, int d) {
    __shared__ float shared[32];
    const float* xr = x + (long long)blockIdx.x * d;
    float s = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) s += xr[j];
    float mean = block_sum(s, shared) / d;
    float q = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float c = xr[j] - mean;
        q += c * c;
    }
    float r = rsqrtf(block_sum(q, shared) / d + LN_EPS);
    if (threadIdx.x == 0) rstd[blockIdx.x] = r;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        long long k = (long long)blockIdx.x * d + j;
        float h = (xr[j] - mean) * r;
        xhat[k] = h;
        y[k] = gamma[j] * h + beta[j];
    }
}

// dx = r·(g − mean(g) − x̂·mean(g⊙x̂)) with g = dy⊙γ (one block per row).
extern "C" __global__ void layernorm_bwd_dx(const float* dy, const float* xhat, const float* rstd, const float* gamma, float* dx, int d) {
    __shared__ float shared[32];
    long long base = (long long)blockIdx.x * d;
    float sg = 0.0f, sgx = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float g = dy[base + j] * gamma[j];
        sg += g;
        sgx += g * xhat[base + j];
    }
    float mg = block_sum(sg, shared) / d;
    float mgx = block_sum(sgx, shared) / d;
    float r = rstd[blockIdx.x];
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float g = dy[base + j] * gamma[j];
        dx[base + j] = r * (g - mg - xhat[base + j] * mgx);
    }
}

// dγ = Σ_rows dy⊙x̂, dβ = Σ_rows dy: one thread per column, rows in order (deterministic).
extern "C" __global__ void layernorm_bwd_params(const float* dy, const float* xhat, float* dgamma, float* dbeta, int rows, int d) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= d) return;
    float g = 0.0f, b = 0.0f;
    for (int r = 0; r < rows; ++r) {
        long long k = (long long)r * d + j;
        g += dy[k] * xhat[k];
        b += dy[k];
    }
    dgamma[j] = g;
    dbeta[j] = b;
}
