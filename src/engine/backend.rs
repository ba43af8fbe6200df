//! The backend interface: the ops the model needs, on device buffers. The model and training code call
//! only this, so a CUDA backend plugs in beside the CPU one. Host data crosses as f64 (small) or f32
//! (minibatches); shapes are passed explicitly, row-major.

use super::likelihood::Distribution;
use super::ops::AdamConfig;

/// Where the likelihood writes its gradients: ρ, θ, logit (ZINB) [B×N] and library [B].
pub type LikGradsMut<'a, B> =
    (&'a mut <B as Backend>::Buf, &'a mut <B as Backend>::Buf, Option<&'a mut <B as Backend>::Buf>, &'a mut <B as Backend>::Buf);

/// Sparse count rows kept on the host (CSR), for the scoring kernel.
#[derive(Debug, Clone, Default)]
pub struct HostRows {
    pub ptr: Vec<usize>,
    pub idx: Vec<u32>,
    pub val: Vec<f32>,
    /// Each row's count-only likelihood terms (`ops::count_terms`), when the caller has them cached:
    /// the label transfer scores every target cell against hundreds of context cells.
    pub count_terms: Option<Vec<f64>>,
    /// When set, scored row i reads stored row `row_of[i]` (the label transfer keeps all target cells
    /// stored once and points each (cell, candidate) pair at its cell instead of copying its counts).
    /// The CPU backend gathers the rows ([`HostRows::materialized`]) unless `count_terms` is given;
    /// the CUDA backend reads them in place.
    pub row_of: Option<Vec<u32>>,
    /// Set by [`HostRows::all`]: a process-unique name for `ptr`, `idx` and `val`, which must not change
    /// while it is set. A device backend keeps such rows resident instead of uploading them per call.
    pub id: Option<u64>,
    /// Score only the counts' part of each row: the count-only terms and, for the genes with counts,
    /// the exact term less the zero-count one, without the zero-count term of every gene (the label
    /// transfer interpolates that part: it is the score of the row [`HostRows::without_counts`]).
    pub counts_only: bool,
}

impl HostRows {
    /// Rows `cells` of a CSR matrix, in that order (repeats allowed). The copy runs in parallel: the
    /// label transfer gathers every (cell, candidate) pair's counts, ~10⁹ values on the Baron pair.
    pub fn gather(m: &crate::data::Csr, cells: &[usize]) -> Self {
        use rayon::prelude::*;
        let mut ptr = Vec::with_capacity(cells.len() + 1);
        ptr.push(0);
        for &c in cells {
            ptr.push(ptr[ptr.len() - 1] + m.row(c).0.len());
        }
        let nnz = ptr[cells.len()];
        let (mut idx, mut val) = (vec![0u32; nnz], vec![0f32; nnz]);
        // Split the outputs at row boundaries into one slice per row.
        let mut rest = (idx.as_mut_slice(), val.as_mut_slice());
        let mut slices = Vec::with_capacity(cells.len());
        for w in ptr.windows(2) {
            let (ri, ti) = std::mem::take(&mut rest.0).split_at_mut(w[1] - w[0]);
            let (rv, tv) = std::mem::take(&mut rest.1).split_at_mut(w[1] - w[0]);
            slices.push((ri, rv));
            rest = (ti, tv);
        }
        slices.into_par_iter().zip(cells.par_iter()).with_min_len(16).for_each(|((di, dv), &c)| {
            let (i, v) = m.row(c);
            di.copy_from_slice(i);
            dv.copy_from_slice(v);
        });
        HostRows { ptr, idx, val, count_terms: None, row_of: None, id: None, counts_only: false }
    }

    /// Every row of a CSR matrix, stored once (for [`HostRows::row_of`]).
    pub fn all(m: &crate::data::Csr) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = Some(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        HostRows {
            ptr: m.indptr.clone(),
            idx: m.indices.clone(),
            val: m.data.clone(),
            count_terms: None,
            row_of: None,
            id,
            counts_only: false,
        }
    }

    /// `rows` rows without counts (and count terms 0): scoring them gives the zero-count part alone.
    pub fn without_counts(rows: usize) -> Self {
        HostRows { ptr: vec![0; rows + 1], count_terms: Some(vec![0.0; rows]), ..Default::default() }
    }

