// The emulated device's kernel launcher (see cuda_shim.h). emu_launch runs `entry` (which unpacks a
// cuLaunchKernel-style argument array) over a 1-D grid: for each block, one fiber per CUDA thread, run
// in thread order until each returns or waits at a barrier; then every complete barrier (the whole
// block at __syncthreads, a whole warp in __shfl_xor_sync) is released, and so on until the block is
// done. A round that releases nothing is a divergence, reported with where the threads are.
#include <sys/mman.h>
#include <unistd.h>

#include <mutex>
#include <vector>

#include "cuda_shim.h"

#if defined(__SANITIZE_THREAD__)
extern "C" {
void* __tsan_get_current_fiber();
void* __tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void* fiber);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
}
#endif
#if defined(__SANITIZE_ADDRESS__)
extern "C" {
void __sanitizer_start_switch_fiber(void** fake_stack_save, const void* bottom, size_t size);
void __sanitizer_finish_switch_fiber(void* fake_stack_save, const void** bottom_old, size_t* size_old);
}
#endif

#if !defined(__x86_64__)
#error "the CUDA emulator's fiber switch is written for x86-64"
#endif

// Save the callee-saved registers on the current stack, store its pointer in *from, switch to `to`.
extern "C" void emu_switch(void** from, void* to);
// A new fiber's first instruction: call r13(r12) on an aligned stack.
extern "C" void emu_fiber_start();
asm(R"(
    .text
    .globl emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
    .globl emu_fiber_start
    .type emu_fiber_start, @function
emu_fiber_start:
    movq %r12, %rdi
    andq $-16, %rsp
    call *%r13
    ud2
    .size emu_fiber_start, .-emu_fiber_start
)");

namespace emu {
thread_local std::atomic<Ctx*> cur{nullptr};

void fail(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    std::fprintf(stderr, "emulated CUDA: ");
    std::vfprintf(stderr, fmt, ap);
    std::fprintf(stderr, "\n");
    va_end(ap);
    std::fflush(stderr);
    std::abort();
}

namespace {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr size_t STACK = 1 << 20;
#else
constexpr size_t STACK = 128 << 10;
#endif

struct Fiber {
    Ctx ctx;
    State state_ = RETURNED;  // through state()/set(): written by the fiber, read by the scheduler
    State state() const { return __atomic_load_n(&state_, __ATOMIC_RELAXED); }
    void set(State s) { __atomic_store_n(&state_, s, __ATOMIC_RELAXED); }
    void* sp = nullptr;
    char* stack = nullptr;  // STACK bytes above one guard page
#if defined(__SANITIZE_THREAD__)
    void* tsan = nullptr;
#endif
};

struct Launch {
    void (*entry)(void**);
    void** args;
};

std::mutex launch_mutex;  // one launch at a time: __shared__ arrays are statics
std::vector<Fiber>& fibers = *new std::vector<Fiber>;  // never freed: fibers may outlive static destructors
std::vector<double> slots;
void* scheduler_sp = nullptr;
std::atomic<Fiber*> running{nullptr};  // atomic for the same reason as `cur`
Launch current;
#if defined(__SANITIZE_THREAD__)
void* scheduler_tsan = nullptr;
// Happens-before edges: a thread releases at a barrier and acquires when it leaves. Two objects per
// barrier that alternate by generation, so leaving barrier g never acquires what a faster thread
// released on its way to barrier g + 1; warps have their own.
char returned_token;
char sync_token[2];
std::vector<char> warp_token;  // 2 per warp
#endif
unsigned sync_gen = 0;             // block barriers released so far
std::vector<unsigned> warp_gen;    // per warp, shuffles released so far

void to_scheduler() {
    Fiber* f = running.load(std::memory_order_relaxed);
#if defined(__SANITIZE_THREAD__)
    __tsan_switch_to_fiber(scheduler_tsan, 1 /* no sync: fibers race unless a barrier orders them */);
#endif
#if defined(__SANITIZE_ADDRESS__)
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, nullptr, 0);
    emu_switch(&f->sp, scheduler_sp);
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
    emu_switch(&f->sp, scheduler_sp);
#endif
}

// A fiber runs one CUDA thread of a block, parks, and is resumed for the same thread of the next block
// (or launch): it lives as long as the process, and the kernel's frames return normally each time.
void fiber_main(Fiber* f) {
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
    for (;;) {
        cur.store(&f->ctx, std::memory_order_relaxed);
        current.entry(current.args);
#if defined(__SANITIZE_THREAD__)
        __tsan_release(&returned_token);
#endif
        f->set(RETURNED);
        to_scheduler();
    }
}

void resume(Fiber& f) {
    running.store(&f, std::memory_order_relaxed);
#if defined(__SANITIZE_THREAD__)
    __tsan_switch_to_fiber(f.tsan, 0);  // the fiber sees what the scheduler wrote (its context)
#endif
#if defined(__SANITIZE_ADDRESS__)
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, f.stack, STACK);
    emu_switch(&scheduler_sp, f.sp);
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
    emu_switch(&scheduler_sp, f.sp);
#endif
}

