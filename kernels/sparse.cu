// The raw-count input layers (ops::sparse_linear_fwd/bwd): a CSR minibatch X [rows×K] (the counts
// with the batch one-hot appended) times dense W [K×N].

// y[r, :] = b + Σ_p X[r, idx[p]]·W[idx[p], :]; one block per row, threads over output columns
// (coalesced reads of W's rows).
extern "C" __global__ void sparse_linear_fwd(const long long* indptr, const unsigned* indices, const float* values, const float* w,
                                             const float* b, float* y, int n) {
    int r = blockIdx.x;
    for (int q = threadIdx.x; q < n; q += blockDim.x) {
        float s = b[q];
        for (long long p = indptr[r]; p < indptr[r + 1]; ++p) s += values[p] * w[(long long)indices[p] * n + q];
        y[(long long)r * n + q] = s;
    }
}

// dW = Xᵀ·dy from the CSC transpose (features present in the batch only): one block per present
// feature f (row `feat[f]` of dW), threads over columns; rows of each feature in order (deterministic).
extern "C" __global__ void sparse_linear_bwd_w(const long long* colptr, const unsigned* rowidx, const float* values, const unsigned* feat,
                                               const float* dy, float* dw, int n) {
    int f = blockIdx.x;
    long long out = (long long)feat[f] * n;
    for (int q = threadIdx.x; q < n; q += blockDim.x) {
        float s = 0.0f;
        for (long long p = colptr[f]; p < colptr[f + 1]; ++p) s += values[p] * dy[(long long)rowidx[p] * n + q];
        dw[out + q] = s;
    }
}

// db = Σ_rows dy (also the column sums of linear_bwd): one thread per column.
extern "C" __global__ void col_sums(const float* a, float* out, int rows, int n) {
    int q = blockIdx.x * blockDim.x + threadIdx.x;
    if (q >= n) return;
    float s = 0.0f;
    for (int r = 0; r < rows; ++r) s += a[(long long)r * n + q];
    out[q] = s;
}
