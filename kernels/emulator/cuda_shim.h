// Emulated CUDA for the host C++ compiler. Put in front of a kernels/*.cu module (g++ -include), it lets
// the module compile unchanged as C++ and run on the CPU. src/engine/cuda/emulated.rs builds every module
// against it at test time, so the backend's launch code and every kernel run in CI without a GPU.
//
// Each CUDA thread of a block is a fiber (its own stack, switched in user space by launcher.cpp); the
// blocks of a grid run one after another on the calling OS thread, in a fixed order, so a run is
// deterministic. Checks: __syncthreads aborts with a message when the block's threads diverge (some
// wait at a barrier the others never reach, or have returned); __shfl_xor_sync exchanges through 32
// slots per warp and aborts unless the mask is the full warp and the block is whole warps. With
// -fsanitize=thread each fiber is a ThreadSanitizer thread, synchronised only at barriers, so a missing
// __syncthreads is a reported race; -fsanitize=address sees out-of-bounds reads and writes.
// What it cannot tell: coalescing, occupancy, speed, or CUDA's own rounding (glibc's math, exact rsqrtf).
#pragma once
#include <math.h>

#include <atomic>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#define __global__
#define __device__ inline
#define __host__
#define __shared__ static
#define __forceinline__ inline
#define __restrict__ __restrict

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

namespace emu {
// Where each CUDA thread is (the scheduler in launcher.cpp moves threads on when a barrier completes).
enum State { RUNNING, AT_SYNCTHREADS, AT_SHFL, RETURNED };
struct Ctx {
    dim3 thread_idx, block_idx, block_dim, grid_dim;
    const char* kernel;
    double* shfl_slots;  // 32 per warp
};
// The running thread's context. Atomic only so that ThreadSanitizer, which sees each fiber as a thread,
// does not report the scheduler's own bookkeeping (relaxed: one OS thread runs every fiber).
extern thread_local std::atomic<Ctx*> cur;
inline Ctx* ctx() { return cur.load(std::memory_order_relaxed); }
[[noreturn]] void fail(const char* fmt, ...);
// Leave the running thread at `s` until the scheduler releases it.
void wait_at(State s);
}  // namespace emu

#define threadIdx (emu::ctx()->thread_idx)
#define blockIdx (emu::ctx()->block_idx)
#define blockDim (emu::ctx()->block_dim)
#define gridDim (emu::ctx()->grid_dim)

inline void __syncthreads() { emu::wait_at(emu::AT_SYNCTHREADS); }

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
    static_assert(sizeof(T) <= sizeof(double), "__shfl_xor_sync: at most 8 bytes");
    emu::Ctx* c = emu::ctx();
    if (mask != 0xffffffffu) emu::fail("kernel %s: __shfl_xor_sync with mask %#x; only full warps are emulated", c->kernel, mask);
    if (c->block_dim.x % 32 != 0) emu::fail("kernel %s: __shfl_xor_sync with blockDim.x = %u, not a multiple of 32", c->kernel, c->block_dim.x);
    if (lane_mask < 0 || lane_mask > 31) emu::fail("kernel %s: __shfl_xor_sync lane mask %d", c->kernel, lane_mask);
    unsigned t = c->thread_idx.x;
    std::memcpy(&c->shfl_slots[t], &v, sizeof(T));
    emu::wait_at(emu::AT_SHFL);
    T out;
    std::memcpy(&out, &c->shfl_slots[(t & ~31u) + ((t & 31u) ^ (unsigned)lane_mask)], sizeof(T));
    emu::wait_at(emu::AT_SHFL);  // no lane overwrites its slot before every lane has read
    return out;
}

inline int atomicExch(int* p, int v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, sizeof f);
    return f;
}
inline unsigned __float_as_uint(float f) {
    unsigned u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
// glibc's lgamma writes the global `signgam`, shared by every emulated thread; lgamma_r does not.
inline double emu_lgamma(double x) {
    int sign;
    return lgamma_r(x, &sign);
}
#define lgamma emu_lgamma
