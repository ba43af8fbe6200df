// Split softmax of the decoder (ops::split_softmax_fwd/bwd, spec §2.3): genes in group 0 (homologous)
// and group 1 (the rest) are normalised separately and scaled by the group weights w0 = |H|/N,
// w1 = |NH|/N, so each row sums to 1. One block per row, 256 threads. r, ρ, d [rows×n]; group [n].

#define NEG_INF (-__int_as_float(0x7f800000))

__device__ float block_reduce(float v, float* shared, bool is_max) {
    for (int o = 16; o > 0; o >>= 1) {
        float u = __shfl_xor_sync(0xffffffff, v, o);
        v = is_max ? fmaxf(v, u) : v + u;
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    float s = is_max ? NEG_INF : 0.0f;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) s = is_max ? fmaxf(s, shared[w]) : s + shared[w];
    return s;
}

// ρ_g = w_G·exp(r_g − max_G)/Σ_{h∈G} exp(r_h − max_G).
extern "C" __global__ void split_softmax_fwd(const float* r, const unsigned char* group, float w0, float w1, float* rho, int n) {
    __shared__ float shared[32];
    long long base = (long long)blockIdx.x * n;
    float m0 = NEG_INF, m1 = NEG_INF;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        if (group[j]) m1 = fmaxf(m1, r[base + j]); else m0 = fmaxf(m0, r[base + j]);
    }
    m0 = block_reduce(m0, shared, true);
    m1 = block_reduce(m1, shared, true);
    float s0 = 0.0f, s1 = 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        if (group[j]) s1 += expf(r[base + j] - m1); else s0 += expf(r[base + j] - m0);
    }
    s0 = block_reduce(s0, shared, false);
    s1 = block_reduce(s1, shared, false);
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        rho[base + j] = group[j] ? w1 * expf(r[base + j] - m1) / s1 : w0 * expf(r[base + j] - m0) / s0;
    }
}

// dr_g = ρ_g·(dρ_g − Σ_{h∈G} ρ_h dρ_h / w_G), in place on d (dρ in, dr out).
extern "C" __global__ void split_softmax_bwd(const float* rho, const unsigned char* group, float w0, float w1, float* d, int n) {
    __shared__ float shared[32];
    long long base = (long long)blockIdx.x * n;
    float a0 = 0.0f, a1 = 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        float v = rho[base + j] * d[base + j];
        if (group[j]) a1 += v; else a0 += v;
    }
    a0 = block_reduce(a0, shared, false) / w0;
    a1 = block_reduce(a1, shared, false) / w1;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        d[base + j] = rho[base + j] * (d[base + j] - (group[j] ? a1 : a0));
    }
}
