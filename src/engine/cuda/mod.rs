//! The CUDA backend: the same interface as [`super::Cpu`], written once against the [`device::Device`]
//! layer. On a GPU ([`device::Gpu`]) dense GEMMs go to cuBLAS (f32, optionally TF32 tensor cores) and
//! every other op is a hand-written kernel from `kernels/*.cu`, compiled with NVRTC when the backend is
//! created (build.rs embeds the sources). The CUDA libraries are loaded at run time, so this compiles and
//! the CPU path runs where there is no CUDA; [`Cuda::new`] then returns an error saying what is missing.
//! With `SCSPECIES_CUDA_EMULATE=1` the same backend runs on [`emulated::Emulated`]: the kernels compiled
//! for the host, so every launch here is exercised in CI without a GPU.
//!
//! Random numbers (dropout masks, reparameterisation noise, candidate latents) are drawn on the host
//! by the model code, exactly as for the CPU backend, and uploaded: a GPU run follows the CPU run's
//! sampling order, so the two differ only by floating-point rounding.
//!
//! Errors: the interface's ops return values, as on the CPU, so a failed device call (allocation, copy,
//! launch) is recorded with the operation's name, later ops are skipped, and
//! [`Backend::device_error`] reports it; the training and transfer loops check it and return it as an
//! error to the user.

pub mod device;
pub mod emulated;

use super::backend::{Backend, HostRows, KnnScreen, LikGradsMut, RowsFn};
use super::likelihood::Distribution;
use super::ops::AdamConfig;
use device::{Arg, Device, Mem, Owner, Sgemm};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Threads per block for the row kernels (one block per row) and the element-wise grid-stride loops.
const THREADS: u32 = 256;

/// `kernels/topk.cu`'s shared sort: a row's list plus a block of context similarities fit in it.
const TOPK_SORT: usize = 4096;
/// Target rows per similarity GEMM in the kNN screen.
const KNN_TARGET_BAND: usize = 8192;
/// The kNN keeps the target's feature bands on the device when they take at most this.
const KNN_RESIDENT_BYTES: usize = 2 << 30;

/// How many distinct constant tables (the split softmax's gene groups) stay on the device.
const TABLES_KEPT: usize = 8;

/// A device buffer: `len` f32 values (at least one element is allocated, as CUDA refuses empty
/// allocations).
pub struct DevBuf {
    mem: Mem,
    len: usize,
}

/// A sparse minibatch on the device: CSR rows for the forward product and, for the weight gradient,
/// the CSC transpose restricted to the features present in the batch.
pub struct DevSparse {
    rows: usize,
    indptr: Mem,
    indices: Mem,
    values: Mem,
    /// Features (input columns) with at least one non-zero, and their CSC slices.
    n_feat: usize,
    feat: Mem,
    colptr: Mem,
    rowidx: Mem,
    t_values: Mem,
}

/// The device and what the backend keeps on it.
pub struct Cuda {
    dev: Box<dyn Device>,
    sigs: HashMap<String, crate::kernels::KernelSig>,
    /// The first failed device call, in words; every later call is skipped.
    error: Mutex<Option<String>>,
    /// Constant tables uploaded once, found again by content.
    tables: Mutex<Vec<(Vec<u8>, Arc<Mem>)>>,
    /// Count rows kept on the device by their [`HostRows::id`] (the label transfer's target counts).
    resident: Mutex<Option<(u64, Arc<CsrOnDevice>)>>,
}

/// CSR rows on the device (row pointers as i64).
struct CsrOnDevice {
    ptr: Mem,
    idx: Mem,
    val: Mem,
}

/// How a GPU could not be set up, in words for the user.
pub fn unavailable_reason(e: &str) -> String {
    format!("no usable CUDA GPU: {e}")
}

/// Whether `SCSPECIES_CUDA_EMULATE=1` asks for the emulated device.
pub fn emulation_requested() -> bool {
    std::env::var("SCSPECIES_CUDA_EMULATE").is_ok_and(|v| v == "1")
}

