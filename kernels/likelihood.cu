// The fused ZINB / NB log-likelihood with its gradients (ops::likelihood, spec §3, §3.1): one pass over
// cells x genes, lgamma/digamma only for non-zero counts. One block per cell (row), 256 threads; the
// per-gene terms are computed in double (as the CPU reference path), stored as float.
// Shapes: x, ρ, θ, s (logit of the non-dropout probability) [rows×n]; lib [rows].
// Outputs: nll[row] = −Σ_g ll; with grads: dρ = −scale·∂ll/∂ρ, dθ = −scale·∂ll/∂θ, ds = −scale·∂ll/∂s
// [rows×n] and dlib[row] = −scale·Σ_g ∂ll/∂l. Clamps: θ ≥ 1e-7, ρ ∈ [1e-8, 1 − 1e-7] (zero gradient
// where active); NB clamps p = μ/(μ+θ) to [1e-7, 1 − 1e-7].

#define THETA_MIN 1e-7
#define RHO_MIN 1e-8
#define RHO_MAX (1.0 - 1e-7)
#define P_MIN 1e-7
#define P_MAX (1.0 - 1e-7)
#define SMALL_COUNT 16.0

__device__ double softplus_d(double a) { return fmax(a, 0.0) + log1p(exp(-fabs(a))); }
__device__ double sigmoid_d(double a) {
    if (a >= 0.0) return 1.0 / (1.0 + exp(-a));
    double e = exp(a);
    return e / (1.0 + e);
}
__device__ double digamma_d(double x) {
    double r = 0.0;
    while (x < 6.0) { r -= 1.0 / x; x += 1.0; }
    double f = 1.0 / (x * x);
    return r + log(x) - 0.5 / x - f * (1.0 / 12.0 - f * (1.0 / 120.0 - f * (1.0 / 252.0 - f * (1.0 / 240.0 - f * (1.0 / 132.0)))));
}
// ln Γ(x+θ) − ln Γ(θ) and ψ(x+θ) − ψ(θ): finite sums for small integer counts, as the CPU.
__device__ double lgamma_ratio_d(double x, double th) {
    if (x <= SMALL_COUNT && x == floor(x)) {
        double s = 0.0;
        for (double k = 0.0; k < x; k += 1.0) s += log(th + k);
        return s;
    }
    return lgamma(x + th) - lgamma(th);
}
__device__ double digamma_diff_d(double x, double th) {
    if (x <= SMALL_COUNT && x == floor(x)) {
        double s = 0.0;
        for (double k = 0.0; k < x; k += 1.0) s += 1.0 / (th + k);
        return s;
    }
    return digamma_d(x + th) - digamma_d(th);
}

struct LogLik { double ll, d_theta, d_rho, d_lib, d_logit; };

__device__ LogLik zinb_d(double x, double theta, double rho, double lib, double s) {
    bool theta_free = theta >= THETA_MIN, rho_free = rho >= RHO_MIN && rho <= RHO_MAX;
    double th = fmax(theta, THETA_MIN), r = fmin(fmax(rho, RHO_MIN), RHO_MAX);
    double mu = r * lib, tm = th + mu, th_log = -th * log1p(mu / th);
    LogLik o;
    double d_s, d_th, d_mu;
    if (x < 1e-7) {
        double a = s + th_log;
        o.ll = softplus_d(a) - softplus_d(s);
        double sa = sigmoid_d(a);
        d_s = sa - sigmoid_d(s);
        d_th = sa * (mu / tm - log1p(mu / th));
        d_mu = -sa * th / tm;
    } else {
        o.ll = -softplus_d(s) + s + th_log - x * log1p(th / mu) + lgamma_ratio_d(x, th) - lgamma(x + 1.0);
        d_s = sigmoid_d(-s);
        d_th = -log1p(mu / th) + (mu - x) / tm + digamma_diff_d(x, th);
        d_mu = x / mu - (x + th) / tm;
    }
    o.d_theta = theta_free ? d_th : 0.0;
    o.d_rho = rho_free ? d_mu * lib : 0.0;
    o.d_lib = d_mu * r;
    o.d_logit = d_s;
    return o;
}

