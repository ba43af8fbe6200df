//! The emulated device: the kernels of `kernels/*.cu`, compiled with the host C++ compiler against
//! `kernels/emulator/cuda_shim.h` into a shared library, run on the CPU (one fiber per CUDA thread,
//! blocks in order), on host memory; the CPU GEMM (matrixmultiply) stands in for cuBLAS. It lets the
//! CUDA backend's own code and every kernel run where there is no GPU (`SCSPECIES_CUDA_EMULATE=1`).
//! Numerics are glibc's, not CUDA's, so parity tolerances stay; speed means nothing here.
//!
//! The library is built once per set of sources, compiler and flags, under `SCSPECIES_EMU_DIR` (default:
//! the temporary directory). `SCSPECIES_EMU_SANITIZE=thread|address` builds it with that sanitizer; its
//! runtime must then be preloaded (`scripts/emu-sanitize.sh` does both).

use super::device::{Arg, Device, Mem, Owner, Sgemm, arg_array};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const SHIM: &str = include_str!("../../../kernels/emulator/cuda_shim.h");
const LAUNCHER: &str = include_str!("../../../kernels/emulator/launcher.cpp");

type Entry = unsafe extern "C" fn(*mut *mut std::ffi::c_void);
type Launch = unsafe extern "C" fn(Entry, *const std::ffi::c_char, u32, u32, *mut *mut std::ffi::c_void);

pub struct Emulated {
    _lib: libloading::Library,
    launch: Launch,
    entries: HashMap<String, (Entry, std::ffi::CString)>,
    name: String,
    /// Serialises copies with launches: the kernels run on host memory the copies also touch.
    lock: Mutex<()>,
}

/// The C++ wrapper that unpacks a cuLaunchKernel-style argument array into kernel `k`'s parameters.
fn wrapper(k: &crate::kernels::KernelSig) -> String {
    let args: Vec<String> = k.params.iter().enumerate().map(|(i, (ty, _))| format!("*reinterpret_cast<{ty}*>(a[{i}])")).collect();
    format!("extern \"C\" void emu_entry_{0}(void** a) {{ {0}({1}); }}\n", k.name, args.join(", "))
}

fn sanitizer() -> Result<Option<String>, String> {
    match std::env::var("SCSPECIES_EMU_SANITIZE") {
        Err(_) => Ok(None),
        Ok(s) if s.is_empty() => Ok(None),
        Ok(s) if s == "thread" || s == "address" => {
            let lib = if s == "thread" { "libtsan" } else { "libasan" };
            if !std::env::var("LD_PRELOAD").is_ok_and(|p| p.contains(lib)) {
                return Err(format!(
                    "SCSPECIES_EMU_SANITIZE={s} needs the sanitizer's runtime loaded first: LD_PRELOAD=$(c++ -print-file-name={lib}.so) (scripts/emu-sanitize.sh sets it)"
                ));
            }
            Ok(Some(s))
        }
        Ok(s) => Err(format!("SCSPECIES_EMU_SANITIZE={s}: expected `thread` or `address`")),
    }
}

