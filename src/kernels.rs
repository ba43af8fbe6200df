//! CUDA C sources embedded at build time from `kernels/*.cu` (see `build.rs`), and NVRTC compilation
//! (libnvrtc loaded at run time, so this builds and the CPU path runs on machines without CUDA).

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// The type of one kernel parameter, as the launch code must pass it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    /// Any pointer (`const float*`, `unsigned char*`, ...): a device address, or null.
    Ptr,
    I32,
    I64,
    U32,
    F32,
    F64,
}

/// One `extern "C" __global__` function: its name, its parameters' types (as written) and kinds.
#[derive(Debug, Clone)]
pub struct KernelSig {
    pub name: String,
    pub params: Vec<(String, Param)>,
}

/// The `extern "C" __global__` functions of a kernel source, in order, with their parameter types. Both
/// devices check every launch's arguments against these, so an argument of the wrong kind or in the
/// wrong place is an error naming the kernel instead of garbage read by the GPU.
pub fn signatures(source: &str) -> Result<Vec<KernelSig>, String> {
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(p) = rest.find("__global__") {
        rest = &rest[p + "__global__".len()..];
        // `void name(params)`: the identifier before the first parenthesis.
        let (Some(open), Some(close)) = (rest.find('('), rest.find(')')) else { break };
        let head = rest[..open].trim_end();
        let name: String =
            head.chars().rev().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<Vec<_>>().into_iter().rev().collect();
        if name.is_empty() || !head.trim_start().starts_with("void") {
            continue;
        }
        let mut params = Vec::new();
        for decl in rest[open + 1..close].split(',').map(|d| d.split_whitespace().collect::<Vec<_>>().join(" ")).filter(|d| !d.is_empty()) {
            // The type is the declaration without its last identifier.
            let cut = decl.trim_end_matches(|c: char| c.is_alphanumeric() || c == '_').trim_end().to_string();
            let kind = if cut.contains('*') {
                Param::Ptr
            } else {
                match cut.trim_start_matches("const ").trim() {
                    "int" => Param::I32,
                    "long long" | "long long int" => Param::I64,
                    "unsigned" | "unsigned int" => Param::U32,
                    "float" => Param::F32,
                    "double" => Param::F64,
                    t => return Err(format!("kernel {name}: parameter `{decl}` has a type ({t}) the launch code cannot pass")),
                }
            };
            params.push((cut, kind));
        }
        out.push(KernelSig { name, params });
        rest = &rest[close..];
    }
    Ok(out)
}

/// Names of the `extern "C" __global__` functions of a kernel source, in order.
pub fn entry_points(source: &str) -> Vec<String> {
    signatures(source).map(|v| v.into_iter().map(|k| k.name).collect()).unwrap_or_default()
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
