//! The emulated CUDA device's own checks: kernel signatures are parsed into what launches are checked
//! against, and the shim (kernels/emulator) stops a kernel whose threads diverge at a barrier. The shim
//! tests compile small kernels with the host C++ compiler; without one they skip, saying so (CI has one).
#![cfg(feature = "cuda")]

use scspecies::engine::cuda::device::{Arg, check_args};
use scspecies::kernels::{Param, signatures};
use std::path::Path;
use std::process::Command;

#[test]
fn kernel_signatures_are_parsed_and_launches_checked_against_them() {
    let src = "extern \"C\" __global__ void k(const float* x, unsigned char *g, int n, long long m,\n  unsigned c0, float a, double s) {}\n\
               __device__ float helper(float v) { return v; }";
    let sigs = signatures(src).unwrap();
    assert_eq!(sigs.len(), 1);
    let kinds: Vec<Param> = sigs[0].params.iter().map(|p| p.1).collect();
    assert_eq!(kinds, [Param::Ptr, Param::Ptr, Param::I32, Param::I64, Param::U32, Param::F32, Param::F64]);
    assert_eq!(sigs[0].params[1].0, "unsigned char *");
    let good = [Arg::Ptr(8), Arg::Ptr(0), Arg::I32(1), Arg::I64(2), Arg::U32(3), Arg::F32(1.0), Arg::F64(2.0)];
    check_args(&sigs[0], &good).unwrap();
    let mut swapped = good;
    swapped.swap(2, 3);
    let e = check_args(&sigs[0], &swapped).unwrap_err();
    assert!(e.contains("kernel k: argument 2 should be `int`"), "{e}");
    let e = check_args(&sigs[0], &good[..6]).unwrap_err();
    assert!(e.contains("takes 7 arguments, the launch passed 6"), "{e}");
    let e = signatures("extern \"C\" __global__ void bad(short n) {}").unwrap_err();
    assert!(e.contains("kernel bad") && e.contains("short"), "{e}");
    // Every shipped kernel parses.
    for (m, s) in scspecies::kernels::KERNEL_SOURCES {
        assert!(!signatures(s).unwrap_or_else(|e| panic!("kernels/{m}.cu: {e}")).is_empty());
    }
}

/// Compile `kernel_src` plus a main that launches entry `e` with 2 blocks of `threads` against the shim;
/// run it and return (exit success, stderr). None without a C++ compiler.
fn run_on_shim(kernel_src: &str, threads: u32) -> Option<(bool, String)> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    if Command::new(&cxx).arg("--version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "CI: no C++ compiler ({cxx}); .ci/run installs g++");
        eprintln!("SKIPPED: no C++ compiler ({cxx}), the emulator's checks were not run");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let emu = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels/emulator");
    let main = format!(
        "{kernel_src}\n#include <vector>\nextern \"C\" void emu_launch(void (*)(void**), const char*, unsigned, unsigned, void**);\n\
         extern \"C\" void e(void** a) {{ k(*(float**)a[0]); }}\n\
         int main() {{ std::vector<float> x(4096); float* p = x.data(); void* a[] = {{&p}}; emu_launch(e, \"k\", 2, {threads}, a); return 0; }}\n"
    );
    std::fs::write(dir.path().join("t.cpp"), main).unwrap();
    let exe = dir.path().join("t");
    let out = Command::new(&cxx)
        .args(["-std=c++20", "-O1", "-pthread", "-include"])
        .arg(emu.join("cuda_shim.h"))
        .arg(dir.path().join("t.cpp"))
        .arg(emu.join("launcher.cpp"))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(out.status.success(), "compiling against the shim: {}", String::from_utf8_lossy(&out.stderr));
    let run = Command::new(&exe).output().unwrap();
    Some((run.status.success(), String::from_utf8_lossy(&run.stderr).to_string()))
}

#[test]
fn a_thread_returning_before_a_barrier_is_reported() {
    let src = "extern \"C\" __global__ void k(float* x) { if (threadIdx.x == 5) return; __syncthreads(); x[threadIdx.x] = 1.0f; }";
    let Some((ok, err)) = run_on_shim(src, 64) else { return };
    assert!(!ok && err.contains("kernel k, block 0: threads diverged: 63 at __syncthreads, 0 at __shfl_xor_sync, 1 returned"), "{err}");
}

#[test]
fn a_shuffle_without_its_whole_warp_is_reported() {
    let src =
        "extern \"C\" __global__ void k(float* x) { x[threadIdx.x] = threadIdx.x < 16 ? __shfl_xor_sync(0xffffffff, 1.0f, 1) : 0.0f; }";
    let Some((ok, err)) = run_on_shim(src, 64) else { return };
    assert!(!ok && err.contains("16 at __shfl_xor_sync"), "{err}");
    let partial = "extern \"C\" __global__ void k(float* x) { x[threadIdx.x] = __shfl_xor_sync(0xffff, 1.0f, 1); }";
    let (ok, err) = run_on_shim(partial, 64).unwrap();
    assert!(!ok && err.contains("mask 0xffff"), "{err}");
}

#[test]
fn barriers_and_shuffles_that_agree_run_to_the_end() {
    // A block sum through shuffles and shared memory, in every block: the shim's own reduction check.
    let src = "extern \"C\" __global__ void k(float* x) {\n\
        __shared__ float s[32];\n\
        float v = (float)threadIdx.x;\n\
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);\n\
        if ((threadIdx.x & 31) == 0) s[threadIdx.x / 32] = v;\n\
        __syncthreads();\n\
        float t = 0; for (unsigned w = 0; w < blockDim.x / 32; ++w) t += s[w];\n\
        __syncthreads();\n\
        if (threadIdx.x == 0 && t != 0.5f * blockDim.x * (blockDim.x - 1)) __builtin_trap();\n\
        x[blockIdx.x * blockDim.x + threadIdx.x] = t; }";
    let Some((ok, err)) = run_on_shim(src, 256) else { return };
    assert!(ok, "{err}");
}