impl From<&DevBuf> for Arg {
    fn from(b: &DevBuf) -> Arg {
        Arg::Ptr(b.mem.ptr())
    }
}
impl From<&mut DevBuf> for Arg {
    fn from(b: &mut DevBuf) -> Arg {
        Arg::Ptr(b.mem.ptr())
    }
}
impl From<&Mem> for Arg {
    fn from(m: &Mem) -> Arg {
        Arg::Ptr(m.ptr())
    }
}
// Scalars pass as the kernel parameter of their own type.
macro_rules! scalar_args {
    ($($t:ty => $v:ident),*) => {$(
        impl From<$t> for Arg {
            fn from(v: $t) -> Arg {
                Arg::$v(v)
            }
        }
    )*};
}
scalar_args!(i32 => I32, u32 => U32, i64 => I64, f32 => F32, f64 => F64);

/// A null pointer for optional kernel arguments.
const NULL: Arg = Arg::Ptr(0);

impl Cuda {
    /// Open GPU `ordinal`, compile every kernel module for its architecture and create the cuBLAS
    /// handle. `tf32` lets cuBLAS use TF32 tensor cores for the dense GEMMs (Ampere and later). With
    /// `SCSPECIES_CUDA_EMULATE=1`, the emulated device instead (see [`emulated`]).
    pub fn new(ordinal: usize, tf32: bool) -> Result<Self, String> {
        if emulation_requested() {
            return Self::emulated();
        }
        Self::on(Box::new(device::Gpu::new(ordinal, tf32)?))
    }

    /// The backend on the emulated device.
    pub fn emulated() -> Result<Self, String> {
        Self::on(Box::new(emulated::Emulated::new().map_err(|e| format!("emulated CUDA device: {e}"))?))
    }

    fn on(dev: Box<dyn Device>) -> Result<Self, String> {
        Ok(Cuda { dev, sigs: device::kernel_table()?, error: Mutex::new(None), tables: Mutex::new(Vec::new()), resident: Mutex::new(None) })
    }

    /// Whether this is the emulated device.
    pub fn is_emulated(&self) -> bool {
        self.dev.name().starts_with("cuda:emulated")
    }

    /// Free and total device memory in bytes.
    pub fn memory(&self) -> (usize, usize) {
        self.dev.memory()
    }

    fn failed(&self) -> bool {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Keep the first error (the later ones follow from it).
    fn record(&self, what: impl std::fmt::Display, e: String) {
        let mut g = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            *g = Some(format!("CUDA {what}: {e}"));
        }
    }

    fn check(&self, what: impl std::fmt::Display, r: Result<(), String>) {
        if let Err(e) = r {
            self.record(what, e);
        }
    }

    /// A placeholder after a failure: no memory, nothing to free; no op touches it, as all are skipped.
    fn dead() -> Mem {
        Mem { ptr: 0, bytes: 0, owner: Owner::None }
    }

    fn alloc(&self, what: impl std::fmt::Display, bytes: usize) -> Mem {
        if self.failed() {
            return Self::dead();
        }
        self.dev.alloc_zeroed(bytes).unwrap_or_else(|e| {
            self.record(what, e);
            Self::dead()
        })
    }

    fn htod<T: bytemuck::Pod>(&self, what: impl std::fmt::Display, v: &[T]) -> Mem {
        if self.failed() {
            return Self::dead();
        }
        self.dev.upload(bytemuck::cast_slice(v)).unwrap_or_else(|e| {
            self.record(what, e);
            Self::dead()
        })
    }

    /// `len` values of type T from `m` (zeros after a failure, which is reported by `device_error`).
    fn dtoh<T: bytemuck::Pod>(&self, what: impl std::fmt::Display, m: &Mem, len: usize) -> Vec<T> {
        let mut v = vec![T::zeroed(); len];
        if len > 0 && !self.failed() {
            let r = self.dev.download(m, bytemuck::cast_slice_mut(&mut v));
            self.check(what, r);
        }
        v
    }

    fn memset_zero(&self, what: impl std::fmt::Display, m: &Mem) {
        if !self.failed() {
            let r = self.dev.memset_zero(m);
            self.check(what, r);
        }
    }

