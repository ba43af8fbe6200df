//! What one step feeds the model: a minibatch on the device ([`Batch`]) and the step's randomness
//! ([`Noise`]: dropout masks and reparameterisation noise, drawn on the host in a fixed order).

use super::Model;
use crate::engine::Backend;
use rand::{Rng, RngExt};
use rand_distr::{Distribution as _, StandardNormal};

/// A minibatch on the device.
pub struct Batch<B: Backend> {
    pub rows: usize,
    /// Raw counts plus one-hot batch columns (N+S), for the input layers.
    pub sparse: B::Sparse,
    /// Dense counts [rows×N] for the likelihood.
    pub x: B::Buf,
    /// One-hot batch [rows×S].
    pub onehot: B::Buf,
    pub batch: Vec<u32>,
    /// Library prior mean and std per cell.
    pub prior_mu: B::Buf,
    pub prior_sig: B::Buf,
}

impl<B: Backend> Batch<B> {
    /// Build from host data: CSR rows of counts (indptr, genes, values), batch index per cell, priors.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        be: &B,
        n_genes: usize,
        n_batches: usize,
        indptr: &[usize],
        genes: &[u32],
        values: &[f32],
        batch: Vec<u32>,
        prior_mu: &[f64],
        prior_sig: &[f64],
    ) -> Self {
        let rows = batch.len();
        let mut ip = Vec::with_capacity(rows + 1);
        let mut idx = Vec::with_capacity(genes.len() + rows);
        let mut val = Vec::with_capacity(genes.len() + rows);
        let mut onehot = vec![0f32; rows * n_batches];
        ip.push(0);
        for r in 0..rows {
            for p in indptr[r]..indptr[r + 1] {
                idx.push(genes[p]);
                val.push(values[p]);
            }
            idx.push((n_genes + batch[r] as usize) as u32);
            val.push(1.0);
            onehot[r * n_batches + batch[r] as usize] = 1.0;
            ip.push(idx.len());
        }
        Batch {
            rows,
            sparse: be.upload_sparse(rows, n_genes + n_batches, ip, idx, val),
            x: be.upload_dense(n_genes, indptr, genes, values),
            onehot: be.upload_f32(&onehot),
            batch,
            prior_mu: be.upload(prior_mu),
            prior_sig: be.upload(prior_sig),
        }
    }
}

/// The randomness of one step: dropout masks (None in eval mode) and the reparameterisation noise.
pub struct Noise<B: Backend> {
    /// One mask per block in the order outer, inner, library, decoder; values 0 or 1/(1−p).
    pub masks: Option<Vec<B::Buf>>,
    pub eps_z: B::Buf,
    pub eps_l: B::Buf,
}

impl<B: Backend> Noise<B> {
    /// Draw masks (train mode) and noise from `rng` in a fixed order.
    pub fn sample(be: &B, model: &Model<B>, rows: usize, train: bool, rng: &mut impl Rng) -> Self {
        Self::sample_modes(be, model, rows, train, train, rng)
    }

    /// Like [`Noise::sample`], with the inner encoder's mode chosen separately: target fine-tuning runs
    /// the frozen, shared inner encoder in eval mode (all-ones masks) by default.
    pub fn sample_modes(be: &B, model: &Model<B>, rows: usize, train: bool, inner_train: bool, rng: &mut impl Rng) -> Self {
        let masks = train.then(|| {
            let n_outer = model.outer.len();
            let n_inner = model.inner.len();
            model
                .blocks_in_order()
                .enumerate()
                .map(|(i, b)| {
                    let is_inner = i >= n_outer && i < n_outer + n_inner;
                    if is_inner && !inner_train {
                        be.upload(&vec![1.0; rows * b.lin.n])
                    } else {
                        dropout_mask(be, rows * b.lin.n, model.cfg.dropout, rng)
                    }
                })
                .collect()
        });
        let mut normal = |n: usize| -> Vec<f64> { (0..n).map(|_| StandardNormal.sample(rng)).collect() };
        let eps_z = be.upload(&normal(rows * model.cfg.latent));
        let eps_l = be.upload(&normal(rows));
        Noise { masks, eps_z, eps_l }
    }

    /// Eval mode with zero noise: the posterior means (used for representations).
    pub fn eval_means(be: &B, model: &Model<B>, rows: usize) -> Self {
        Noise { masks: None, eps_z: be.zeros(rows * model.cfg.latent), eps_l: be.zeros(rows) }
    }
}

/// An inverted-dropout mask of `n` values: each kept with probability 1 − `dropout` (one uniform draw
/// per value, in order) and scaled by 1/(1 − dropout), else 0.
pub(super) fn dropout_mask<B: Backend>(be: &B, n: usize, dropout: f64, rng: &mut impl Rng) -> B::Buf {
    let keep = 1.0 - dropout;
    let scale = 1.0 / keep;
    be.upload(&(0..n).map(|_| if rng.random::<f64>() < keep { scale } else { 0.0 }).collect::<Vec<f64>>())
}
