// Split softmax of the decoder (ops::split_softmax_fwd/bwd, spec §2.3): genes in group 0 (homologous)
// and group 1 (the rest) are normalised separately and scaled by the group weights w0 = |H|/N,
// w1 = |NH|/N, so each row sums to 1. One block per row, 256 threads. r, ρ, d [rows×n]; group [n].

// ρ_g = w_G·exp(r_g − max_G)/Σ_{h∈G} exp(r_h − max_G).
extern "C" __global__ void split_softmax_fwd(const float* r, const unsigned char* group, float w0, float w1, float* rho, int n) {
    __shared__ float shared[32];
    long long base = (long long)blockIdx.x * n;
    float m0 = NEG_INF, m1 = NEG_INF;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        if (group[j]) m1 = fmaxf(m1, r[base + j]); else m0 = fmaxf(m0, r[base + j]);
    }
    m0 = block_max(m0, shared);
    m1 = block_max(m1, shared);
    float s0 = 0.0f, s1 = 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        if (group[j]) s1 += expf(r[base + j] - m1); else s0 += expf(r[base + j] - m0);
    }
    s0 = block_sum(s0, shared);
    s1 = block_sum(s1, shared);
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
    a0 = block_sum(a0, shared) / w0;
    a1 = block_sum(a1, shared) / w1;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        d[base + j] = rho[base + j] * (d[base + j] - (group[j] ? a1 : a0));
    }
}