    /// A constant table on the device, uploaded the first time these bytes are asked for.
    fn table(&self, bytes: &[u8]) -> Arc<Mem> {
        let mut t = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, m)) = t.iter().find(|(h, _)| h.as_slice() == bytes) {
            return m.clone();
        }
        let m = Arc::new(self.htod("upload of a constant table", bytes));
        if self.failed() {
            return m;
        }
        if t.len() == TABLES_KEPT {
            t.remove(0);
        }
        t.push((bytes.to_vec(), m.clone()));
        m
    }

    /// The first `n` floats of `x` rounded to bf16 (kernel `to_bf16`).
    fn bf16_copy(&self, x: &Mem, n: usize) -> Mem {
        let y = self.alloc("allocation of bf16 operands", n * 2);
        self.launch("to_bf16", Self::elems(n), &[Arg::from(x), Arg::from(&y), Arg::I64(n as i64)]);
        y
    }

    /// `x`'s stored rows on the device: uploaded now, or found resident by their id.
    fn csr_rows(&self, x: &HostRows) -> Arc<CsrOnDevice> {
        let upload = || {
            let what = "upload of count rows";
            let ptr: Vec<i64> = x.ptr.iter().map(|&p| p as i64).collect();
            Arc::new(CsrOnDevice { ptr: self.htod(what, &ptr), idx: self.htod(what, &x.idx), val: self.htod(what, &x.val) })
        };
        let Some(id) = x.id else { return upload() };
        let mut r = self.resident.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((have, rows)) = r.as_ref()
            && *have == id
        {
            return rows.clone();
        }
        let rows = upload();
        *r = (!self.failed()).then(|| (id, rows.clone()));
        rows
    }

    /// Grid for a grid-stride loop over n elements.
    fn elems(n: usize) -> (u32, u32) {
        (n.div_ceil(THREADS as usize).clamp(1, 1 << 16) as u32, THREADS)
    }

    /// One block of THREADS per row.
    fn per_row(rows: usize) -> (u32, u32) {
        (rows.max(1) as u32, THREADS)
    }

    /// Launch `kernel` after checking the arguments against its signature in `kernels/*.cu`.
    fn launch(&self, kernel: &str, (grid, block): (u32, u32), args: &[Arg]) {
        if self.failed() {
            return;
        }
        let r = match self.sigs.get(kernel) {
            None => Err(format!("kernel {kernel} is not in kernels/*.cu")),
            Some(sig) => device::check_args(sig, args).and_then(|_| self.dev.launch(kernel, grid, block, args)),
        };
        self.check(format_args!("kernel {kernel}"), r);
    }

    /// C[m×n] (row-major) = op(A)·op(B) with row-major operands, through column-major cuBLAS:
    /// Cᵀ = op(B)ᵀ·op(A)ᵀ. `ta`/`tb` say whether A/B are stored transposed; lda/ldb are their row lengths.
    #[allow(clippy::too_many_arguments)]
    fn gemm_rm(&self, m: usize, n: usize, k: usize, a: &Mem, ta: bool, lda: usize, b: &Mem, tb: bool, ldb: usize, c: &Mem) {
        if m == 0 || n == 0 || self.failed() {
            return;
        }
        if k == 0 {
            self.memset_zero("GEMM with k = 0", c);
            return;
        }
        let g = Sgemm { trans_a: tb, trans_b: ta, m: n, n: m, k, a: b.ptr(), lda: ldb, b: a.ptr(), ldb: lda, c: c.ptr(), ldc: n };
        if crate::engine::precision::gemm_in_bf16() {
            // The ranking decodes (`precision::ranking`): both operands rounded to bf16, tensor cores.
            let (a16, b16) = (self.bf16_copy(a, m * k), self.bf16_copy(b, k * n));
            let r = self.dev.gemm_bf16(&Sgemm { a: b16.ptr(), b: a16.ptr(), ..g });
            self.check(format_args!("bf16 GEMM {m}x{n}x{k}"), r);
            return;
        }
        let r = self.dev.sgemm(&g);
        self.check(format_args!("GEMM {m}x{n}x{k}"), r);
    }
}

