//! The CUDA backend: the same interface as [`super::Cpu`], on one device and one stream. Dense GEMMs go
//! to cuBLAS (f32, optionally TF32 tensor cores); every other op is a hand-written kernel from
//! `kernels/*.cu`, compiled with NVRTC when the backend is created (the sources are embedded by
//! build.rs). The CUDA libraries are loaded at run time, so this compiles and the CPU path runs where
//! there is no CUDA; [`Cuda::new`] then returns an error saying what is missing.
//!
//! Random numbers (dropout masks, reparameterisation noise, candidate latents) are drawn on the host
//! by the model code, exactly as for the CPU backend, and uploaded: a GPU run follows the CPU run's
//! sampling order, so the two differ only by floating-point rounding.

use super::backend::{Backend, HostRows, LikGradsMut};
use super::likelihood::Distribution;
use super::ops::AdamConfig;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, sys as blas_sys};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use std::collections::HashMap;
use std::sync::Arc;

/// Threads per block for the row kernels (one block per row) and the element-wise grid-stride loops.
const THREADS: u32 = 256;

/// A device buffer: `len` f32 values (at least one element is allocated, as CUDA refuses empty
/// allocations).
pub struct DevBuf {
    data: CudaSlice<f32>,
    len: usize,
}

/// A sparse minibatch on the device: CSR rows for the forward product and, for the weight gradient,
/// the CSC transpose restricted to the features present in the batch.
pub struct DevSparse {
    rows: usize,
    indptr: CudaSlice<i64>,
    indices: CudaSlice<u32>,
    values: CudaSlice<f32>,
    /// Features (input columns) with at least one non-zero, and their CSC slices.
    n_feat: usize,
    feat: CudaSlice<u32>,
    colptr: CudaSlice<i64>,
    rowidx: CudaSlice<u32>,
    t_values: CudaSlice<f32>,
}

/// Device, stream, cuBLAS handle and the compiled kernels.
pub struct Cuda {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    funcs: HashMap<String, CudaFunction>,
    name: String,
}

/// How a GPU could not be set up, in words for the user.
pub fn unavailable_reason(e: &str) -> String {
    format!("no usable CUDA GPU: {e}")
}

