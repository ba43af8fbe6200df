//! The device layer under the CUDA backend: memory, copies, kernel launches and GEMM. [`Gpu`] is the
//! real one (CUDA driver through cudarc, cuBLAS); [`super::emulated::Emulated`] runs the same kernels
//! compiled for the host, with host memory and the CPU GEMM standing in for cuBLAS. The backend's own
//! code (grid sizes, argument order and types, the row-major-to-cuBLAS mapping) is the same for both.
//! Every call returns an error in words instead of panicking.

use crate::kernels::{KernelSig, Param};
use std::collections::HashMap;

/// One kernel argument: a device address (0 is null) or a scalar of the kernel's parameter type.
#[derive(Debug, Clone, Copy)]
pub enum Arg {
    Ptr(u64),
    I32(i32),
    I64(i64),
    U32(u32),
    F32(f32),
    F64(f64),
}

impl Arg {
    fn kind(&self) -> Param {
        match self {
            Arg::Ptr(_) => Param::Ptr,
            Arg::I32(_) => Param::I32,
            Arg::I64(_) => Param::I64,
            Arg::U32(_) => Param::U32,
            Arg::F32(_) => Param::F32,
            Arg::F64(_) => Param::F64,
        }
    }
    /// The value in the first bytes of an 8-byte slot (what cuLaunchKernel's argument array points at).
    pub(crate) fn slot(&self) -> u64 {
        let mut b = [0u8; 8];
        match *self {
            Arg::Ptr(p) => b = p.to_ne_bytes(),
            Arg::I32(v) => b[..4].copy_from_slice(&v.to_ne_bytes()),
            Arg::I64(v) => b = v.to_ne_bytes(),
            Arg::U32(v) => b[..4].copy_from_slice(&v.to_ne_bytes()),
            Arg::F32(v) => b[..4].copy_from_slice(&v.to_ne_bytes()),
            Arg::F64(v) => b = v.to_ne_bytes(),
        }
        u64::from_ne_bytes(b)
    }
}

/// The most parameters a kernel may take (the launch packs them on the stack).
pub(crate) const MAX_ARGS: usize = 16;

/// A launch's arguments in 8-byte slots, with room for the pointers to them that cuLaunchKernel takes.
pub(crate) fn arg_array(kernel: &str, args: &[Arg]) -> Result<([u64; MAX_ARGS], [*mut std::ffi::c_void; MAX_ARGS]), String> {
    if args.len() > MAX_ARGS {
        return Err(format!("kernel {kernel}: {} arguments, at most {MAX_ARGS}", args.len()));
    }
    let mut slots = [0u64; MAX_ARGS];
    for (s, a) in slots.iter_mut().zip(args) {
        *s = a.slot();
    }
    Ok((slots, [std::ptr::null_mut(); MAX_ARGS]))
}

/// The kernels' signatures by name, from the embedded sources.
pub(crate) fn kernel_table() -> Result<HashMap<String, KernelSig>, String> {
    let mut t = HashMap::new();
    for (module, source) in crate::kernels::KERNEL_SOURCES {
        for k in crate::kernels::signatures(source).map_err(|e| format!("kernels/{module}.cu: {e}"))? {
            t.insert(k.name.clone(), k);
        }
    }
    Ok(t)
}

/// The launch's arguments must match the kernel's parameters in number and kind.
pub fn check_args(sig: &KernelSig, args: &[Arg]) -> Result<(), String> {
    if sig.params.len() != args.len() {
        return Err(format!("kernel {} takes {} arguments, the launch passed {}", sig.name, sig.params.len(), args.len()));
    }
    for (i, ((ty, kind), a)) in sig.params.iter().zip(args).enumerate() {
        if *kind != a.kind() {
            return Err(format!("kernel {}: argument {i} should be `{ty}`, the launch passed {a:?}", sig.name));
        }
    }
    Ok(())
}

/// C = op(A)·op(B) in cuBLAS's column-major convention (`cublasSgemm` with α = 1, β = 0).
#[derive(Debug, Clone, Copy)]
pub struct Sgemm {
    pub trans_a: bool,
    pub trans_b: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: u64,
    pub lda: usize,
    pub b: u64,
    pub ldb: usize,
    pub c: u64,
    pub ldc: usize,
}