/// Compile the kernels and the launcher into `dir/libscspecies_emu.so` unless it is there already.
fn build(dir: &Path, cxx: &str, flags: &[&str], kernels: &[(String, String)]) -> Result<PathBuf, String> {
    let so = dir.join("libscspecies_emu.so");
    if so.exists() {
        return Ok(so);
    }
    // Sources in a folder of this process's own, the library renamed into place when complete: two
    // test processes may build at once.
    let work = dir.join(format!("build-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("creating {}: {e}", work.display()))?;
    let write = |name: &str, text: &str| -> Result<PathBuf, String> {
        let p = work.join(name);
        std::fs::write(&p, text).map_err(|e| format!("writing {}: {e}", p.display()))?;
        Ok(p)
    };
    write("cuda_shim.h", SHIM)?;
    let mut sources = vec![write("launcher.cpp", LAUNCHER)?];
    for (module, text) in kernels {
        sources.push(write(&format!("{module}.cpp"), text)?);
    }
    let tmp = work.join("libscspecies_emu.so");
    let out = std::process::Command::new(cxx)
        .args(["-std=c++20", "-fPIC", "-shared", "-pthread", "-include"])
        .arg(work.join("cuda_shim.h"))
        .args(flags)
        .args(&sources)
        .arg("-o")
        .arg(&tmp)
        .output()
        .map_err(|e| format!("running the C++ compiler `{cxx}` (set CXX, or install g++): {e}"))?;
    if !out.status.success() {
        return Err(format!("the kernels do not compile for the emulated device ({cxx}):\n{}", String::from_utf8_lossy(&out.stderr)));
    }
    std::fs::rename(&tmp, &so).map_err(|e| format!("renaming {}: {e}", tmp.display()))?;
    // Not needed once built: the #line directives point messages and sanitizer reports at kernels/*.cu.
    let _ = std::fs::remove_dir_all(&work);
    Ok(so)
}

impl Emulated {
    pub fn new() -> Result<Self, String> {
        let sanitize = sanitizer()?;
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        let mut flags = vec!["-O2"];
        if let Some(s) = &sanitize {
            flags = vec!["-O1", "-g", "-fno-omit-frame-pointer", if s == "thread" { "-fsanitize=thread" } else { "-fsanitize=address" }];
        }
        let mut kernels = Vec::new();
        let mut sigs = Vec::new();
        for (module, source) in crate::kernels::KERNEL_SOURCES {
            let ks = crate::kernels::signatures(source).map_err(|e| format!("kernels/{module}.cu: {e}"))?;
            let mut text = format!("{source}\n#line 1 \"{module}.cu (emulator wrappers)\"\n");
            for k in &ks {
                text += &wrapper(k);
            }
            kernels.push((module.to_string(), text));
            sigs.extend(ks);
        }
        // One build per content: sources, launcher, compiler and flags.
        let key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::hash::DefaultHasher::new();
            (SHIM, LAUNCHER, &cxx, &flags, &kernels).hash(&mut h);
            format!("{:016x}", h.finish())
        };
        let root =
            std::env::var_os("SCSPECIES_EMU_DIR").map(PathBuf::from).unwrap_or_else(|| std::env::temp_dir().join("scspecies-cuda-emu"));
        let so = build(&root.join(key), &cxx, &flags, &kernels)?;
        let lib = unsafe { libloading::Library::new(&so) }.map_err(|e| format!("loading {}: {e}", so.display()))?;
        let launch: Launch = unsafe { *lib.get::<Launch>(b"emu_launch\0").map_err(|e| format!("{}: emu_launch: {e}", so.display()))? };
        let mut entries = HashMap::new();
        for k in &sigs {
            let sym = format!("emu_entry_{}\0", k.name);
            let f: Entry = unsafe { *lib.get::<Entry>(sym.as_bytes()).map_err(|e| format!("{}: {}: {e}", so.display(), k.name))? };
            entries.insert(k.name.clone(), (f, std::ffi::CString::new(k.name.clone()).unwrap()));
        }
        let name = format!("cuda:emulated ({cxx}{})", sanitize.map(|s| format!(", -fsanitize={s}")).unwrap_or_default());
        Ok(Emulated { _lib: lib, launch, entries, name, lock: Mutex::new(()) })
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn host_alloc(bytes: usize) -> Result<Mem, String> {
    let layout = Mem::host_layout(bytes).ok_or_else(|| format!("allocating {bytes} bytes of host memory: too large"))?;
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    if ptr.is_null() {
        return Err(format!("allocating {bytes} bytes of host memory"));
    }
    Ok(Mem { ptr: ptr as u64, bytes: bytes.max(1), owner: Owner::Host })
}

impl Device for Emulated {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn alloc_zeroed(&self, bytes: usize) -> Result<Mem, String> {
        host_alloc(bytes)
    }
    fn upload(&self, data: &[u8]) -> Result<Mem, String> {
        let m = host_alloc(data.len())?;
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), m.ptr as *mut u8, data.len()) };
        Ok(m)
    }
    fn download(&self, m: &Mem, out: &mut [u8]) -> Result<(), String> {
        if out.len() > m.bytes {
            return Err(format!("downloading {} bytes from a {}-byte buffer", out.len(), m.bytes));
        }
        let _g = self.guard();
        unsafe { std::ptr::copy_nonoverlapping(m.ptr as *const u8, out.as_mut_ptr(), out.len()) };
        Ok(())
    }
    fn copy(&self, src: &Mem, dst: &Mem, bytes: usize) -> Result<(), String> {
        if bytes > src.bytes || bytes > dst.bytes {
            return Err(format!("copying {bytes} bytes between buffers of {} and {} bytes", src.bytes, dst.bytes));
        }
        let _g = self.guard();
        unsafe { std::ptr::copy(src.ptr as *const u8, dst.ptr as *mut u8, bytes) };
        Ok(())
    }
    fn memset_zero(&self, m: &Mem) -> Result<(), String> {
        let _g = self.guard();
        unsafe { std::ptr::write_bytes(m.ptr as *mut u8, 0, m.bytes) };
        Ok(())
    }
    fn launch(&self, kernel: &str, grid: u32, block: u32, args: &[Arg]) -> Result<(), String> {
        let (f, cname) = self.entries.get(kernel).ok_or_else(|| format!("kernel {kernel} is not in kernels/*.cu"))?;
        if grid == 0 || block == 0 || block > 1024 {
            return Err(format!("launching {kernel} with {grid} blocks of {block} threads"));
        }
        let (mut slots, mut params) = arg_array(kernel, args)?;
        let params = &mut params[..args.len()];
        for (p, s) in params.iter_mut().zip(slots.iter_mut()) {
            *p = s as *mut u64 as *mut std::ffi::c_void;
        }
        let _g = self.guard();
        unsafe { (self.launch)(*f, cname.as_ptr(), grid, block, params.as_mut_ptr()) };
        Ok(())
    }
    fn sgemm(&self, g: &Sgemm) -> Result<(), String> {
        if g.m == 0 || g.n == 0 {
            return Ok(());
        }
        let _g = self.guard();
        // Column-major: element (i, j) of an ld-strided matrix is at i + j·ld; op T swaps the strides.
        let st = |t: bool, ld: usize| if t { (ld as isize, 1isize) } else { (1isize, ld as isize) };
        let ((rsa, csa), (rsb, csb)) = (st(g.trans_a, g.lda), st(g.trans_b, g.ldb));
        unsafe {
            if g.k == 0 {
                for j in 0..g.n {
                    std::ptr::write_bytes((g.c as *mut f32).add(j * g.ldc), 0, g.m);
                }
            } else {
                matrixmultiply::sgemm(
                    g.m,
                    g.k,
                    g.n,
                    1.0,
                    g.a as *const f32,
                    rsa,
                    csa,
                    g.b as *const f32,
                    rsb,
                    csb,
                    0.0,
                    g.c as *mut f32,
                    1,
                    g.ldc as isize,
                );
            }
        }
        Ok(())
    }
    fn gemm_bf16(&self, g: &Sgemm) -> Result<(), String> {
        if g.m == 0 || g.n == 0 {
            return Ok(());
        }
        // bf16 widens exactly to f32: widen both operands, then the f32 GEMM (f32 accumulation, as
        // cuBLAS's CUBLAS_COMPUTE_32F).
        let widen = |p: u64, t: bool, rows: usize, cols: usize, ld: usize| -> Vec<f32> {
            // Column-major op(X) [rows×cols]: the stored matrix spans ld·(stored columns − 1) + stored rows.
            let (sr, sc) = if t { (cols, rows) } else { (rows, cols) };
            let len = if sc == 0 { 0 } else { ld * (sc - 1) + sr };
            let src = unsafe { std::slice::from_raw_parts(p as *const u16, len) };
            src.iter().map(|&h| f32::from_bits((h as u32) << 16)).collect()
        };
        let (a, b) = {
            let _g = self.guard();
            (widen(g.a, g.trans_a, g.m, g.k, g.lda), widen(g.b, g.trans_b, g.k, g.n, g.ldb))
        };
        self.sgemm(&Sgemm { a: a.as_ptr() as u64, b: b.as_ptr() as u64, ..*g })
    }
    fn synchronize(&self) -> Result<(), String> {
        Ok(())
    }
    fn memory(&self) -> (usize, usize) {
        (0, 0)
    }
}
