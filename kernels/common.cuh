// Helpers shared by every kernel module: build.rs puts this file in front of each kernels/*.cu source
// (followed by a #line directive, so NVRTC's messages keep the module's own line numbers).

#define NEG_INF (-__int_as_float(0x7f800000))

// Grid-stride loop over n elements.
#define FOR_EACH(i, n) for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)

// Block-wide reductions (blockDim a multiple of 32, at most 1024); every thread gets the result.
// `shared` needs 32 elements. Safe to call back to back: each starts with a barrier.
template <typename T, typename Op>
__device__ T block_reduce(T v, T* shared, T identity, Op op) {
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffff, v, o));
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    T s = identity;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) s = op(s, shared[w]);
    return s;
}

struct AddOp {
    template <typename T> __device__ T operator()(T a, T b) const { return a + b; }
};
struct MaxOp {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

__device__ float block_sum(float v, float* shared) { return block_reduce(v, shared, 0.0f, AddOp()); }
__device__ double block_sum_d(double v, double* shared) { return block_reduce(v, shared, 0.0, AddOp()); }
__device__ float block_max(float v, float* shared) { return block_reduce(v, shared, NEG_INF, MaxOp()); }