/// Device memory: `bytes` bytes at device address `ptr`, freed on drop.
pub struct Mem {
    pub(crate) ptr: u64,
    pub(crate) bytes: usize,
    pub(crate) owner: Owner,
}

pub(crate) enum Owner {
    /// Nothing (the placeholder the backend hands out after a failed call).
    None,
    /// Host memory of the emulated device (std::alloc, 64-byte aligned).
    Host,
    Cuda(std::sync::Arc<cudarc::driver::CudaContext>),
}

impl Mem {
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    pub(crate) fn host_layout(bytes: usize) -> Option<std::alloc::Layout> {
        std::alloc::Layout::from_size_align(bytes.max(8), 64).ok()
    }
}

impl Drop for Mem {
    fn drop(&mut self) {
        match &self.owner {
            Owner::None => {}
            Owner::Host => {
                if let Some(layout) = Mem::host_layout(self.bytes) {
                    unsafe { std::alloc::dealloc(self.ptr as *mut u8, layout) }
                }
            }
            Owner::Cuda(ctx) => {
                // A failure here (the context is already gone) leaves nothing to clean up.
                if ctx.bind_to_thread().is_ok() {
                    unsafe {
                        let _ = cudarc::driver::result::free_async(self.ptr, std::ptr::null_mut());
                    }
                }
            }
        }
    }
}

// Mem only carries an address; all access goes through the device, which orders it.
unsafe impl Send for Mem {}
unsafe impl Sync for Mem {}

/// What the backend needs from a device. Buffers are untyped bytes; the backend knows their types.
pub trait Device: Send + Sync {
    fn name(&self) -> String;
    /// `bytes` zeroed bytes (at least one is allocated: CUDA refuses empty allocations).
    fn alloc_zeroed(&self, bytes: usize) -> Result<Mem, String>;
    /// A new allocation holding `data`.
    fn upload(&self, data: &[u8]) -> Result<Mem, String>;
    /// The first `out.len()` bytes of `m`.
    fn download(&self, m: &Mem, out: &mut [u8]) -> Result<(), String>;
    /// Copy `bytes` bytes from `src` to `dst`.
    fn copy(&self, src: &Mem, dst: &Mem, bytes: usize) -> Result<(), String>;
    fn memset_zero(&self, m: &Mem) -> Result<(), String>;
    /// Launch `kernel` on a 1-D grid (arguments already checked against its signature).
    fn launch(&self, kernel: &str, grid: u32, block: u32, args: &[Arg]) -> Result<(), String>;
    fn sgemm(&self, g: &Sgemm) -> Result<(), String>;
    /// [`Sgemm`] with A and B in bfloat16 (`a`, `b` point at u16 values), f32 accumulation and output.
    fn gemm_bf16(&self, g: &Sgemm) -> Result<(), String>;
    fn synchronize(&self) -> Result<(), String>;
    /// Free and total memory in bytes.
    fn memory(&self) -> (usize, usize);
    /// Whether `sgemm` rounds its inputs to TF32 (10-bit mantissa) before multiplying.
    fn tf32(&self) -> bool {
        false
    }
}

/// A CUDA GPU through the driver API: one context, the legacy default stream (so allocation, copies,
/// kernels and cuBLAS are ordered), kernels compiled with NVRTC for the device's architecture.
pub struct Gpu {
    ctx: std::sync::Arc<cudarc::driver::CudaContext>,
    /// The modules stay loaded as long as their functions are used.
    _modules: Vec<std::sync::Arc<cudarc::driver::CudaModule>>,
    funcs: HashMap<String, cudarc::driver::CudaFunction>,
    blas: cudarc::cublas::CudaBlas,
    name: String,
    tf32: bool,
}

