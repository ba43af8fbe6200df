//! CUDA C sources embedded at build time from `kernels/*.cu` (see `build.rs`), and NVRTC compilation
//! (libnvrtc loaded at run time, so this builds and the CPU path runs on machines without CUDA).

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// Names of the `extern "C" __global__` functions of a kernel source, in order.
pub fn entry_points(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(p) = rest.find("__global__") {
        rest = &rest[p + "__global__".len()..];
        // `void name(`: the identifier before the first parenthesis.
        if let Some(open) = rest.find('(') {
            let head = rest[..open].trim_end();
            let name: String =
                head.chars().rev().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<Vec<_>>().into_iter().rev().collect();
            if !name.is_empty() && head.trim_start().starts_with("void") {
                out.push(name);
            }
        }
    }
    out
}

/// Run a probe that may panic (cudarc panics when a CUDA library cannot be loaded) without printing
/// the panic message: the caller turns it into an error.
pub fn quietly<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> std::thread::Result<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(f);
    std::panic::set_hook(hook);
    r
}

/// NVRTC, loaded dynamically.
#[cfg(feature = "cuda")]
pub mod nvrtc {
    /// Whether libnvrtc can be loaded here (cudarc panics on first use when it cannot).
    pub fn available() -> bool {
        super::quietly(|| unsafe { cudarc::nvrtc::sys::is_culib_present() }).unwrap_or(false)
    }

    /// Compile one kernel module to PTX for a virtual architecture such as `compute_90`. The error is
    /// NVRTC's log, naming the module.
    pub fn compile(name: &str, source: &str, arch: &'static str) -> Result<String, String> {
        let opts = cudarc::nvrtc::CompileOptions { arch: Some(arch), name: Some(format!("{name}.cu")), ..Default::default() };
        match std::panic::catch_unwind(|| cudarc::nvrtc::compile_ptx_with_opts(source, opts)) {
            Ok(Ok(ptx)) => Ok(ptx.to_src()),
            Ok(Err(cudarc::nvrtc::CompileError::CompileError { log, .. })) => {
                Err(format!("kernels/{name}.cu does not compile:\n{}", log.to_string_lossy()))
            }
            Ok(Err(e)) => Err(format!("kernels/{name}.cu: NVRTC failed: {e:?}")),
            Err(_) => Err(format!("kernels/{name}.cu: NVRTC could not be loaded")),
        }
    }
}
