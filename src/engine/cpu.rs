//! The CPU backend: rayon + matrixmultiply, generic over the float type (f32 for work, f64 for checks).

use super::Real;
use super::backend::{Backend, HostRows, LikGradsMut};
use super::likelihood::Distribution;
use super::ops::{self, AdamConfig, LikelihoodGrads, SparseBatch};
use std::marker::PhantomData;

#[derive(Debug, Default, Clone, Copy)]
pub struct Cpu<F = f32>(PhantomData<F>);

impl<F: Real> Cpu<F> {
    pub fn new() -> Self {
        Cpu(PhantomData)
    }
}

impl<F: Real> Backend for Cpu<F> {
    type Buf = Vec<F>;
    type Sparse = SparseBatch<F>;

    fn name(&self) -> String {
        format!("cpu-{}x{}", std::any::type_name::<F>(), rayon::current_num_threads())
    }
    fn zeros(&self, n: usize) -> Vec<F> {
        // Large buffers (decoder outputs, rows x genes) are zeroed by all threads: calloc zeroes reused
        // heap memory on the calling thread alone, a serial share of every step.
        const PARALLEL: usize = 1 << 18;
        if n < PARALLEL {
            return vec![F::zero(); n];
        }
        filled_in_parallel(n, 1 << 16, |_, _| {})
    }
    fn upload(&self, v: &[f64]) -> Vec<F> {
        v.iter().map(|&x| F::f(x)).collect()
    }
    fn upload_f32(&self, v: &[f32]) -> Vec<F> {
        v.iter().map(|&x| F::f(x as f64)).collect()
    }
    fn upload_dense(&self, cols: usize, indptr: &[usize], indices: &[u32], values: &[f32]) -> Vec<F> {
        // Written straight into the result, one row per task: no host copy to convert and no serial
        // zeroing of a minibatch's rows x genes.
        let rows = indptr.len() - 1;
        filled_in_parallel(rows * cols, cols.max(1), |r, row| {
            for p in indptr[r]..indptr[r + 1] {
                row[indices[p] as usize] = F::f(values[p] as f64);
            }
        })
    }
    fn download(&self, b: &Vec<F>) -> Vec<f64> {
        b.iter().map(|x| x.d()).collect()
    }
    fn download_f32(&self, b: &Vec<F>) -> Option<Vec<f32>> {
        F::IS_F32.then(|| F::as_f32(b).into_owned())
    }
    fn len(&self, b: &Vec<F>) -> usize {
        b.len()
    }
    fn copy(&self, b: &Vec<F>) -> Vec<F> {
        b.clone()
    }
    fn upload_sparse(&self, rows: usize, cols: usize, indptr: Vec<usize>, indices: Vec<u32>, values: Vec<f32>) -> SparseBatch<F> {
        SparseBatch::new(rows, cols, indptr, indices, values.iter().map(|&v| F::f(v as f64)).collect())
    }
    fn linear_fwd(&self, x: &Vec<F>, w: &Vec<F>, b: &Vec<F>, y: &mut Vec<F>, rows: usize, k: usize, n: usize) {
        ops::linear_fwd(x, w, b, y, rows, k, n)
    }
    fn linear_bwd(
        &self,
        x: &Vec<F>,
        w: &Vec<F>,
        dy: &Vec<F>,
        dx: Option<&mut Vec<F>>,
        dw: &mut Vec<F>,
        db: &mut Vec<F>,
        rows: usize,
        k: usize,
        n: usize,
    ) {
        ops::linear_bwd(x, w, dy, dx.map(|d| d.as_mut_slice()), dw, db, rows, k, n)
    }
    fn sparse_linear_fwd(&self, x: &SparseBatch<F>, w: &Vec<F>, b: &Vec<F>, y: &mut Vec<F>, n: usize) {
        ops::sparse_linear_fwd(x, w, b, y, n)
    }
    fn sparse_linear_bwd(&self, x: &SparseBatch<F>, dy: &Vec<F>, dw: &mut Vec<F>, db: &mut Vec<F>, n: usize) {
        ops::sparse_linear_bwd(x, dy, dw, db, n)
    }
    fn layernorm_fwd(&self, x: &Vec<F>, gamma: &Vec<F>, beta: &Vec<F>, y: &mut Vec<F>, xhat: &mut Vec<F>, rstd: &mut Vec<F>, d: usize) {
        ops::layernorm_fwd(x, gamma, beta, y, xhat, rstd, d)
    }
    fn layernorm_bwd(
        &self,
        dy: &Vec<F>,
        xhat: &Vec<F>,
        rstd: &Vec<F>,
        gamma: &Vec<F>,
        dx: &mut Vec<F>,
        dgamma: &mut Vec<F>,
        dbeta: &mut Vec<F>,
        rows: usize,
        d: usize,
    ) {
        ops::layernorm_bwd(dy, xhat, rstd, gamma, dx, dgamma, dbeta, rows, d)
    }
    fn relu_dropout_fwd(&self, x: &Vec<F>, mask: Option<&Vec<F>>, relu_out: &mut Vec<F>, y: &mut Vec<F>) {
        ops::relu_dropout_fwd(x, mask.map(|m| m.as_slice()), relu_out, y)
    }
    fn relu_dropout_bwd(&self, dy: &Vec<F>, relu_out: &Vec<F>, mask: Option<&Vec<F>>, dx: &mut Vec<F>) {
        ops::relu_dropout_bwd(dy, relu_out, mask.map(|m| m.as_slice()), dx)
    }
    fn split_softmax_fwd(&self, r: &Vec<F>, group: &[u8], weight: [f64; 2], rho: &mut Vec<F>, n: usize) {
        ops::split_softmax_fwd(r, group, weight, rho, n)
    }
    fn split_softmax_bwd(&self, rho: &Vec<F>, group: &[u8], weight: [f64; 2], d: &mut Vec<F>, n: usize) {
        ops::split_softmax_bwd(rho, group, weight, d, n)
    }
    fn gather_exp_rows(&self, log_alpha: &Vec<F>, batch: &[u32], theta: &mut Vec<F>, n: usize) {
        use rayon::prelude::*;
        // exp once per batch row, then copy: S ≪ cells.
        let table: Vec<F> = log_alpha.par_iter().map(|a| a.exp()).collect();
        theta.par_chunks_mut(n).zip(batch.par_iter()).for_each(|(row, &b)| row.copy_from_slice(&table[b as usize * n..][..n]));
    }
    fn scatter_theta_grad(&self, dtheta: &Vec<F>, theta: &Vec<F>, batch: &[u32], dla: &mut Vec<F>, n: usize) {
        use rayon::prelude::*;
        // Bands of 256 genes in parallel; each (batch, gene) still sums its cells in ascending order.
        let s = dla.len() / n.max(1);
        let bands: Vec<(usize, Vec<F>)> = (0..n.div_ceil(256))
            .into_par_iter()
            .map(|band| {
                let (j0, j1) = (band * 256, ((band + 1) * 256).min(n));
                let w = j1 - j0;
                let mut acc = vec![F::zero(); s * w];
                for (i, &b) in batch.iter().enumerate() {
                    let dst = &mut acc[b as usize * w..][..w];
                    let (dt, th) = (&dtheta[i * n + j0..i * n + j1], &theta[i * n + j0..i * n + j1]);
                    for j in 0..w {
                        dst[j] = dst[j] + dt[j] * th[j];
                    }
                }
                (j0, acc)
            })
            .collect();
        for (j0, acc) in bands {
            let w = acc.len() / s.max(1);
            for b in 0..s {
                dla[b * n + j0..b * n + j0 + w].copy_from_slice(&acc[b * w..(b + 1) * w]);
            }
        }
    }
    fn likelihood(
        &self,
        dist: Distribution,
        x: &Vec<F>,
        rho: &Vec<F>,
        theta: &Vec<F>,
        logit: Option<&Vec<F>>,
        lib: &Vec<F>,
        n: usize,
        scale: f64,
        nll: &mut Vec<F>,
        grads: Option<LikGradsMut<'_, Self>>,
    ) {
        let g = grads.map(|(d_rho, d_theta, d_logit, d_lib)| LikelihoodGrads {
            d_rho: d_rho.as_mut_slice(),
            d_theta: d_theta.as_mut_slice(),
            d_logit: d_logit.map(|d| d.as_mut_slice()),
            d_lib: d_lib.as_mut_slice(),
        });
        ops::likelihood(dist, x, rho, theta, logit.map(|l| l.as_slice()), lib, n, scale, nll, g)
    }
    fn likelihood_score(
        &self,
        dist: Distribution,
        x: &HostRows,
        rows: &[u32],
        batch: &[u32],
        rho: &Vec<F>,
        theta: &Vec<F>,
        logit: Option<(&Vec<F>, &Vec<F>)>,
        lib: &Vec<F>,
        n: usize,
        nll: &mut Vec<F>,
    ) {
        let lg = logit.map(|(a, b)| (a.as_slice(), b.as_slice()));
        let part = if x.counts_only { ops::ScorePart::Counts } else { ops::ScorePart::All };
        // Stored rows addressed through `row_of` are read in place when their count terms are cached.
        let x = if x.count_terms.is_some() { std::borrow::Cow::Borrowed(x) } else { x.materialized() };
        let (ro, ct) = (x.row_of.as_deref(), x.count_terms.as_deref());
        ops::likelihood_score_cached(part, dist, &x.ptr, &x.idx, &x.val, ro, ct, rows, batch, rho, theta, lg, lib, n, nll)
    }
    fn softplus(&self, x: &Vec<F>) -> Vec<F> {
        ops::softplus_all(x)
    }
    fn decode_score(
        &self,
        dist: Distribution,
        x: &HostRows,
        r: &Vec<F>,
        group: &[u8],
        weight: [f64; 2],
        logit: Option<&Vec<F>>,
        batch: &[u32],
        theta: &Vec<F>,
        lib: &Vec<F>,
        n: usize,
        nll: &mut Vec<F>,
    ) {
        let x = x.materialized();
        ops::decode_score(
            dist,
            &x.ptr,
            &x.idx,
            &x.val,
            x.count_terms.as_deref(),
            r,
            group,
            weight,
            logit.map(|l| l.as_slice()),
            batch,
            theta,
            lib,
            n,
            nll,
        )
    }
    fn reparam_fwd(&self, mu: &Vec<F>, ls: &Vec<F>, eps: &Vec<F>, z: &mut Vec<F>) {
        ops::reparam_fwd(mu, ls, eps, z)
    }
    fn reparam_bwd(&self, dz: &Vec<F>, ls: &Vec<F>, eps: &Vec<F>, dmu: &mut Vec<F>, dls: &mut Vec<F>) {
        ops::reparam_bwd(dz, ls, eps, dmu, dls)
    }
    fn kl_normal(&self, mu: &Vec<F>, ls: &Vec<F>, l: usize, kl: &mut Vec<F>, grads: Option<(f64, &mut Vec<F>, &mut Vec<F>)>) {
        ops::kl_normal_fwd_bwd(mu, ls, l, kl, grads.map(|(s, a, b)| (s, a.as_mut_slice(), b.as_mut_slice())))
    }
    fn kl_library(
        &self,
        m: &Vec<F>,
        ls: &Vec<F>,
        pm: &Vec<F>,
        ps: &Vec<F>,
        kl: &mut Vec<F>,
        grads: Option<(f64, &mut Vec<F>, &mut Vec<F>)>,
    ) {
        ops::kl_library_fwd_bwd(m, ls, pm, ps, kl, grads.map(|(s, a, b)| (s, a.as_mut_slice(), b.as_mut_slice())))
    }
    fn exp_add(&self, a: &Vec<F>, c: f64, y: &mut Vec<F>) {
        let c = F::f(c);
        y.iter_mut().zip(a).for_each(|(o, &v)| *o = (v + c).exp());
    }
    fn axpy(&self, alpha: f64, x: &Vec<F>, y: &mut Vec<F>) {
        let a = F::f(alpha);
        y.iter_mut().zip(x).for_each(|(o, &v)| *o = *o + a * v);
    }
    fn mul(&self, x: &Vec<F>, z: &Vec<F>, y: &mut Vec<F>) {
        y.iter_mut().zip(x.iter().zip(z)).for_each(|(o, (&a, &b))| *o = a * b);
    }
    fn gather_rows(&self, src: &Vec<F>, rows: &[u32], n: usize, dst: &mut Vec<F>) {
        use rayon::prelude::*;
        dst.par_chunks_mut(n).zip(rows.par_iter()).for_each(|(d, &r)| d.copy_from_slice(&src[r as usize * n..][..n]));
    }
    fn copy_cols(&self, src: &Vec<F>, cols: usize, c0: usize, w: usize, dst: &mut Vec<F>) {
        for (r, out) in dst.chunks_mut(w).enumerate() {
            out.copy_from_slice(&src[r * cols + c0..][..w]);
        }
    }
    fn set_cols(&self, src: &Vec<F>, cols: usize, c0: usize, w: usize, dst: &mut Vec<F>) {
        for (r, inp) in src.chunks(w).enumerate() {
            dst[r * cols + c0..][..w].copy_from_slice(inp);
        }
    }
    fn adam(&self, cfg: &AdamConfig, t: u64, p: &mut Vec<F>, g: &Vec<F>, m: &mut Vec<F>, v: &mut Vec<F>) {
        ops::adam_step(cfg, t, p, g, m, v);
    }
    fn adam_checked(&self, cfg: &AdamConfig, t: u64, p: &mut Vec<F>, g: &Vec<F>, m: &mut Vec<F>, v: &mut Vec<F>) -> bool {
        ops::adam_step(cfg, t, p, g, m, v)
    }
    fn all_finite(&self, b: &Vec<F>) -> bool {
        use rayon::prelude::*;
        b.par_chunks(1 << 16).all(|c| c.iter().all(|x| x.d().is_finite()))
    }
}

/// A vector of `n` zeros, then `fill(k, chunk)` on its k-th chunk of `chunk` elements: chunks zeroed and
/// filled in parallel (calloc zeroes reused heap memory on the calling thread alone).
fn filled_in_parallel<F: Real>(n: usize, chunk: usize, fill: impl Fn(usize, &mut [F]) + Sync) -> Vec<F> {
    use rayon::prelude::*;
    let mut v: Vec<F> = Vec::with_capacity(n);
    v.spare_capacity_mut()[..n].par_chunks_mut(chunk).enumerate().for_each(|(k, c)| {
        c.fill(std::mem::MaybeUninit::new(F::zero()));
        // SAFETY: every element of `c` was initialised on the line above.
        fill(k, unsafe { &mut *(c as *mut [std::mem::MaybeUninit<F>] as *mut [F]) });
    });
    // SAFETY: every chunk of the first n elements was initialised above.
    unsafe { v.set_len(n) };
    v
}