impl Gpu {
    pub fn new(ordinal: usize, tf32: bool) -> Result<Self, String> {
        use cudarc::cublas::{CudaBlas, sys as blas_sys};
        use cudarc::driver::CudaContext;
        let unavailable = super::unavailable_reason;
        // cudarc panics when libcuda cannot be loaded (dynamic loading): turn that into an error.
        let ctx = crate::kernels::quietly(|| CudaContext::new(ordinal))
            .map_err(|_| unavailable("the CUDA driver library (libcuda.so) could not be loaded"))?
            .map_err(|e| unavailable(&format!("device {ordinal}: {e:?}")))?;
        let (major, minor) = ctx.compute_capability().map_err(|e| format!("CUDA: {e:?}"))?;
        let arch: &'static str = Box::leak(format!("compute_{major}{minor}").into_boxed_str());
        if !crate::kernels::nvrtc::available() {
            return Err(unavailable(
                "NVRTC (libnvrtc.so) could not be loaded; install the nvidia-cuda-nvrtc wheel or the CUDA toolkit and put its lib folder on LD_LIBRARY_PATH",
            ));
        }
        let stream = ctx.default_stream();
        let (mut modules, mut funcs) = (Vec::new(), HashMap::new());
        for (module, source) in crate::kernels::KERNEL_SOURCES {
            let ptx = crate::kernels::nvrtc::compile(module, source, arch)?;
            let m = ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx)).map_err(|e| format!("kernels/{module}.cu: loading: {e:?}"))?;
            for name in crate::kernels::entry_points(source) {
                let f = m.load_function(&name).map_err(|e| format!("kernels/{module}.cu: kernel {name}: {e:?}"))?;
                funcs.insert(name, f);
            }
            modules.push(m);
        }
        let blas = crate::kernels::quietly(|| CudaBlas::new(stream.clone()))
            .map_err(|_| unavailable("cuBLAS (libcublas.so) could not be loaded"))?
            .map_err(|e| format!("cuBLAS: {e:?}"))?;
        if tf32 {
            let mode = blas_sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH;
            let st = unsafe { blas_sys::cublasSetMathMode(*blas.handle(), mode) };
            if st != blas_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                return Err(format!("cuBLAS: cannot enable TF32 ({st:?})"));
            }
        }
        let dev = ctx.name().unwrap_or_else(|_| "GPU".into());
        let name = format!("cuda:{ordinal} {dev} sm_{major}{minor}{}", if tf32 { " tf32" } else { "" });
        Ok(Gpu { ctx, _modules: modules, funcs, blas, name, tf32 })
    }

    fn bind(&self) -> Result<(), String> {
        self.ctx.bind_to_thread().map_err(|e| format!("binding the CUDA context: {e:?}"))
    }
}