    /// The scored rows as their own CSR (a copy only when `row_of` is set).
    pub fn materialized(&self) -> std::borrow::Cow<'_, HostRows> {
        let Some(map) = &self.row_of else { return std::borrow::Cow::Borrowed(self) };
        let mut h = HostRows {
            ptr: Vec::with_capacity(map.len() + 1),
            count_terms: self.count_terms.clone(),
            counts_only: self.counts_only,
            ..Default::default()
        };
        h.ptr.push(0);
        for &r in map {
            let (a, b) = (self.ptr[r as usize], self.ptr[r as usize + 1]);
            h.idx.extend_from_slice(&self.idx[a..b]);
            h.val.extend_from_slice(&self.val[a..b]);
            h.ptr.push(h.idx.len());
        }
        std::borrow::Cow::Owned(h)
    }
}

/// Rows `range` of a feature matrix, made on the host on demand: [range.len() × h] f32, row-major.
pub type RowsFn<'a> = dyn Fn(std::ops::Range<usize>) -> Vec<f32> + Sync + 'a;

/// The device's screening pass of the data-level kNN ([`Backend::knn_screen`]).
pub struct KnnScreen {
    /// Per target row, its `l` best (similarity, context index), best first, ties by the lower index.
    pub best: Vec<(f32, u32)>,
    /// A bound on |computed − exact| similarity of two unit vectors (the GEMM's rounding).
    pub error: f32,
}

pub trait Backend: Send + Sync {
    /// A device buffer of the backend's float type.
    type Buf: Send + Sync;
    /// A sparse minibatch (raw counts plus batch one-hot) ready for the input layers.
    type Sparse: Send + Sync;

    fn name(&self) -> String;
    /// Wait until queued work is done (for timing; the CPU backend is synchronous).
    fn synchronize(&self) {}
    /// The first failed device call (allocation, copy, launch), with the operation's name. Ops return
    /// values, not `Result`s, so a device records its failure, skips later work and reports it here;
    /// the training and transfer loops check it. The CPU backend has none.
    fn device_error(&self) -> Option<String> {
        None
    }

    // memory
    fn zeros(&self, n: usize) -> Self::Buf;
    fn upload(&self, v: &[f64]) -> Self::Buf;
    fn upload_f32(&self, v: &[f32]) -> Self::Buf;
    fn download(&self, b: &Self::Buf) -> Vec<f64>;
    /// The values as f32 when that is how they are stored (exact), else None: lets checkpoints skip
    /// the f64 round trip.
    fn download_f32(&self, b: &Self::Buf) -> Option<Vec<f32>>;
    fn len(&self, b: &Self::Buf) -> usize;
    fn copy(&self, b: &Self::Buf) -> Self::Buf;
    /// CSR rows (indptr, column indices, values) as a dense [rows×cols] matrix. This default densifies
    /// on the host and uploads; the CPU backend fills its rows in parallel.
    fn upload_dense(&self, cols: usize, indptr: &[usize], indices: &[u32], values: &[f32]) -> Self::Buf {
        let rows = indptr.len() - 1;
        let mut dense = vec![0f32; rows * cols];
        for r in 0..rows {
            for p in indptr[r]..indptr[r + 1] {
                dense[r * cols + indices[p] as usize] = values[p];
            }
        }
        self.upload_f32(&dense)
    }
    /// CSR rows (indptr, column indices, values) with `cols` columns.
    fn upload_sparse(&self, rows: usize, cols: usize, indptr: Vec<usize>, indices: Vec<u32>, values: Vec<f32>) -> Self::Sparse;

    // linear layers (weights input-major: w[K×N]). The backward ops overwrite every element of `dw`,
    // `db` and `dx`, so the model passes the previous step's gradient buffers without clearing them.
    #[allow(clippy::too_many_arguments)]
    fn linear_fwd(&self, x: &Self::Buf, w: &Self::Buf, b: &Self::Buf, y: &mut Self::Buf, rows: usize, k: usize, n: usize);
    #[allow(clippy::too_many_arguments)]
    fn linear_bwd(
        &self,
        x: &Self::Buf,
        w: &Self::Buf,
        dy: &Self::Buf,
        dx: Option<&mut Self::Buf>,
        dw: &mut Self::Buf,
        db: &mut Self::Buf,
        rows: usize,
        k: usize,
        n: usize,
    );
    fn sparse_linear_fwd(&self, x: &Self::Sparse, w: &Self::Buf, b: &Self::Buf, y: &mut Self::Buf, n: usize);
    fn sparse_linear_bwd(&self, x: &Self::Sparse, dy: &Self::Buf, dw: &mut Self::Buf, db: &mut Self::Buf, n: usize);

