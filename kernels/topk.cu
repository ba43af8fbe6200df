// The screening pass of the exact data-level kNN (src/knn/data_level.rs, Backend::knn_screen). After a GEMM has
// written the similarities of a band of target rows to a block of context rows, each target row's
// running list of its `l` best (similarity, context index) is merged with the block: both go into
// shared memory, a bitonic sort orders them best first (higher similarity, then lower index, as the
// CPU's ties), and the first `l` are kept. One block of 256 threads per target row.
// Shapes: sims [rows×cn] (row-major); best_sim, best_idx [rows×l], best first, (-inf, 0xffffffff) when
// empty. Needs l + cn ≤ TOPK_SORT.

#define TOPK_SORT 4096

__device__ bool topk_before(float a, unsigned ia, float b, unsigned ib) { return a > b || (a == b && ia < ib); }

extern "C" __global__ void topk_merge(const float* sims, long long cn, unsigned c0, float* best_sim, unsigned* best_idx, int l) {
    __shared__ float key[TOPK_SORT];
    __shared__ unsigned id[TOPK_SORT];
    long long r = blockIdx.x;
    int total = l + (int)cn, p = 1;
    while (p < total) p <<= 1;
    for (int i = threadIdx.x; i < p; i += blockDim.x) {
        if (i < l) {
            key[i] = best_sim[r * l + i];
            id[i] = best_idx[r * l + i];
        } else if (i < total) {
            key[i] = sims[r * cn + (i - l)];
            id[i] = c0 + (unsigned)(i - l);
        } else {
            key[i] = NEG_INF;
            id[i] = 0xffffffffu;
        }
    }
    __syncthreads();
    for (int k = 2; k <= p; k <<= 1) {
        for (int j = k >> 1; j > 0; j >>= 1) {
            for (int i = threadIdx.x; i < p; i += blockDim.x) {
                int o = i ^ j;
                if (o > i) {
                    // Within each k-run, alternate directions so that the runs merge bitonically.
                    bool first = (i & k) == 0;
                    bool swap = first ? topk_before(key[o], id[o], key[i], id[i]) : topk_before(key[i], id[i], key[o], id[o]);
                    if (swap) {
                        float tk = key[i];
                        key[i] = key[o];
                        key[o] = tk;
                        unsigned ti = id[i];
                        id[i] = id[o];
                        id[o] = ti;
                    }
                }
            }
            __syncthreads();
        }
    }
    for (int i = threadIdx.x; i < l; i += blockDim.x) {
        best_sim[r * l + i] = key[i];
        best_idx[r * l + i] = id[i];
    }
}