/// Launch a kernel: `run!(self, "name", grid, [args...])`, each argument converted with `Arg::from`.
macro_rules! run {
    ($self:ident, $name:literal, $cfg:expr, [$($arg:expr),* $(,)?]) => {{
        $self.launch($name, $cfg, &[$(Arg::from($arg)),*]);
    }};
}

impl Backend for Cuda {
    type Buf = DevBuf;
    type Sparse = DevSparse;

    fn name(&self) -> String {
        self.dev.name()
    }
    fn synchronize(&self) {
        if !self.failed() {
            let r = self.dev.synchronize();
            self.check("synchronize", r);
        }
    }
    fn device_error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn zeros(&self, n: usize) -> DevBuf {
        DevBuf { mem: self.alloc(format_args!("allocation of {n} floats"), n * 4), len: n }
    }
    fn upload(&self, v: &[f64]) -> DevBuf {
        let f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        self.upload_f32(&f)
    }
    fn upload_f32(&self, v: &[f32]) -> DevBuf {
        DevBuf { mem: self.htod(format_args!("upload of {} floats", v.len()), v), len: v.len() }
    }
    fn download(&self, b: &DevBuf) -> Vec<f64> {
        self.download_f32(b).unwrap().into_iter().map(|x| x as f64).collect()
    }
    fn download_f32(&self, b: &DevBuf) -> Option<Vec<f32>> {
        Some(self.dtoh(format_args!("download of {} floats", b.len), &b.mem, b.len))
    }
    fn len(&self, b: &DevBuf) -> usize {
        b.len
    }
    fn copy(&self, b: &DevBuf) -> DevBuf {
        let mem = self.alloc(format_args!("copy of {} floats", b.len), b.len * 4);
        if !self.failed() {
            let r = self.dev.copy(&b.mem, &mem, b.len * 4);
            self.check(format_args!("copy of {} floats", b.len), r);
        }
        DevBuf { mem, len: b.len }
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
        let what = "upload of a sparse minibatch";
        DevSparse {
            rows,
            indptr: self.htod(what, &ip),
            indices: self.htod(what, &indices),
            values: self.htod(what, &values),
            n_feat: feat.len(),
            feat: self.htod(what, &feat),
            colptr: self.htod(what, &colptr),
            rowidx: self.htod(what, &rowidx),
            t_values: self.htod(what, &t_values),
        }
    }