    // normalisation and activations
    #[allow(clippy::too_many_arguments)]
    fn layernorm_fwd(
        &self,
        x: &Self::Buf,
        gamma: &Self::Buf,
        beta: &Self::Buf,
        y: &mut Self::Buf,
        xhat: &mut Self::Buf,
        rstd: &mut Self::Buf,
        d: usize,
    );
    #[allow(clippy::too_many_arguments)]
    fn layernorm_bwd(
        &self,
        dy: &Self::Buf,
        xhat: &Self::Buf,
        rstd: &Self::Buf,
        gamma: &Self::Buf,
        dx: &mut Self::Buf,
        dgamma: &mut Self::Buf,
        dbeta: &mut Self::Buf,
        rows: usize,
        d: usize,
    );
    fn relu_dropout_fwd(&self, x: &Self::Buf, mask: Option<&Self::Buf>, relu_out: &mut Self::Buf, y: &mut Self::Buf);
    fn relu_dropout_bwd(&self, dy: &Self::Buf, relu_out: &Self::Buf, mask: Option<&Self::Buf>, dx: &mut Self::Buf);

    // decoder output
    fn split_softmax_fwd(&self, r: &Self::Buf, group: &[u8], weight: [f64; 2], rho: &mut Self::Buf, n: usize);
    fn split_softmax_bwd(&self, rho: &Self::Buf, group: &[u8], weight: [f64; 2], d: &mut Self::Buf, n: usize);
    /// θ[B×N] = exp(log_alpha[batch_i, :]).
    fn gather_exp_rows(&self, log_alpha: &Self::Buf, batch: &[u32], theta: &mut Self::Buf, n: usize);
    /// dlog_alpha[b, :] = Σ_{i: batch_i = b} dθ_i ⊙ θ_i (overwrites all S rows).
    fn scatter_theta_grad(&self, dtheta: &Self::Buf, theta: &Self::Buf, batch: &[u32], dlog_alpha: &mut Self::Buf, n: usize);
    /// Per-cell NLL and, if asked, the gradients of scale·Σ nll (ρ, θ, logit [B×N]; library [B]).
    #[allow(clippy::too_many_arguments)]
    fn likelihood(
        &self,
        dist: Distribution,
        x: &Self::Buf,
        rho: &Self::Buf,
        theta: &Self::Buf,
        logit: Option<&Self::Buf>,
        lib: &Self::Buf,
        n: usize,
        scale: f64,
        nll: &mut Self::Buf,
        grads: Option<LikGradsMut<'_, Self>>,
    );

    /// Forward-only NLL per row for ranking: row i scores count row i of `x` against row `rows[i]` of
    /// the decoded `rho`/`logit` (with `logit`'s softplus precomputed), θ row `batch[i]` of the
    /// per-batch table [S×N] and library `lib[i]`; only the counts' part where `x.counts_only`. See
    /// `ops::likelihood_score_cached`.
    #[allow(clippy::too_many_arguments)]
    fn likelihood_score(
        &self,
        dist: Distribution,
        x: &HostRows,
        rows: &[u32],
        batch: &[u32],
        rho: &Self::Buf,
        theta: &Self::Buf,
        logit: Option<(&Self::Buf, &Self::Buf)>,
        lib: &Self::Buf,
        n: usize,
        nll: &mut Self::Buf,
    );
    /// softplus element-wise.
    fn softplus(&self, x: &Self::Buf) -> Self::Buf;
    /// NLL per row of decoder pre-activations: ρ = the split softmax of `r` [rows×N], then
    /// [`Self::likelihood_score`] of row i against count row i of `x`, θ row `batch[i]` of `theta`
    /// [S×N] and library `lib[i]` (ZINB: softplus of `logit` computed here). This default runs the three
    /// ops in turn; the CPU backend fuses them row by row with the same result.
    #[allow(clippy::too_many_arguments)]
    fn decode_score(
        &self,
        dist: Distribution,
        x: &HostRows,
        r: &Self::Buf,
        group: &[u8],
        weight: [f64; 2],
        logit: Option<&Self::Buf>,
        batch: &[u32],
        theta: &Self::Buf,
        lib: &Self::Buf,
        n: usize,
        nll: &mut Self::Buf,
    ) {
        let mut rho = self.zeros(batch.len() * n);
        self.split_softmax_fwd(r, group, weight, &mut rho, n);
        let sp = logit.map(|lg| self.softplus(lg));
        let idx: Vec<u32> = (0..batch.len() as u32).collect();
        self.likelihood_score(dist, x, &idx, batch, &rho, theta, logit.zip(sp.as_ref()), lib, n, nll);
    }