impl Cuda {
    /// Open GPU `ordinal`, compile every kernel module for its architecture and create the cuBLAS
    /// handle. `tf32` lets cuBLAS use TF32 tensor cores for the dense GEMMs (Ampere and later).
    pub fn new(ordinal: usize, tf32: bool) -> Result<Self, String> {
        // cudarc panics when libcuda cannot be loaded (dynamic loading): turn that into an error.
        let ctx = crate::kernels::quietly(|| CudaContext::new(ordinal))
            .map_err(|_| unavailable_reason("the CUDA driver library (libcuda.so) could not be loaded"))?
            .map_err(|e| unavailable_reason(&format!("device {ordinal}: {e:?}")))?;
        let (major, minor) = ctx.compute_capability().map_err(|e| format!("CUDA: {e:?}"))?;
        let arch: &'static str = Box::leak(format!("compute_{major}{minor}").into_boxed_str());
        if !crate::kernels::nvrtc::available() {
            return Err(unavailable_reason(
                "NVRTC (libnvrtc.so) could not be loaded; install the nvidia-cuda-nvrtc wheel or the CUDA toolkit and put its lib folder on LD_LIBRARY_PATH",
            ));
        }
        let stream = ctx.default_stream();
        let mut funcs = HashMap::new();
        for (module, source) in crate::kernels::KERNEL_SOURCES {
            let ptx = crate::kernels::nvrtc::compile(module, source, arch)?;
            let m = ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx)).map_err(|e| format!("kernels/{module}.cu: loading: {e:?}"))?;
            for name in crate::kernels::entry_points(source) {
                let f = m.load_function(&name).map_err(|e| format!("kernels/{module}.cu: kernel {name}: {e:?}"))?;
                funcs.insert(name, f);
            }
        }
        let blas = crate::kernels::quietly(|| CudaBlas::new(stream.clone()))
            .map_err(|_| unavailable_reason("cuBLAS (libcublas.so) could not be loaded"))?
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
        Ok(Cuda { ctx, stream, blas, funcs, name })
    }

    /// Free and total device memory in bytes.
    pub fn memory(&self) -> (usize, usize) {
        self.ctx.mem_get_info().unwrap_or((0, 0))
    }

    fn f(&self, name: &str) -> &CudaFunction {
        self.funcs.get(name).unwrap_or_else(|| panic!("CUDA kernel `{name}` is not in kernels/*.cu"))
    }

    fn sync_err<T, E: std::fmt::Debug>(&self, what: &str, r: Result<T, E>) -> T {
        r.unwrap_or_else(|e| panic!("CUDA {what} failed: {e:?}"))
    }

    fn alloc<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(&self, n: usize) -> CudaSlice<T> {
        self.sync_err("allocation", self.stream.alloc_zeros::<T>(n.max(1)))
    }

    fn htod<T: cudarc::driver::DeviceRepr>(&self, v: &[T]) -> CudaSlice<T> {
        if v.is_empty() {
            // One zero element: CUDA refuses empty allocations; nothing reads it.
            return self.sync_err("allocation", unsafe { self.stream.alloc::<T>(1) });
        }
        self.sync_err("upload", self.stream.clone_htod(v))
    }

    /// Grid for a grid-stride loop over n elements.
    fn elems(n: usize) -> LaunchConfig {
        let blocks = n.div_ceil(THREADS as usize).clamp(1, 1 << 16) as u32;
        LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
    }

    /// One block of THREADS per row.
    fn per_row(rows: usize) -> LaunchConfig {
        LaunchConfig { grid_dim: (rows.max(1) as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
    }

    /// C[m×n] (row-major) = op(A)·op(B) with row-major operands, through column-major cuBLAS:
    /// Cᵀ = op(B)ᵀ·op(A)ᵀ. `ta`/`tb` say whether A/B are stored transposed; lda/ldb are their row lengths.
    #[allow(clippy::too_many_arguments)]
    fn gemm_rm(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: &CudaSlice<f32>,
        ta: bool,
        lda: usize,
        b: &CudaSlice<f32>,
        tb: bool,
        ldb: usize,
        c: &mut CudaSlice<f32>,
    ) {
        use blas_sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
        if m == 0 || n == 0 {
            return;
        }
        let cfg = GemmConfig {
            transa: if tb { CUBLAS_OP_T } else { CUBLAS_OP_N },
            transb: if ta { CUBLAS_OP_T } else { CUBLAS_OP_N },
            m: n as i32,
            n: m as i32,
            k: k as i32,
            alpha: 1.0f32,
            lda: ldb as i32,
            ldb: lda as i32,
            beta: 0.0f32,
            ldc: n as i32,
        };
        if k == 0 {
            self.sync_err("memset", self.stream.memset_zeros(c));
            return;
        }
        self.sync_err("cuBLAS sgemm", unsafe { self.blas.gemm(cfg, b, a, c) });
    }

    fn launch(&self, what: &str, r: Result<Option<(cudarc::driver::CudaEvent, cudarc::driver::CudaEvent)>, cudarc::driver::DriverError>) {
        if let Err(e) = r {
            panic!("CUDA kernel {what} failed to launch: {e:?}");
        }
    }
}

/// A null device pointer for optional kernel arguments.
const NULL: u64 = 0;

macro_rules! run {
    ($self:ident, $name:literal, $cfg:expr, [$($arg:expr),* $(,)?]) => {{
        let f = $self.f($name);
        let mut b = $self.stream.launch_builder(f);
        $( b.arg($arg); )*
        let r = unsafe { b.launch($cfg) };
        $self.launch($name, r);
    }};
}

impl Backend for Cuda {
    type Buf = DevBuf;
    type Sparse = DevSparse;

    fn name(&self) -> String {
        self.name.clone()
    }
    fn synchronize(&self) {
        self.sync_err("synchronize", self.stream.synchronize());
    }
    fn zeros(&self, n: usize) -> DevBuf {
        DevBuf { data: self.alloc::<f32>(n), len: n }
    }
    fn upload(&self, v: &[f64]) -> DevBuf {
        let f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        self.upload_f32(&f)
    }
    fn upload_f32(&self, v: &[f32]) -> DevBuf {
        DevBuf { data: self.htod(v), len: v.len() }
    }
    fn download(&self, b: &DevBuf) -> Vec<f64> {
        self.download_f32(b).unwrap().into_iter().map(|x| x as f64).collect()
    }
    fn download_f32(&self, b: &DevBuf) -> Option<Vec<f32>> {
        if b.len == 0 {
            return Some(Vec::new());
        }
        let mut v = self.sync_err("download", self.stream.clone_dtoh(&b.data));
        v.truncate(b.len);
        Some(v)
    }
    fn len(&self, b: &DevBuf) -> usize {
        b.len
    }
    fn copy(&self, b: &DevBuf) -> DevBuf {
        DevBuf { data: self.sync_err("copy", self.stream.clone_dtod(&b.data)), len: b.len }
    }
    fn upload_sparse(&self, rows: usize, cols: usize, indptr: Vec<usize>, indices: Vec<u32>, values: Vec<f32>) -> DevSparse {
        // CSC of the present features only (the weight gradient touches just those rows of dW).
        let mut count = vec![0usize; cols];
        for &c in &indices {
            count[c as usize] += 1;
        }
        let feat: Vec<u32> = (0..cols as u32).filter(|&c| count[c as usize] > 0).collect();
        let mut slot = vec![usize::MAX; cols];
        let mut colptr = Vec::with_capacity(feat.len() + 1);
        colptr.push(0i64);
        for (f, &c) in feat.iter().enumerate() {
            slot[c as usize] = f;
            colptr.push(colptr[f] + count[c as usize] as i64);
        }
        let mut next: Vec<i64> = colptr[..feat.len()].to_vec();
        let (mut rowidx, mut t_values) = (vec![0u32; indices.len()], vec![0f32; indices.len()]);
        for r in 0..rows {
            for p in indptr[r]..indptr[r + 1] {
                let f = slot[indices[p] as usize];
                rowidx[next[f] as usize] = r as u32;
                t_values[next[f] as usize] = values[p];
                next[f] += 1;
            }
        }
        let ip: Vec<i64> = indptr.iter().map(|&p| p as i64).collect();
        DevSparse {
            rows,
            indptr: self.htod(&ip),
            indices: self.htod(&indices),
            values: self.htod(&values),
            n_feat: feat.len(),
            feat: self.htod(&feat),
            colptr: self.htod(&colptr),
            rowidx: self.htod(&rowidx),
            t_values: self.htod(&t_values),
        }
    }

    // y[B×N] = x[B×K]·w[K×N] + b
    fn linear_fwd(&self, x: &DevBuf, w: &DevBuf, b: &DevBuf, y: &mut DevBuf, rows: usize, k: usize, n: usize) {
        self.gemm_rm(rows, n, k, &x.data, false, k, &w.data, false, n, &mut y.data);
        let (r, nn) = (rows as i64, n as i64);
        run!(self, "add_bias", Self::elems(rows * n), [&mut y.data, &b.data, &r, &nn]);
    }
    // dw[K×N] = xᵀ·dy, db = Σ_rows dy, dx[B×K] = dy·wᵀ
    fn linear_bwd(
        &self,
        x: &DevBuf,
        w: &DevBuf,
        dy: &DevBuf,
        dx: Option<&mut DevBuf>,
        dw: &mut DevBuf,
        db: &mut DevBuf,
        rows: usize,
        k: usize,
        n: usize,
    ) {
        self.gemm_rm(k, n, rows, &x.data, true, k, &dy.data, false, n, &mut dw.data);
        let (r, nn) = (rows as i32, n as i32);
        run!(self, "col_sums", Self::elems(n), [&dy.data, &mut db.data, &r, &nn]);
        if let Some(dx) = dx {
            self.gemm_rm(rows, k, n, &dy.data, false, n, &w.data, true, n, &mut dx.data);
        }
    }
    fn sparse_linear_fwd(&self, x: &DevSparse, w: &DevBuf, b: &DevBuf, y: &mut DevBuf, n: usize) {
        let nn = n as i32;
        run!(self, "sparse_linear_fwd", Self::per_row(x.rows), [&x.indptr, &x.indices, &x.values, &w.data, &b.data, &mut y.data, &nn]);
    }
    fn sparse_linear_bwd(&self, x: &DevSparse, dy: &DevBuf, dw: &mut DevBuf, db: &mut DevBuf, n: usize) {
        self.sync_err("memset", self.stream.memset_zeros(&mut dw.data));
        let nn = n as i32;
        if x.n_feat > 0 {
            run!(
                self,
                "sparse_linear_bwd_w",
                Self::per_row(x.n_feat),
                [&x.colptr, &x.rowidx, &x.t_values, &x.feat, &dy.data, &mut dw.data, &nn]
            );
        }
        let r = x.rows as i32;
        run!(self, "col_sums", Self::elems(n), [&dy.data, &mut db.data, &r, &nn]);
    }
    fn layernorm_fwd(&self, x: &DevBuf, gamma: &DevBuf, beta: &DevBuf, y: &mut DevBuf, xhat: &mut DevBuf, rstd: &mut DevBuf, d: usize) {
        let rows = x.len / d.max(1);
        let dd = d as i32;
        run!(
            self,
            "layernorm_fwd",
            Self::per_row(rows),
            [&x.data, &gamma.data, &beta.data, &mut y.data, &mut xhat.data, &mut rstd.data, &dd]
        );
    }
    fn layernorm_bwd(
        &self,
        dy: &DevBuf,
        xhat: &DevBuf,
        rstd: &DevBuf,
        gamma: &DevBuf,
        dx: &mut DevBuf,
        dgamma: &mut DevBuf,
        dbeta: &mut DevBuf,
        rows: usize,
        d: usize,
    ) {
        let (r, dd) = (rows as i32, d as i32);
        run!(self, "layernorm_bwd_params", Self::elems(d), [&dy.data, &xhat.data, &mut dgamma.data, &mut dbeta.data, &r, &dd]);
        run!(self, "layernorm_bwd_dx", Self::per_row(rows), [&dy.data, &xhat.data, &rstd.data, &gamma.data, &mut dx.data, &dd]);
    }
    fn relu_dropout_fwd(&self, x: &DevBuf, mask: Option<&DevBuf>, relu_out: &mut DevBuf, y: &mut DevBuf) {
        let n = x.len as i64;
        match mask {
            Some(m) => run!(self, "relu_dropout_fwd", Self::elems(x.len), [&x.data, &m.data, &mut relu_out.data, &mut y.data, &n]),
            None => run!(self, "relu_dropout_fwd", Self::elems(x.len), [&x.data, &NULL, &mut relu_out.data, &mut y.data, &n]),
        }
    }
    fn relu_dropout_bwd(&self, dy: &DevBuf, relu_out: &DevBuf, mask: Option<&DevBuf>, dx: &mut DevBuf) {
        let n = dy.len as i64;
        match mask {
            Some(m) => run!(self, "relu_dropout_bwd", Self::elems(dy.len), [&dy.data, &relu_out.data, &m.data, &mut dx.data, &n]),
            None => run!(self, "relu_dropout_bwd", Self::elems(dy.len), [&dy.data, &relu_out.data, &NULL, &mut dx.data, &n]),
        }
    }
    fn split_softmax_fwd(&self, r: &DevBuf, group: &[u8], weight: [f64; 2], rho: &mut DevBuf, n: usize) {
        let g = self.htod(group);
        let (w0, w1, nn) = (weight[0] as f32, weight[1] as f32, n as i32);
        run!(self, "split_softmax_fwd", Self::per_row(r.len / n.max(1)), [&r.data, &g, &w0, &w1, &mut rho.data, &nn]);
    }
    fn split_softmax_bwd(&self, rho: &DevBuf, group: &[u8], weight: [f64; 2], d: &mut DevBuf, n: usize) {
        let g = self.htod(group);
        let (w0, w1, nn) = (weight[0] as f32, weight[1] as f32, n as i32);
        run!(self, "split_softmax_bwd", Self::per_row(rho.len / n.max(1)), [&rho.data, &g, &w0, &w1, &mut d.data, &nn]);
    }
    fn gather_exp_rows(&self, log_alpha: &DevBuf, batch: &[u32], theta: &mut DevBuf, n: usize) {
        let b = self.htod(batch);
        let (rows, nn) = (batch.len() as i64, n as i64);
        run!(self, "gather_exp_rows", Self::elems(batch.len() * n), [&log_alpha.data, &b, &mut theta.data, &rows, &nn]);
    }
    fn scatter_theta_grad(&self, dtheta: &DevBuf, theta: &DevBuf, batch: &[u32], dla: &mut DevBuf, n: usize) {
        let b = self.htod(batch);
        let (rows, s, nn) = (batch.len() as i64, (dla.len / n.max(1)) as i64, n as i64);
        run!(self, "scatter_theta_grad", Self::elems(dla.len), [&dtheta.data, &theta.data, &b, &mut dla.data, &rows, &s, &nn]);
    }
    fn likelihood(
        &self,
        dist: Distribution,
        x: &DevBuf,
        rho: &DevBuf,
        theta: &DevBuf,
        logit: Option<&DevBuf>,
        lib: &DevBuf,
        n: usize,
        scale: f64,
        nll: &mut DevBuf,
        grads: Option<LikGradsMut<'_, Self>>,
    ) {
        let rows = nll.len;
        let nn = n as i32;
        let cfg = Self::per_row(rows);
        let zinb = dist == Distribution::Zinb;
        let lg = if zinb { logit.map(|l| &l.data) } else { None };
        macro_rules! go {
            ($logit:expr, $dr:expr, $dt:expr, $ds:expr, $dl:expr) => {
                run!(
                    self,
                    "likelihood",
                    cfg,
                    [&x.data, &rho.data, &theta.data, $logit, &lib.data, &nn, &scale, &mut nll.data, $dr, $dt, $ds, $dl]
                )
            };
        }
        match (lg, grads) {
            (Some(l), None) => go!(l, &NULL, &NULL, &NULL, &NULL),
            (None, None) => go!(&NULL, &NULL, &NULL, &NULL, &NULL),
            (Some(l), Some((dr, dt, Some(ds), dl))) => go!(l, &mut dr.data, &mut dt.data, &mut ds.data, &mut dl.data),
            (Some(_), Some((_, _, None, _))) => panic!("ZINB likelihood gradients need a logit gradient buffer"),
            (None, Some((dr, dt, Some(ds), dl))) => {
                // NB: no logit gradient; keep the buffer zero like the CPU path's unused dummy.
                self.sync_err("memset", self.stream.memset_zeros(&mut ds.data));
                go!(&NULL, &mut dr.data, &mut dt.data, &NULL, &mut dl.data)
            }
            (None, Some((dr, dt, None, dl))) => go!(&NULL, &mut dr.data, &mut dt.data, &NULL, &mut dl.data),
        }
    }
    fn likelihood_score(
        &self,
        dist: Distribution,
        x: &HostRows,
        rows: &[u32],
        batch: &[u32],
        rho: &DevBuf,
        theta: &DevBuf,
        logit: Option<(&DevBuf, &DevBuf)>,
        lib: &DevBuf,
        n: usize,
        nll: &mut DevBuf,
    ) {
        // The query counts are scattered into a dense block on the device (one memset + one kernel).
        let x = x.materialized();
        let m = rows.len();
        let mut dense = self.alloc::<f32>(m * n);
        if !x.idx.is_empty() {
            let ptr: Vec<i64> = x.ptr.iter().map(|&p| p as i64).collect();
            let (p, i, v) = (self.htod(&ptr), self.htod(&x.idx), self.htod(&x.val));
            let nn = n as i64;
            run!(self, "csr_to_dense", Self::per_row(m), [&p, &i, &v, &mut dense, &nn]);
        }
        let (r, b) = (self.htod(rows), self.htod(batch));
        let nn = n as i32;
        let lg = if dist == Distribution::Zinb { logit.map(|(l, _)| &l.data) } else { None };
        match lg {
            Some(l) => {
                run!(self, "likelihood_score", Self::per_row(m), [&dense, &r, &b, &rho.data, &theta.data, l, &lib.data, &nn, &mut nll.data])
            }
            None => run!(
                self,
                "likelihood_score",
                Self::per_row(m),
                [&dense, &r, &b, &rho.data, &theta.data, &NULL, &lib.data, &nn, &mut nll.data]
            ),
        }
    }
    fn softplus(&self, x: &DevBuf) -> DevBuf {
        let mut y = self.zeros(x.len);
        let n = x.len as i64;
        run!(self, "softplus", Self::elems(x.len), [&x.data, &mut y.data, &n]);
        y
    }
    fn reparam_fwd(&self, mu: &DevBuf, ls: &DevBuf, eps: &DevBuf, z: &mut DevBuf) {
        let n = mu.len as i64;
        run!(self, "reparam_fwd", Self::elems(mu.len), [&mu.data, &ls.data, &eps.data, &mut z.data, &n]);
    }
    fn reparam_bwd(&self, dz: &DevBuf, ls: &DevBuf, eps: &DevBuf, dmu: &mut DevBuf, dls: &mut DevBuf) {
        let n = dz.len as i64;
        run!(self, "reparam_bwd", Self::elems(dz.len), [&dz.data, &ls.data, &eps.data, &mut dmu.data, &mut dls.data, &n]);
    }
    fn kl_normal(&self, mu: &DevBuf, ls: &DevBuf, l: usize, kl: &mut DevBuf, grads: Option<(f64, &mut DevBuf, &mut DevBuf)>) {
        let rows = kl.len;
        let (r, ll) = (rows as i32, l as i32);
        let cfg = Self::elems(rows);
        match grads {
            Some((s, dmu, dls)) => {
                run!(self, "kl_normal", cfg, [&mu.data, &ls.data, &r, &ll, &mut kl.data, &s, &mut dmu.data, &mut dls.data])
            }
            None => {
                let s = 0.0f64;
                run!(self, "kl_normal", cfg, [&mu.data, &ls.data, &r, &ll, &mut kl.data, &s, &NULL, &NULL])
            }
        }
    }
    fn kl_library(
        &self,
        m: &DevBuf,
        ls: &DevBuf,
        pm: &DevBuf,
        ps: &DevBuf,
        kl: &mut DevBuf,
        grads: Option<(f64, &mut DevBuf, &mut DevBuf)>,
    ) {
        let rows = kl.len;
        let r = rows as i32;
        let cfg = Self::elems(rows);
        match grads {
            Some((s, dm, dls)) => {
                run!(self, "kl_library", cfg, [&m.data, &ls.data, &pm.data, &ps.data, &r, &mut kl.data, &s, &mut dm.data, &mut dls.data])
            }
            None => {
                let s = 0.0f64;
                run!(self, "kl_library", cfg, [&m.data, &ls.data, &pm.data, &ps.data, &r, &mut kl.data, &s, &NULL, &NULL])
            }
        }
    }
    fn exp_add(&self, a: &DevBuf, c: f64, y: &mut DevBuf) {
        let (c, n) = (c as f32, a.len as i64);
        run!(self, "exp_add", Self::elems(a.len), [&a.data, &c, &mut y.data, &n]);
    }
    fn axpy(&self, alpha: f64, x: &DevBuf, y: &mut DevBuf) {
        let (a, n) = (alpha as f32, x.len as i64);
        run!(self, "axpy", Self::elems(x.len), [&a, &x.data, &mut y.data, &n]);
    }
    fn mul(&self, x: &DevBuf, z: &DevBuf, y: &mut DevBuf) {
        let n = x.len as i64;
        run!(self, "mul", Self::elems(x.len), [&x.data, &z.data, &mut y.data, &n]);
    }
    fn gather_rows(&self, src: &DevBuf, rows: &[u32], n: usize, dst: &mut DevBuf) {
        let r = self.htod(rows);
        let (nr, nn) = (rows.len() as i64, n as i64);
        run!(self, "gather_rows", Self::elems(rows.len() * n), [&src.data, &r, &mut dst.data, &nr, &nn]);
    }
    fn copy_cols(&self, src: &DevBuf, cols: usize, c0: usize, w: usize, dst: &mut DevBuf) {
        let rows = dst.len / w.max(1);
        let (r, c, o, ww) = (rows as i64, cols as i64, c0 as i64, w as i64);
        run!(self, "copy_cols", Self::elems(rows * w), [&src.data, &mut dst.data, &r, &c, &o, &ww]);
    }
    fn set_cols(&self, src: &DevBuf, cols: usize, c0: usize, w: usize, dst: &mut DevBuf) {
        let rows = src.len / w.max(1);
        let (r, c, o, ww) = (rows as i64, cols as i64, c0 as i64, w as i64);
        run!(self, "set_cols", Self::elems(rows * w), [&src.data, &mut dst.data, &r, &c, &o, &ww]);
    }
    fn adam(&self, cfg: &AdamConfig, t: u64, p: &mut DevBuf, g: &DevBuf, m: &mut DevBuf, v: &mut DevBuf) {
        // Bias corrections in f64 on the host, as adam_step.
        let bc1 = 1.0 - cfg.beta1.powi(t as i32);
        let bc2 = 1.0 - cfg.beta2.powi(t as i32);
        let (b1, b2, step, sq, eps) = (cfg.beta1 as f32, cfg.beta2 as f32, (cfg.lr / bc1) as f32, bc2.sqrt() as f32, cfg.eps as f32);
        let n = p.len as i64;
        run!(self, "adam", Self::elems(p.len), [&mut p.data, &g.data, &mut m.data, &mut v.data, &b1, &b2, &step, &sq, &eps, &n]);
    }
    fn all_finite(&self, b: &DevBuf) -> bool {
        let mut flag = self.htod(&[1i32]);
        let n = b.len as i64;
        run!(self, "all_finite", Self::elems(b.len), [&b.data, &mut flag, &n]);
        self.sync_err("download", self.stream.clone_dtoh(&flag))[0] == 1
    }
}