    // y[B×N] = x[B×K]·w[K×N] + b
    fn linear_fwd(&self, x: &DevBuf, w: &DevBuf, b: &DevBuf, y: &mut DevBuf, rows: usize, k: usize, n: usize) {
        self.gemm_rm(rows, n, k, &x.mem, false, k, &w.mem, false, n, &y.mem);
        run!(self, "add_bias", Self::elems(rows * n), [&*y, b, rows as i64, n as i64]);
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
        self.gemm_rm(k, n, rows, &x.mem, true, k, &dy.mem, false, n, &dw.mem);
        run!(self, "col_sums", Self::elems(n), [dy, db, rows as i32, n as i32]);
        if let Some(dx) = dx {
            self.gemm_rm(rows, k, n, &dy.mem, false, n, &w.mem, true, n, &dx.mem);
        }
    }
    fn sparse_linear_fwd(&self, x: &DevSparse, w: &DevBuf, b: &DevBuf, y: &mut DevBuf, n: usize) {
        run!(self, "sparse_linear_fwd", Self::per_row(x.rows), [&x.indptr, &x.indices, &x.values, w, b, y, n as i32]);
    }
    fn sparse_linear_bwd(&self, x: &DevSparse, dy: &DevBuf, dw: &mut DevBuf, db: &mut DevBuf, n: usize) {
        self.memset_zero("zeroing a weight gradient", &dw.mem);
        if x.n_feat > 0 {
            run!(self, "sparse_linear_bwd_w", Self::per_row(x.n_feat), [&x.colptr, &x.rowidx, &x.t_values, &x.feat, dy, &*dw, n as i32]);
        }
        run!(self, "col_sums", Self::elems(n), [dy, db, x.rows as i32, n as i32]);
    }
    fn layernorm_fwd(&self, x: &DevBuf, gamma: &DevBuf, beta: &DevBuf, y: &mut DevBuf, xhat: &mut DevBuf, rstd: &mut DevBuf, d: usize) {
        let rows = x.len / d.max(1);
        run!(self, "layernorm_fwd", Self::per_row(rows), [x, gamma, beta, y, xhat, rstd, d as i32]);
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
        run!(self, "layernorm_bwd_params", Self::elems(d), [dy, xhat, dgamma, dbeta, rows as i32, d as i32]);
        run!(self, "layernorm_bwd_dx", Self::per_row(rows), [dy, xhat, rstd, gamma, dx, d as i32]);
    }
    fn relu_dropout_fwd(&self, x: &DevBuf, mask: Option<&DevBuf>, relu_out: &mut DevBuf, y: &mut DevBuf) {
        let m = mask.map(Arg::from).unwrap_or(NULL);
        run!(self, "relu_dropout_fwd", Self::elems(x.len), [x, m, relu_out, y, x.len as i64]);
    }
    fn relu_dropout_bwd(&self, dy: &DevBuf, relu_out: &DevBuf, mask: Option<&DevBuf>, dx: &mut DevBuf) {
        let m = mask.map(Arg::from).unwrap_or(NULL);
        run!(self, "relu_dropout_bwd", Self::elems(dy.len), [dy, relu_out, m, dx, dy.len as i64]);
    }
    fn split_softmax_fwd(&self, r: &DevBuf, group: &[u8], weight: [f64; 2], rho: &mut DevBuf, n: usize) {
        let g = self.table(group);
        run!(self, "split_softmax_fwd", Self::per_row(r.len / n.max(1)), [r, &*g, weight[0] as f32, weight[1] as f32, rho, n as i32]);
    }
    fn split_softmax_bwd(&self, rho: &DevBuf, group: &[u8], weight: [f64; 2], d: &mut DevBuf, n: usize) {
        let g = self.table(group);
        run!(self, "split_softmax_bwd", Self::per_row(rho.len / n.max(1)), [rho, &*g, weight[0] as f32, weight[1] as f32, d, n as i32]);
    }
    fn gather_exp_rows(&self, log_alpha: &DevBuf, batch: &[u32], theta: &mut DevBuf, n: usize) {
        let b = self.htod("upload of batch indices", batch);
        run!(self, "gather_exp_rows", Self::elems(batch.len() * n), [log_alpha, &b, theta, batch.len() as i64, n as i64]);
    }
    fn scatter_theta_grad(&self, dtheta: &DevBuf, theta: &DevBuf, batch: &[u32], dla: &mut DevBuf, n: usize) {
        let b = self.htod("upload of batch indices", batch);
        let s = (dla.len / n.max(1)) as i64;
        run!(self, "scatter_theta_grad", Self::elems(dla.len), [dtheta, theta, &b, &*dla, batch.len() as i64, s, n as i64]);
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
        let cfg = Self::per_row(nll.len);
        let lg = match (dist, logit) {
            (Distribution::Zinb, Some(l)) => Arg::from(l),
            _ => NULL,
        };
        let (dr, dt, ds, dl) = match grads {
            None => (NULL, NULL, NULL, NULL),
            Some((dr, dt, ds, dl)) => {
                let ds = match (lg, ds) {
                    (Arg::Ptr(0), Some(ds)) => {
                        // NB: no logit gradient; keep the buffer zero like the CPU path's unused dummy.
                        self.memset_zero("zeroing the logit gradient", &ds.mem);
                        NULL
                    }
                    (Arg::Ptr(0), None) => NULL,
                    (_, Some(ds)) => Arg::from(ds),
                    (_, None) => {
                        self.record("kernel likelihood", "ZINB likelihood gradients need a logit gradient buffer".into());
                        return;
                    }
                };
                (Arg::from(dr), Arg::from(dt), ds, Arg::from(dl))
            }
        };
        run!(self, "likelihood", cfg, [x, rho, theta, lg, lib, n as i32, scale, &*nll, dr, dt, ds, dl]);
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
        // Counts stay sparse: the stored rows (resident when they have an id) and each scored row's
        // stored row; every gene's zero-count term (unless `counts_only`) plus a correction over the
        // counts.
        let m = rows.len();
        let csr = self.csr_rows(x);
        let row_of: Vec<u32> = match &x.row_of {
            Some(r) => r.clone(),
            None => (0..m as u32).collect(),
        };
        let what = "upload of scoring indices";
        let (ro, r, b) = (self.htod(what, &row_of), self.htod(what, rows), self.htod(what, batch));
        let lg = match (dist, logit) {
            (Distribution::Zinb, Some((l, _))) => Arg::from(l),
            _ => NULL,
        };
        let part = x.counts_only as i32;
        run!(
            self,
            "likelihood_score",
            Self::per_row(m),
            [&csr.ptr, &csr.idx, &csr.val, &ro, &r, &b, rho, theta, lg, lib, n as i32, part, nll]
        );
    }
    fn softplus(&self, x: &DevBuf) -> DevBuf {
        let mut y = self.zeros(x.len);
        run!(self, "softplus", Self::elems(x.len), [x, &mut y, x.len as i64]);
        y
    }
    fn reparam_fwd(&self, mu: &DevBuf, ls: &DevBuf, eps: &DevBuf, z: &mut DevBuf) {
        run!(self, "reparam_fwd", Self::elems(mu.len), [mu, ls, eps, z, mu.len as i64]);
    }
    fn reparam_bwd(&self, dz: &DevBuf, ls: &DevBuf, eps: &DevBuf, dmu: &mut DevBuf, dls: &mut DevBuf) {
        run!(self, "reparam_bwd", Self::elems(dz.len), [dz, ls, eps, dmu, dls, dz.len as i64]);
    }
    fn kl_normal(&self, mu: &DevBuf, ls: &DevBuf, l: usize, kl: &mut DevBuf, grads: Option<(f64, &mut DevBuf, &mut DevBuf)>) {
        let rows = kl.len;
        let (s, dmu, dls) = match grads {
            Some((s, dmu, dls)) => (s, Arg::from(dmu), Arg::from(dls)),
            None => (0.0, NULL, NULL),
        };
        run!(self, "kl_normal", Self::elems(rows), [mu, ls, rows as i32, l as i32, &*kl, s, dmu, dls]);
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
        let (s, dm, dls) = match grads {
            Some((s, dm, dls)) => (s, Arg::from(dm), Arg::from(dls)),
            None => (0.0, NULL, NULL),
        };
        run!(self, "kl_library", Self::elems(rows), [m, ls, pm, ps, rows as i32, &*kl, s, dm, dls]);
    }
    fn exp_add(&self, a: &DevBuf, c: f64, y: &mut DevBuf) {
        run!(self, "exp_add", Self::elems(a.len), [a, c as f32, y, a.len as i64]);
    }
    fn axpy(&self, alpha: f64, x: &DevBuf, y: &mut DevBuf) {
        run!(self, "axpy", Self::elems(x.len), [alpha as f32, x, y, x.len as i64]);
    }
    fn mul(&self, x: &DevBuf, z: &DevBuf, y: &mut DevBuf) {
        run!(self, "mul", Self::elems(x.len), [x, z, y, x.len as i64]);
    }
    fn gather_rows(&self, src: &DevBuf, rows: &[u32], n: usize, dst: &mut DevBuf) {
        let r = self.htod("upload of row indices", rows);
        run!(self, "gather_rows", Self::elems(rows.len() * n), [src, &r, dst, rows.len() as i64, n as i64]);
    }
    fn copy_cols(&self, src: &DevBuf, cols: usize, c0: usize, w: usize, dst: &mut DevBuf) {
        let rows = dst.len / w.max(1);
        run!(self, "copy_cols", Self::elems(rows * w), [src, dst, rows as i64, cols as i64, c0 as i64, w as i64]);
    }
    fn set_cols(&self, src: &DevBuf, cols: usize, c0: usize, w: usize, dst: &mut DevBuf) {
        let rows = src.len / w.max(1);
        run!(self, "set_cols", Self::elems(rows * w), [src, dst, rows as i64, cols as i64, c0 as i64, w as i64]);
    }
    fn adam(&self, cfg: &AdamConfig, t: u64, p: &mut DevBuf, g: &DevBuf, m: &mut DevBuf, v: &mut DevBuf) {
        // Bias corrections in f64 on the host, as adam_step.
        let bc1 = 1.0 - cfg.beta1.powi(t as i32);
        let bc2 = 1.0 - cfg.beta2.powi(t as i32);
        let (b1, b2, step, sq, eps) = (cfg.beta1 as f32, cfg.beta2 as f32, (cfg.lr / bc1) as f32, bc2.sqrt() as f32, cfg.eps as f32);
        run!(self, "adam", Self::elems(p.len), [&*p, g, m, v, b1, b2, step, sq, eps, p.len as i64]);
    }
    fn knn_screen(&self, nt: usize, nc: usize, h: usize, l: usize, target: &RowsFn<'_>, context: &RowsFn<'_>) -> Option<KnnScreen> {
        if l == 0 || 2 * l > TOPK_SORT || nt == 0 || nc == 0 || self.failed() {
            return None;
        }
        // Context blocks as wide as the sort allows beside the list; each uploaded once. Every band of
        // target rows: sims = band · blockᵀ (GEMM), then each row's list is merged with its sims.
        let cn = TOPK_SORT - l;
        let band = KNN_TARGET_BAND.min(nt);
        let best_sim = self.upload_f32(&vec![f32::NEG_INFINITY; nt * l]);
        let best_idx = self.htod("upload of the kNN lists", &vec![u32::MAX; nt * l]);
        let sims = self.zeros(band * cn.min(nc));
        let resident = nt * h * 4 <= KNN_RESIDENT_BYTES;
        let mut bands: Vec<Option<DevBuf>> = (0..nt.div_ceil(band)).map(|_| None).collect();
        for c0 in (0..nc).step_by(cn) {
            let c1 = (c0 + cn).min(nc);
            let cb = self.upload_f32(&context(c0..c1));
            for (b, t0) in (0..nt).step_by(band).enumerate() {
                let t1 = (t0 + band).min(nt);
                let tn = t1 - t0;
                let fresh;
                let tb = if resident {
                    bands[b].get_or_insert_with(|| self.upload_f32(&target(t0..t1)))
                } else {
                    fresh = self.upload_f32(&target(t0..t1));
                    &fresh
                };
                self.gemm_rm(tn, c1 - c0, h, &tb.mem, false, h, &cb.mem, true, h, &sims.mem);
                let (ls, li) = (Arg::Ptr(best_sim.mem.ptr() + (t0 * l * 4) as u64), Arg::Ptr(best_idx.ptr() + (t0 * l * 4) as u64));
                run!(self, "topk_merge", Self::per_row(tn), [&sims, (c1 - c0) as i64, c0 as u32, ls, li, l as i32]);
            }
            if self.failed() {
                break;
            }
        }
        let (vs, is) = (
            self.dtoh::<f32>("download of the kNN lists", &best_sim.mem, nt * l),
            self.dtoh::<u32>("download of the kNN lists", &best_idx, nt * l),
        );
        if self.failed() {
            return None; // the caller screens on the CPU; device_error reports the failure
        }
        // Unit vectors: host rounding to f32 (2u), accumulation (h·u), and TF32's input rounding if on.
        let u = f64::powi(2.0, -24);
        let tf32 = if self.dev.tf32() { 2.0 * f64::powi(2.0, -11) } else { 0.0 };
        Some(KnnScreen { best: vs.into_iter().zip(is).collect(), error: (((h as f64 + 3.0) * u + tf32) * 1.01) as f32 })
    }
    fn all_finite(&self, b: &DevBuf) -> bool {
        let flag = self.htod("upload of a flag", &[1i32]);
        run!(self, "all_finite", Self::elems(b.len), [b, &flag, b.len as i64]);
        // After a device failure this answers "finite": the failure itself is what gets reported.
        self.failed() || self.dtoh::<i32>("download of a flag", &flag, 1)[0] == 1
    }
}