// Ready fiber f for a block: the first time, a fresh stack whose first switch enters fiber_main(f);
// afterwards it is parked at the end of its loop and resumes from there.
void start(Fiber& f) {
    f.set(RUNNING);
    if (f.sp) return;
#if defined(__SANITIZE_THREAD__)
    f.tsan = __tsan_create_fiber(0);
#endif
    auto* top = (uintptr_t*)(((uintptr_t)(f.stack + STACK)) & ~(uintptr_t)15);
    *--top = 0;
    *--top = (uintptr_t)&emu_fiber_start;  // emu_switch's `ret`
    *--top = 0;                            // rbp
    *--top = 0;                            // rbx
    *--top = (uintptr_t)&f;                // r12: the argument
    *--top = (uintptr_t)&fiber_main;       // r13: the function
    *--top = 0;                            // r14
    *--top = 0;                            // r15
    f.sp = top;
}

const char* where(State s) {
    switch (s) {
        case AT_SYNCTHREADS: return "__syncthreads";
        case AT_SHFL: return "__shfl_xor_sync";
        case RETURNED: return "returned";
        default: return "running";
    }
}
}  // namespace

void wait_at(State s) {
    Fiber* me = running.load(std::memory_order_relaxed);
#if defined(__SANITIZE_THREAD__)
    unsigned w = me->ctx.thread_idx.x / 32;
    unsigned g = __atomic_load_n(s == AT_SHFL ? &warp_gen[w] : &sync_gen, __ATOMIC_RELAXED);
    void* token = s == AT_SHFL ? (void*)&warp_token[2 * w + (g & 1)] : (void*)&sync_token[g & 1];
    __tsan_release(token);
#endif
    me->set(s);
    to_scheduler();
    cur.store(&me->ctx, std::memory_order_relaxed);
#if defined(__SANITIZE_THREAD__)
    __tsan_acquire(token);
#endif
}
}  // namespace emu

extern "C" void emu_launch(void (*entry)(void**), const char* kernel, unsigned grid, unsigned block, void** args) {
    using namespace emu;
    std::lock_guard<std::mutex> guard(launch_mutex);
    if (block == 0 || block > 1024) fail("kernel %s: blockDim.x = %u (1 to 1024)", kernel, block);
    if (grid == 0) fail("kernel %s: gridDim.x = 0", kernel);
#if defined(__SANITIZE_THREAD__)
    if (!scheduler_tsan) scheduler_tsan = __tsan_get_current_fiber();
#endif
    long page = sysconf(_SC_PAGESIZE);
    while (fibers.size() < block) {
        fibers.emplace_back();
        Fiber& f = fibers.back();
        void* m = mmap(nullptr, STACK + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) fail("kernel %s: cannot map a fiber stack", kernel);
        mprotect(m, page, PROT_NONE);  // an overflowing fiber faults instead of writing into its neighbour
        f.stack = (char*)m + page;
    }
    slots.assign(((block + 31) / 32) * 32, 0.0);
    warp_gen.assign((block + 31) / 32, 0);
#if defined(__SANITIZE_THREAD__)
    warp_token.assign(2 * warp_gen.size(), 0);
#endif
    current = Launch{entry, args};
    for (unsigned g = 0; g < grid; ++g) {
        for (unsigned t = 0; t < block; ++t) {
            Fiber& f = fibers[t];
            f.ctx = Ctx{};
            f.ctx.thread_idx.x = t;
            f.ctx.block_idx.x = g;
            f.ctx.block_dim.x = block;
            f.ctx.grid_dim.x = grid;
            f.ctx.kernel = kernel;
            f.ctx.shfl_slots = slots.data();
            start(f);
        }
        for (;;) {
            for (unsigned t = 0; t < block; ++t) {
                if (fibers[t].state() == RUNNING) resume(fibers[t]);
            }
            unsigned at[4] = {0, 0, 0, 0};
            for (unsigned t = 0; t < block; ++t) ++at[fibers[t].state()];
            if (at[RETURNED] == block) {
#if defined(__SANITIZE_THREAD__)
                __tsan_acquire(&returned_token);  // the block's writes happen before the next block and the caller
#endif
                break;
            }
            bool released = false;
            if (at[AT_SYNCTHREADS] == block) {
                for (unsigned t = 0; t < block; ++t) fibers[t].set(RUNNING);
                __atomic_store_n(&sync_gen, sync_gen + 1, __ATOMIC_RELAXED);
                released = true;
            } else {
                for (unsigned w = 0; w * 32 < block; ++w) {
                    unsigned end = w * 32 + 32 < block ? w * 32 + 32 : block, n = 0;
                    for (unsigned t = w * 32; t < end; ++t) n += fibers[t].state() == AT_SHFL;
                    if (n == end - w * 32) {
                        for (unsigned t = w * 32; t < end; ++t) fibers[t].set(RUNNING);
                        __atomic_store_n(&warp_gen[w], warp_gen[w] + 1, __ATOMIC_RELAXED);
                        released = true;
                    }
                }
            }
            if (!released) {
                unsigned first = 0;
                while (first < block && fibers[first].state() == fibers[0].state()) ++first;
                fail("kernel %s, block %u: threads diverged: %u at __syncthreads, %u at __shfl_xor_sync, %u returned "
                     "(thread 0 %s, thread %u %s)",
                     kernel, g, at[AT_SYNCTHREADS], at[AT_SHFL], at[RETURNED], where(fibers[0].state()), first,
                     first < block ? where(fibers[first].state()) : "-");
            }
        }
    }
}