__device__ LogLik nb_d(double x, double theta, double rho, double lib) {
    bool theta_free = theta >= THETA_MIN, rho_free = rho >= RHO_MIN && rho <= RHO_MAX;
    double th = fmax(theta, THETA_MIN), r = fmin(fmax(rho, RHO_MIN), RHO_MAX);
    double mu = r * lib, tm = th + mu, p = mu / tm;
    double lg = lgamma_ratio_d(x, th) - lgamma(x + 1.0);
    double dlg = digamma_diff_d(x, th);
    LogLik o;
    o.d_logit = 0.0;
    if (p >= P_MIN && p <= P_MAX) {
        o.ll = -x * log1p(th / mu) - th * log1p(mu / th) + lg;
        double d_mu = x / mu - (x + th) / tm;
        o.d_theta = theta_free ? -log1p(mu / th) + (mu - x) / tm + dlg : 0.0;
        o.d_rho = rho_free ? d_mu * lib : 0.0;
        o.d_lib = d_mu * r;
    } else {
        double pc = fmin(fmax(p, P_MIN), P_MAX);
        o.ll = x * log(pc) + th * log1p(-pc) + lg;
        o.d_theta = theta_free ? log1p(-pc) + dlg : 0.0;
        o.d_rho = 0.0;
        o.d_lib = 0.0;
    }
    return o;
}

// `logit` null: NB. `d_rho` null: value only (nll). Gradient pointers are all given or all null
// (d_logit may be null for NB).
extern "C" __global__ void likelihood(const float* x, const float* rho, const float* theta, const float* logit, const float* lib, int n,
                                      double scale, float* nll, float* d_rho, float* d_theta, float* d_logit, float* d_lib) {
    __shared__ double shared[32];
    long long base = (long long)blockIdx.x * n;
    double l = lib[blockIdx.x];
    double s = 0.0, sl = 0.0;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        long long g = base + j;
        LogLik r = logit ? zinb_d(x[g], theta[g], rho[g], l, logit[g]) : nb_d(x[g], theta[g], rho[g], l);
        s -= r.ll;
        if (d_rho) {
            d_rho[g] = (float)(-scale * r.d_rho);
            d_theta[g] = (float)(-scale * r.d_theta);
            if (d_logit) d_logit[g] = (float)(-scale * r.d_logit);
            sl -= scale * r.d_lib;
        }
    }
    s = block_sum_d(s, shared);
    sl = block_sum_d(sl, shared);
    if (threadIdx.x == 0) {
        nll[blockIdx.x] = (float)s;
        if (d_lib) d_lib[blockIdx.x] = (float)sl;
    }
}

// The candidate / label-transfer scoring kernel (ops::likelihood_score): scored row i takes its counts
// from stored CSR row row_of[i] (ptr [stored+1], idx, val) and scores them against decoded row rows[i]
// of ρ (and the logit), θ row batch[i] of the per-batch table [S×n], library lib[i]. Every gene's
// zero-count term, then for the genes with counts the exact term less the zero-count one: no dense
// copy of the counts, and the decoded rows are read in place (no (cells x k x genes) tensor).
// counts_only: skip the zero-count terms of all genes (HostRows::counts_only, ops::ScorePart::Counts: the label transfer
// interpolates that part).
extern "C" __global__ void likelihood_score(const long long* ptr, const unsigned* idx, const float* val, const unsigned* row_of,
                                            const unsigned* rows, const unsigned* batch, const float* rho, const float* theta,
                                            const float* logit, const float* lib, int n, int counts_only, float* nll) {
    __shared__ double shared[32];
    long long rb = (long long)rows[blockIdx.x] * n;
    long long tb = (long long)batch[blockIdx.x] * n;
    double l = lib[blockIdx.x];
    double s = 0.0;
    for (int j = threadIdx.x; j < (counts_only ? 0 : n); j += blockDim.x) {
        LogLik z = logit ? zinb_d(0.0, theta[tb + j], rho[rb + j], l, logit[rb + j]) : nb_d(0.0, theta[tb + j], rho[rb + j], l);
        s -= z.ll;
    }
    long long c = row_of[blockIdx.x];
    for (long long p = ptr[c] + threadIdx.x; p < ptr[c + 1]; p += blockDim.x) {
        long long j = idx[p];
        double x = val[p];
        LogLik z = logit ? zinb_d(0.0, theta[tb + j], rho[rb + j], l, logit[rb + j]) : nb_d(0.0, theta[tb + j], rho[rb + j], l);
        LogLik r = logit ? zinb_d(x, theta[tb + j], rho[rb + j], l, logit[rb + j]) : nb_d(x, theta[tb + j], rho[rb + j], l);
        s -= r.ll - z.ll;
    }
    s = block_sum_d(s, shared);
    if (threadIdx.x == 0) nll[blockIdx.x] = (float)s;
}