    // latent terms
    fn reparam_fwd(&self, mu: &Self::Buf, ls: &Self::Buf, eps: &Self::Buf, z: &mut Self::Buf);
    fn reparam_bwd(&self, dz: &Self::Buf, ls: &Self::Buf, eps: &Self::Buf, dmu: &mut Self::Buf, dls: &mut Self::Buf);
    fn kl_normal(&self, mu: &Self::Buf, ls: &Self::Buf, l: usize, kl: &mut Self::Buf, grads: Option<(f64, &mut Self::Buf, &mut Self::Buf)>);
    #[allow(clippy::too_many_arguments)]
    fn kl_library(
        &self,
        m: &Self::Buf,
        ls: &Self::Buf,
        pm: &Self::Buf,
        ps: &Self::Buf,
        kl: &mut Self::Buf,
        grads: Option<(f64, &mut Self::Buf, &mut Self::Buf)>,
    );

    // element-wise helpers
    /// y = exp(a + c) element-wise.
    fn exp_add(&self, a: &Self::Buf, c: f64, y: &mut Self::Buf);
    /// y += alpha·x.
    fn axpy(&self, alpha: f64, x: &Self::Buf, y: &mut Self::Buf);
    /// y = x ⊙ z.
    fn mul(&self, x: &Self::Buf, z: &Self::Buf, y: &mut Self::Buf);
    /// dst[r, :] = src[rows[r], :] for [·×n] matrices.
    fn gather_rows(&self, src: &Self::Buf, rows: &[u32], n: usize, dst: &mut Self::Buf);
    /// Copy columns [c0, c0+w) of a [rows×cols] matrix into a [rows×w] one.
    fn copy_cols(&self, src: &Self::Buf, cols: usize, c0: usize, w: usize, dst: &mut Self::Buf);
    /// Write a [rows×w] matrix into columns [c0, c0+w) of a [rows×cols] one.
    fn set_cols(&self, src: &Self::Buf, cols: usize, c0: usize, w: usize, dst: &mut Self::Buf);

    fn adam(&self, cfg: &AdamConfig, t: u64, p: &mut Self::Buf, g: &Self::Buf, m: &mut Self::Buf, v: &mut Self::Buf);
    /// [`Self::adam`], returning whether every gradient in `g` was finite (the update is applied either
    /// way). The CPU notes it during the update; this default checks first with [`Self::all_finite`].
    fn adam_checked(&self, cfg: &AdamConfig, t: u64, p: &mut Self::Buf, g: &Self::Buf, m: &mut Self::Buf, v: &mut Self::Buf) -> bool {
        let ok = self.all_finite(g);
        self.adam(cfg, t, p, g, m, v);
        ok
    }

    /// The screening pass of the exact data-level kNN (`knn::data_level`) where the device has one: for `nt`
    /// target and `nc` context rows of `h` L2-normalised features (`target`, `context` make them a
    /// band at a time), each target row's `l` highest dot products. None: this backend has none, and the
    /// caller screens on the CPU (the CPU backend's path, which streams and prunes instead).
    fn knn_screen(&self, nt: usize, nc: usize, h: usize, l: usize, target: &RowsFn<'_>, context: &RowsFn<'_>) -> Option<KnnScreen> {
        let _ = (nt, nc, h, l, target, context);
        None
    }
    /// No NaN or infinity in `b` (the divergence guard checks every gradient with it).
    fn all_finite(&self, b: &Self::Buf) -> bool;
}