impl Device for Gpu {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn alloc_zeroed(&self, bytes: usize) -> Result<Mem, String> {
        use cudarc::driver::result;
        self.bind()?;
        let n = bytes.max(1);
        let ptr = unsafe { result::malloc_async(std::ptr::null_mut(), n) }.map_err(|e| format!("allocating {n} bytes: {e:?}"))?;
        let m = Mem { ptr, bytes: n, owner: Owner::Cuda(self.ctx.clone()) };
        unsafe { result::memset_d8_async(ptr, 0, n, std::ptr::null_mut()) }.map_err(|e| format!("zeroing {n} bytes: {e:?}"))?;
        Ok(m)
    }
    fn upload(&self, data: &[u8]) -> Result<Mem, String> {
        let m = self.alloc_zeroed(data.len())?;
        if !data.is_empty() {
            unsafe { cudarc::driver::result::memcpy_htod_sync(m.ptr, data) }
                .map_err(|e| format!("uploading {} bytes: {e:?}", data.len()))?;
        }
        Ok(m)
    }
    fn download(&self, m: &Mem, out: &mut [u8]) -> Result<(), String> {
        if out.len() > m.bytes {
            return Err(format!("downloading {} bytes from a {}-byte buffer", out.len(), m.bytes));
        }
        self.bind()?;
        if !out.is_empty() {
            unsafe { cudarc::driver::result::memcpy_dtoh_sync(out, m.ptr) }
                .map_err(|e| format!("downloading {} bytes: {e:?}", out.len()))?;
        }
        Ok(())
    }
    fn copy(&self, src: &Mem, dst: &Mem, bytes: usize) -> Result<(), String> {
        if bytes > src.bytes || bytes > dst.bytes {
            return Err(format!("copying {bytes} bytes between buffers of {} and {} bytes", src.bytes, dst.bytes));
        }
        self.bind()?;
        unsafe { cudarc::driver::result::memcpy_dtod_async(dst.ptr, src.ptr, bytes, std::ptr::null_mut()) }
            .map_err(|e| format!("copying {bytes} bytes on the device: {e:?}"))
    }
    fn memset_zero(&self, m: &Mem) -> Result<(), String> {
        self.bind()?;
        unsafe { cudarc::driver::result::memset_d8_async(m.ptr, 0, m.bytes, std::ptr::null_mut()) }
            .map_err(|e| format!("zeroing {} bytes: {e:?}", m.bytes))
    }
    fn launch(&self, kernel: &str, grid: u32, block: u32, args: &[Arg]) -> Result<(), String> {
        let f = self.funcs.get(kernel).ok_or_else(|| format!("kernel {kernel} is not in kernels/*.cu"))?;
        self.bind()?;
        let (mut slots, mut params) = arg_array(kernel, args)?;
        let params = &mut params[..args.len()];
        for (p, s) in params.iter_mut().zip(slots.iter_mut()) {
            *p = s as *mut u64 as *mut std::ffi::c_void;
        }
        unsafe { cudarc::driver::result::launch_kernel(f.cu_function(), (grid, 1, 1), (block, 1, 1), 0, std::ptr::null_mut(), params) }
            .map_err(|e| format!("launching {kernel} ({grid} blocks of {block}): {e:?}"))
    }
    fn sgemm(&self, g: &Sgemm) -> Result<(), String> {
        use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
        self.bind()?;
        let op = |t: bool| if t { CUBLAS_OP_T } else { CUBLAS_OP_N };
        let (alpha, beta) = (1.0f32, 0.0f32);
        unsafe {
            cudarc::cublas::result::sgemm(
                *self.blas.handle(),
                op(g.trans_a),
                op(g.trans_b),
                g.m as i32,
                g.n as i32,
                g.k as i32,
                &alpha,
                g.a as *const f32,
                g.lda as i32,
                g.b as *const f32,
                g.ldb as i32,
                &beta,
                g.c as *mut f32,
                g.ldc as i32,
            )
        }
        .map_err(|e| format!("cuBLAS sgemm {}x{}x{}: {e:?}", g.m, g.n, g.k))
    }
    fn gemm_bf16(&self, g: &Sgemm) -> Result<(), String> {
        use cudarc::cublas::sys::{
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
            cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T},
            cudaDataType::{CUDA_R_16BF, CUDA_R_32F},
        };
        self.bind()?;
        let op = |t: bool| if t { CUBLAS_OP_T } else { CUBLAS_OP_N };
        let (alpha, beta) = (1.0f32, 0.0f32);
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.blas.handle(),
                op(g.trans_a),
                op(g.trans_b),
                g.m as i32,
                g.n as i32,
                g.k as i32,
                &alpha as *const f32 as *const std::ffi::c_void,
                g.a as *const std::ffi::c_void,
                CUDA_R_16BF,
                g.lda as i32,
                g.b as *const std::ffi::c_void,
                CUDA_R_16BF,
                g.ldb as i32,
                &beta as *const f32 as *const std::ffi::c_void,
                g.c as *mut std::ffi::c_void,
                CUDA_R_32F,
                g.ldc as i32,
                CUBLAS_COMPUTE_32F,
                CUBLAS_GEMM_DFALT,
            )
        }
        .map_err(|e| format!("cuBLAS bf16 GEMM {}x{}x{}: {e:?}", g.m, g.n, g.k))
    }
    fn synchronize(&self) -> Result<(), String> {
        self.bind()?;
        unsafe { cudarc::driver::result::stream::synchronize(std::ptr::null_mut()) }.map_err(|e| format!("synchronizing: {e:?}"))
    }
    fn memory(&self) -> (usize, usize) {
        self.ctx.mem_get_info().unwrap_or((0, 0))
    }
    fn tf32(&self) -> bool {
        self.tf32
    }
}
