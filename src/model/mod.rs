//! The scVI-style conditional VAE of scSpecies (spec §2), written once against the [`Backend`] interface.
//!
//! Block = Linear → LayerNorm → ReLU → Dropout. Modules, with N genes, S batches:
//!
//! - outer encoder: [N+S → 300] on raw counts + batch one-hot (sparse input); its output is `inter`;
//! - inner encoder: [300 → 200] + heads μ_z, logσ_z (10-d), no batch input;
//! - library encoder: [N+S → 200] + heads m (+ `lib_mu_add`), logσ_l;
//! - decoder: [10+S → 200 → 300] + heads ρ-logits (split softmax over homologous / other genes) and
//!   non-dropout logits (ZINB), dispersion θ = exp(log_alpha[batch]).
//!
//! Weights are stored input-major (PyTorch's `weight` transposed) so the sparse input layer reads and
//! writes whole rows; files use PyTorch's layout and names.
//!
//! Here: the parameters, the forward and backward passes side by side, the losses and Adam. Beside:
//! `config` (architecture), `batch` (minibatches and each step's noise), `transplant` (parameters moved
//! between models), `io` (model files).

mod batch;
mod config;
pub mod io;
mod transplant;

pub use batch::{Batch, Noise};
pub use config::ModelConfig;

use crate::engine::likelihood::Distribution;
use crate::engine::{Backend, ops::AdamConfig};
use rand::{Rng, RngExt};
use rand_distr::{Distribution as _, StandardNormal};
use serde::Serialize;

/// A linear layer: indices of its weight [K×N] and bias [N] in the parameter list.
#[derive(Debug, Clone, Copy)]
pub struct Linear {
    pub w: usize,
    pub b: usize,
    pub k: usize,
    pub n: usize,
}

/// Linear → LayerNorm → ReLU → Dropout.
#[derive(Debug, Clone, Copy)]
pub struct Block {
    pub lin: Linear,
    pub gamma: usize,
    pub beta: usize,
}

/// One named parameter: value, gradient and Adam moments on the device.
pub struct Param<B: Backend> {
    /// PyTorch name, e.g. `decoder.model.4.weight`.
    pub name: String,
    /// Shape as PyTorch stores it.
    pub torch_shape: Vec<usize>,
    /// Stored transposed relative to PyTorch (Linear weights).
    pub transposed: bool,
    pub value: B::Buf,
    pub m: B::Buf,
    pub v: B::Buf,
}

pub struct Model<B: Backend> {
    pub cfg: ModelConfig,
    pub params: Vec<Param<B>>,
    pub grads: Vec<B::Buf>,
    pub outer: Vec<Block>,
    pub inner: Vec<Block>,
    pub z_mu: Linear,
    pub z_ls: Linear,
    pub library: Vec<Block>,
    pub l_mu: Linear,
    pub l_ls: Linear,
    pub decoder: Vec<Block>,
    pub rho: Linear,
    pub pi: Option<Linear>,
    pub log_alpha: usize,
    pub group: Vec<u8>,
    pub group_weight: [f64; 2],
    /// Adam step counter.
    pub step: u64,
}

/// What a block keeps from its forward pass for the backward pass.
pub struct BlockCache<B: Backend> {
    pub xhat: B::Buf,
    pub rstd: B::Buf,
    pub relu: B::Buf,
    pub out: B::Buf,
}

/// The forward pass: every activation the backward pass needs, and the loss terms.
pub struct Forward<B: Backend> {
    pub outer: Vec<BlockCache<B>>,
    pub inner: Vec<BlockCache<B>>,
    pub library: Vec<BlockCache<B>>,
    pub decoder: Vec<BlockCache<B>>,
    pub z_mu: B::Buf,
    pub z_ls: B::Buf,
    pub z: B::Buf,
    pub l_mu: B::Buf,
    pub l_ls: B::Buf,
    /// log of the sampled library, then the library itself.
    pub log_lib: B::Buf,
    pub lib: B::Buf,
    pub dec_in: B::Buf,
    pub rho: B::Buf,
    pub theta: B::Buf,
    pub logit: Option<B::Buf>,
    pub nll: B::Buf,
    pub kl_z: B::Buf,
    pub kl_l: B::Buf,
    /// Gradients of the mean NLL w.r.t. ρ, θ, logit and library, when the forward pass was asked for
    /// them (training): the likelihood is then evaluated once per step.
    pub lik_grads: Option<LikGrads<B>>,
}

pub struct LikGrads<B: Backend> {
    pub d_rho: B::Buf,
    pub d_theta: B::Buf,
    pub d_logit: Option<B::Buf>,
    pub d_lib: B::Buf,
}

/// Eval-mode encoder outputs.
pub struct Encoded<B: Backend> {
    pub inter: B::Buf,
    pub z_mu: B::Buf,
    pub z_ls: B::Buf,
    pub l_mu: B::Buf,
    pub l_ls: B::Buf,
}

/// Mean loss terms of a minibatch.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Losses {
    pub nll: f64,
    pub kl_z: f64,
    pub kl_l: f64,
    pub align: f64,
}

impl Losses {
    /// nELBO = NLL + β(KL_z + KL_l) (+ η·Align in target training).
    pub fn total(&self, beta: f64, eta: f64) -> f64 {
        self.nll + beta * (self.kl_z + self.kl_l) + eta * self.align
    }
}

/// Where the alignment term pulls the target cells (spec §5).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum AlignSpace {
    /// The intermediate (outer-encoder) output towards the chosen context cell's eval-mode output,
    /// with the context's inner encoder shared and frozen (the reference's default `'inter'`).
    #[default]
    Inter,
    /// The sampled latent z towards the chosen candidate's sampled latent z̃, with a fresh, trainable
    /// inner encoder (the reference's `'latent'`).
    Latent,
}

/// Alignment targets: rows of the minibatch and their targets ([|S|×300] in the intermediate space,
/// [|S|×latent] in the latent space).
pub struct InterTarget<'a, B: Backend> {
    pub rows: &'a [usize],
    pub targets: &'a [Vec<f64>],
    pub eta: f64,
    pub space: AlignSpace,
    _b: std::marker::PhantomData<B>,
}

impl<'a, B: Backend> InterTarget<'a, B> {
    /// Targets in the intermediate space.
    pub fn new(rows: &'a [usize], targets: &'a [Vec<f64>], eta: f64) -> Self {
        InterTarget { rows, targets, eta, space: AlignSpace::Inter, _b: std::marker::PhantomData }
    }
    /// Targets in the latent space: Align = mean_S ‖z_i − z̃_i‖² on the sampled z.
    pub fn latent(rows: &'a [usize], targets: &'a [Vec<f64>], eta: f64) -> Self {
        InterTarget { rows, targets, eta, space: AlignSpace::Latent, _b: std::marker::PhantomData }
    }
}

/// ∂(η·Align)/∂h for Align = mean_S ‖h_i − c_i‖²: η·2(h − c)/|S| on the aligned rows of h [rows × d].
fn align_grad<B: Backend>(h: &[f64], t: &InterTarget<B>, d: usize, rows: usize) -> Vec<f64> {
    let mut g = vec![0f64; rows * d];
    let c = t.eta * 2.0 / t.rows.len() as f64;
    for (k, &r) in t.rows.iter().enumerate() {
        for j in 0..d {
            g[r * d + j] = c * (h[r * d + j] - t.targets[k][j]);
        }
    }
    g
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 }
}

impl<B: Backend> Model<B> {
    /// A freshly initialised model, like PyTorch's defaults: Linear W, b ~ U(±1/√fan_in), LayerNorm γ = 1,
    /// β = 0, log_alpha ~ 0.1·N(0, 1).
    pub fn new(be: &B, cfg: ModelConfig, rng: &mut impl Rng) -> Self {
        let mut params: Vec<Param<B>> = Vec::new();
        let mut push = |name: String, shape: Vec<usize>, transposed: bool, values: Vec<f64>| -> usize {
            let n = values.len();
            params.push(Param { name, torch_shape: shape, transposed, value: be.upload(&values), m: be.zeros(n), v: be.zeros(n) });
            params.len() - 1
        };
        let linear =
            |push: &mut dyn FnMut(String, Vec<usize>, bool, Vec<f64>) -> usize, name: &str, k: usize, n: usize, rng: &mut dyn rand::Rng| {
                let bound = 1.0 / (k as f64).sqrt();
                let w: Vec<f64> = (0..k * n).map(|_| rng.random_range(-bound..bound)).collect();
                let b: Vec<f64> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
                let w = push(format!("{name}.weight"), vec![n, k], true, w);
                let b = push(format!("{name}.bias"), vec![n], false, b);
                Linear { w, b, k, n }
            };
        let blocks = |push: &mut dyn FnMut(String, Vec<usize>, bool, Vec<f64>) -> usize,
                      module: &str,
                      dims: &[usize],
                      rng: &mut dyn rand::Rng|
         -> Vec<Block> {
            dims.windows(2)
                .enumerate()
                .map(|(i, w)| {
                    let lin = linear(push, &format!("{module}.model.{}", 4 * i), w[0], w[1], rng);
                    let gamma = push(format!("{module}.model.{}.weight", 4 * i + 1), vec![w[1]], false, vec![1.0; w[1]]);
                    let beta = push(format!("{module}.model.{}.bias", 4 * i + 1), vec![w[1]], false, vec![0.0; w[1]]);
                    Block { lin, gamma, beta }
                })
                .collect()
        };
        let (n, s, l) = (cfg.n_genes, cfg.n_batches, cfg.latent);
        let dims = |first: usize, rest: &[usize]| -> Vec<usize> { std::iter::once(first).chain(rest.iter().copied()).collect() };
        let outer = blocks(&mut push, "outer", &dims(n + s, &cfg.outer_dims), rng);
        let inner = blocks(&mut push, "inner", &dims(cfg.inter_dim(), &cfg.inner_dims), rng);
        let hi = *cfg.inner_dims.last().unwrap();
        let z_mu = linear(&mut push, "inner.mu", hi, l, rng);
        let z_ls = linear(&mut push, "inner.log_sig", hi, l, rng);
        let library = blocks(&mut push, "library", &dims(n + s, &cfg.library_dims), rng);
        let hl = *cfg.library_dims.last().unwrap();
        let l_mu = linear(&mut push, "library.mu", hl, 1, rng);
        let l_ls = linear(&mut push, "library.log_sig", hl, 1, rng);
        let la: Vec<f64> = (0..s * n)
            .map(|_| {
                let e: f64 = StandardNormal.sample(rng);
                0.1 * e
            })
            .collect();
        let log_alpha = push("decoder.log_alpha".into(), vec![s, n], false, la);
        let decoder = blocks(&mut push, "decoder", &dims(l + s, &cfg.decoder_dims), rng);
        let hd = *cfg.decoder_dims.last().unwrap();
        let rho = linear(&mut push, "decoder.rho_pre", hd, n, rng);
        let pi = (cfg.distribution == Distribution::Zinb).then(|| linear(&mut push, "decoder.pi_nlogit", hd, n, rng));
        let mut group = vec![1u8; n];
        for &g in &cfg.homologous {
            group[g] = 0;
        }
        let nh = cfg.homologous.len() as f64;
        let group_weight = [nh / n as f64, (n as f64 - nh) / n as f64];
        let grads = params.iter().map(|p| be.zeros(be.len(&p.value))).collect();
        Model {
            cfg,
            params,
            grads,
            outer,
            inner,
            z_mu,
            z_ls,
            library,
            l_mu,
            l_ls,
            decoder,
            rho,
            pi,
            log_alpha,
            group,
            group_weight,
            step: 0,
        }
    }

    /// Blocks in the order their dropout masks are drawn.
    pub fn blocks_in_order(&self) -> impl Iterator<Item = &Block> {
        self.outer.iter().chain(&self.inner).chain(&self.library).chain(&self.decoder)
    }

    pub fn n_params(&self, be: &B) -> usize {
        self.params.iter().map(|p| be.len(&p.value)).sum()
    }

    fn val(&self, i: usize) -> &B::Buf {
        &self.params[i].value
    }

    /// One block forward on a dense input [rows×K] (or the sparse minibatch when `sparse` is given).
    /// A head (a linear layer without normalisation or activation): y[rows×n] = x·W + b.
    fn head(&self, be: &B, lin: &Linear, x: &B::Buf, rows: usize) -> B::Buf {
        let mut y = be.zeros(rows * lin.n);
        be.linear_fwd(x, self.val(lin.w), self.val(lin.b), &mut y, rows, lin.k, lin.n);
        y
    }

    fn block_fwd(
        &self,
        be: &B,
        blk: &Block,
        x: Option<&B::Buf>,
        sparse: Option<&B::Sparse>,
        rows: usize,
        mask: Option<&B::Buf>,
    ) -> BlockCache<B> {
        let n = blk.lin.n;
        let mut pre = be.zeros(rows * n);
        match sparse {
            Some(sp) => be.sparse_linear_fwd(sp, self.val(blk.lin.w), self.val(blk.lin.b), &mut pre, n),
            None => be.linear_fwd(x.unwrap(), self.val(blk.lin.w), self.val(blk.lin.b), &mut pre, rows, blk.lin.k, n),
        }
        let mut ln = be.zeros(rows * n);
        let mut xhat = be.zeros(rows * n);
        let mut rstd = be.zeros(rows);
        be.layernorm_fwd(&pre, self.val(blk.gamma), self.val(blk.beta), &mut ln, &mut xhat, &mut rstd, n);
        let mut relu = be.zeros(rows * n);
        let mut out = pre; // reuse the allocation
        be.relu_dropout_fwd(&ln, mask, &mut relu, &mut out);
        BlockCache { xhat, rstd, relu, out }
    }

    /// One block backward: from d(out) to the parameter gradients and, for dense inputs, d(input).
    #[allow(clippy::too_many_arguments)]
    fn block_bwd(
        &mut self,
        be: &B,
        blk: &Block,
        cache: &BlockCache<B>,
        d_out: &B::Buf,
        x: Option<&B::Buf>,
        sparse: Option<&B::Sparse>,
        rows: usize,
        mask: Option<&B::Buf>,
        want_dx: bool,
    ) -> Option<B::Buf> {
        let n = blk.lin.n;
        let mut d_ln = be.zeros(rows * n);
        be.relu_dropout_bwd(d_out, &cache.relu, mask, &mut d_ln);
        let mut d_pre = be.zeros(rows * n);
        let (mut dg, mut db) = (be.zeros(n), be.zeros(n));
        be.layernorm_bwd(&d_ln, &cache.xhat, &cache.rstd, &self.params[blk.gamma].value, &mut d_pre, &mut dg, &mut db, rows, n);
        self.grads[blk.gamma] = dg;
        self.grads[blk.beta] = db;
        let (mut dw, mut dbias) = (self.grad_buffer(be, blk.lin.w), self.grad_buffer(be, blk.lin.b));
        let mut dx = None;
        match sparse {
            Some(sp) => be.sparse_linear_bwd(sp, &d_pre, &mut dw, &mut dbias, n),
            None => {
                let mut d = want_dx.then(|| be.zeros(rows * blk.lin.k));
                be.linear_bwd(x.unwrap(), &self.params[blk.lin.w].value, &d_pre, d.as_mut(), &mut dw, &mut dbias, rows, blk.lin.k, n);
                dx = d;
            }
        }
        self.grads[blk.lin.w] = dw;
        self.grads[blk.lin.b] = dbias;
        dx
    }

    /// Run a stack of blocks; the first one reads the sparse minibatch if `sparse` is given.
    fn stack_fwd(
        &self,
        be: &B,
        blocks: &[Block],
        input: Option<&B::Buf>,
        sparse: Option<&B::Sparse>,
        rows: usize,
        masks: Option<&[B::Buf]>,
    ) -> Vec<BlockCache<B>> {
        let mut caches: Vec<BlockCache<B>> = Vec::with_capacity(blocks.len());
        for (i, blk) in blocks.iter().enumerate() {
            let mask = masks.map(|m| &m[i]);
            let c = if i == 0 {
                self.block_fwd(be, blk, input, sparse, rows, mask)
            } else {
                self.block_fwd(be, blk, Some(&caches[i - 1].out), None, rows, mask)
            };
            caches.push(c);
        }
        caches
    }

    /// Backward through a stack; returns d(input) for a dense first input when `want_dx`.
    #[allow(clippy::too_many_arguments)]
    fn stack_bwd(
        &mut self,
        be: &B,
        blocks: &[Block],
        caches: &[BlockCache<B>],
        mut d: B::Buf,
        input: Option<&B::Buf>,
        sparse: Option<&B::Sparse>,
        rows: usize,
        masks: Option<&[B::Buf]>,
        want_dx: bool,
    ) -> Option<B::Buf> {
        for i in (0..blocks.len()).rev() {
            let mask = masks.map(|m| &m[i]);
            let (x, sp) = if i == 0 { (input, sparse) } else { (Some(&caches[i - 1].out), None) };
            let need = i > 0 || want_dx;
            match self.block_bwd(be, &blocks[i], &caches[i], &d, x, sp, rows, mask, need && sp.is_none()) {
                Some(dx) => d = dx,
                None => return None,
            }
        }
        Some(d)
    }

    /// Mask slices of each module, in `blocks_in_order` order.
    fn module_masks<'a>(&self, masks: Option<&'a [B::Buf]>) -> [Option<&'a [B::Buf]>; 4] {
        let (a, b, c) = (self.outer.len(), self.inner.len(), self.library.len());
        match masks {
            None => [None, None, None, None],
            Some(m) => [Some(&m[..a]), Some(&m[a..a + b]), Some(&m[a + b..a + b + c]), Some(&m[a + b + c..])],
        }
    }

    /// The full forward pass (encoders, sampling, decoder, likelihood, KL terms).
    pub fn forward(&self, be: &B, batch: &Batch<B>, noise: &Noise<B>) -> Forward<B> {
        self.forward_with(be, batch, noise, false)
    }

    /// The forward pass; with `lik_grads` the likelihood's gradients are computed in the same sweep.
    pub fn forward_with(&self, be: &B, batch: &Batch<B>, noise: &Noise<B>, lik_grads: bool) -> Forward<B> {
        let rows = batch.rows;
        let (n, s, l) = (self.cfg.n_genes, self.cfg.n_batches, self.cfg.latent);
        let [mo, mi, ml, md] = self.module_masks(noise.masks.as_deref());
        let outer = self.stack_fwd(be, &self.outer, None, Some(&batch.sparse), rows, mo);
        let inner = self.stack_fwd(be, &self.inner, Some(&outer.last().unwrap().out), None, rows, mi);
        let hi = &inner.last().unwrap().out;
        let lin = |lin: &Linear, x: &B::Buf| self.head(be, lin, x, rows);
        let z_mu = lin(&self.z_mu, hi);
        let z_ls = lin(&self.z_ls, hi);
        let mut z = be.zeros(rows * l);
        be.reparam_fwd(&z_mu, &z_ls, &noise.eps_z, &mut z);
        let library = self.stack_fwd(be, &self.library, None, Some(&batch.sparse), rows, ml);
        let hl = &library.last().unwrap().out;
        let mut l_mu = lin(&self.l_mu, hl);
        be.axpy(self.cfg.lib_mu_add, &be.upload(&vec![1.0; rows]), &mut l_mu);
        let l_ls = lin(&self.l_ls, hl);
        let mut log_lib = be.zeros(rows);
        be.reparam_fwd(&l_mu, &l_ls, &noise.eps_l, &mut log_lib);
        let mut lib = be.zeros(rows);
        be.exp_add(&log_lib, 0.0, &mut lib);
        let mut dec_in = be.zeros(rows * (l + s));
        be.set_cols(&z, l + s, 0, l, &mut dec_in);
        be.set_cols(&batch.onehot, l + s, l, s, &mut dec_in);
        let decoder = self.stack_fwd(be, &self.decoder, Some(&dec_in), None, rows, md);
        let hd = &decoder.last().unwrap().out;
        let r = lin(&self.rho, hd);
        let mut rho = be.zeros(rows * n);
        be.split_softmax_fwd(&r, &self.group, self.group_weight, &mut rho, n);
        let logit = self.pi.as_ref().map(|p| lin(p, hd));
        let mut theta = be.zeros(rows * n);
        be.gather_exp_rows(self.val(self.log_alpha), &batch.batch, &mut theta, n);
        let mut nll = be.zeros(rows);
        let lik_grads = if lik_grads {
            let (mut d_rho, mut d_theta, mut d_lib) = (be.zeros(rows * n), be.zeros(rows * n), be.zeros(rows));
            let mut d_logit = self.pi.map(|_| be.zeros(rows * n));
            let g = Some((&mut d_rho, &mut d_theta, d_logit.as_mut(), &mut d_lib));
            be.likelihood(self.cfg.distribution, &batch.x, &rho, &theta, logit.as_ref(), &lib, n, 1.0 / rows as f64, &mut nll, g);
            Some(LikGrads { d_rho, d_theta, d_logit, d_lib })
        } else {
            be.likelihood(self.cfg.distribution, &batch.x, &rho, &theta, logit.as_ref(), &lib, n, 1.0 / rows as f64, &mut nll, None);
            None
        };
        let mut kl_z = be.zeros(rows);
        be.kl_normal(&z_mu, &z_ls, l, &mut kl_z, None);
        let mut kl_l = be.zeros(rows);
        be.kl_library(&l_mu, &l_ls, &batch.prior_mu, &batch.prior_sig, &mut kl_l, None);
        Forward {
            outer,
            inner,
            library,
            decoder,
            z_mu,
            z_ls,
            z,
            l_mu,
            l_ls,
            log_lib,
            lib,
            dec_in,
            rho,
            theta,
            logit,
            nll,
            kl_z,
            kl_l,
            lik_grads,
        }
    }

    /// Eval-mode encoders only (no dropout, no sampling): intermediate space, z and library heads.
    pub fn encode(&self, be: &B, batch: &Batch<B>) -> Encoded<B> {
        let rows = batch.rows;
        let outer = self.stack_fwd(be, &self.outer, None, Some(&batch.sparse), rows, None);
        let inner = self.stack_fwd(be, &self.inner, Some(&outer.last().unwrap().out), None, rows, None);
        let hi = &inner.last().unwrap().out;
        let lin = |lin: &Linear, x: &B::Buf| self.head(be, lin, x, rows);
        let (z_mu, z_ls) = (lin(&self.z_mu, hi), lin(&self.z_ls, hi));
        let library = self.stack_fwd(be, &self.library, None, Some(&batch.sparse), rows, None);
        let hl = &library.last().unwrap().out;
        let mut l_mu = lin(&self.l_mu, hl);
        be.axpy(self.cfg.lib_mu_add, &be.upload(&vec![1.0; rows]), &mut l_mu);
        let l_ls = lin(&self.l_ls, hl);
        let inter = outer.into_iter().last().unwrap().out;
        Encoded { inter, z_mu, z_ls, l_mu, l_ls }
    }

    /// Decoder outputs for latents `z` [rows×L] with a batch per row: the pre-softmax ρ head [rows×N]
    /// and, for ZINB, the non-dropout logits. `masks` (decoder blocks only) for train mode.
    fn decode_pre(&self, be: &B, z: &B::Buf, batch: &[u32], masks: Option<&[B::Buf]>) -> (B::Buf, Option<B::Buf>) {
        let rows = batch.len();
        let (s, l) = (self.cfg.n_batches, self.cfg.latent);
        let mut onehot = vec![0f64; rows * s];
        for (i, &b) in batch.iter().enumerate() {
            onehot[i * s + b as usize] = 1.0;
        }
        let mut dec_in = be.zeros(rows * (l + s));
        be.set_cols(z, l + s, 0, l, &mut dec_in);
        be.set_cols(&be.upload(&onehot), l + s, l, s, &mut dec_in);
        let decoder = self.stack_fwd(be, &self.decoder, Some(&dec_in), None, rows, masks);
        let hd = &decoder.last().unwrap().out;
        let lin = |lin: &Linear| self.head(be, lin, hd, rows);
        (lin(&self.rho), self.pi.as_ref().map(lin))
    }

    /// [`Self::decode_pre`] with the split softmax applied: ρ [rows×N] and the logits.
    fn decode_rows(&self, be: &B, z: &B::Buf, batch: &[u32], masks: Option<&[B::Buf]>) -> (B::Buf, Option<B::Buf>) {
        let (r, logit) = self.decode_pre(be, z, batch, masks);
        let mut rho = be.zeros(batch.len() * self.cfg.n_genes);
        be.split_softmax_fwd(&r, &self.group, self.group_weight, &mut rho, self.cfg.n_genes);
        (rho, logit)
    }

    /// Decode latents and score counts: the per-row NLL of the count rows `x` under the decoder at
    /// `z` [rows×L] with the given batches and library sizes, with the fast scoring kernel (ranking).
    /// `masks` (decoder blocks only) for train mode.
    pub fn decode_nll(
        &self,
        be: &B,
        z: &B::Buf,
        batch: &[u32],
        lib: &B::Buf,
        x: &crate::engine::backend::HostRows,
        masks: Option<&[B::Buf]>,
    ) -> B::Buf {
        let (r, logit) = self.decode_pre(be, z, batch, masks);
        let theta = self.theta_table(be);
        let mut nll = be.zeros(batch.len());
        let (group, weight) = (&self.group, self.group_weight);
        be.decode_score(self.cfg.distribution, x, &r, group, weight, logit.as_ref(), batch, &theta, lib, self.cfg.n_genes, &mut nll);
        nll
    }

    /// Eval-mode decoder outputs for latents `z` [rows×L] with one batch for all rows: ρ [rows×N] and
    /// the non-dropout logits (ZINB).
    pub fn decode(&self, be: &B, z: &B::Buf, batch: u32, rows: usize) -> (B::Buf, Option<B::Buf>) {
        self.decode_rows(be, z, &vec![batch; rows], None)
    }

    /// θ for every batch [S×N] = exp(log_alpha).
    pub fn theta_table(&self, be: &B) -> B::Buf {
        let s = self.cfg.n_batches as u32;
        self.theta_rows(be, &(0..s).collect::<Vec<_>>())
    }

    /// θ rows [rows×N] for the given batches.
    pub fn theta_rows(&self, be: &B, batch: &[u32]) -> B::Buf {
        let n = self.cfg.n_genes;
        let mut theta = be.zeros(batch.len() * n);
        be.gather_exp_rows(self.val(self.log_alpha), batch, &mut theta, n);
        theta
    }

    /// Fresh dropout masks for the decoder blocks only, `rows` rows.
    pub fn decoder_masks(&self, be: &B, rows: usize, rng: &mut impl Rng) -> Vec<B::Buf> {
        self.decoder.iter().map(|b| batch::dropout_mask(be, rows * b.lin.n, self.cfg.dropout, rng)).collect()
    }

    /// Mean loss terms of a forward pass (and the alignment term if targets are given).
    pub fn losses(&self, be: &B, f: &Forward<B>, align: Option<&InterTarget<B>>) -> Losses {
        let a = align.map(|t| self.align_value(be, f, t)).unwrap_or(0.0);
        Losses { nll: mean(&be.download(&f.nll)), kl_z: mean(&be.download(&f.kl_z)), kl_l: mean(&be.download(&f.kl_l)), align: a }
    }

    fn align_value(&self, be: &B, f: &Forward<B>, t: &InterTarget<B>) -> f64 {
        if t.rows.is_empty() {
            return 0.0;
        }
        let (h, d) = match t.space {
            AlignSpace::Inter => (be.download(&f.outer.last().unwrap().out), self.cfg.inter_dim()),
            AlignSpace::Latent => (be.download(&f.z), self.cfg.latent),
        };
        let mut s = 0.0;
        for (k, &r) in t.rows.iter().enumerate() {
            for j in 0..d {
                s += (h[r * d + j] - t.targets[k][j]).powi(2);
            }
        }
        s / t.rows.len() as f64
    }

    /// Gradients of L = mean nll + β(mean KL_z + mean KL_l) [+ η·Align] w.r.t. every parameter, into
    /// `self.grads`. The likelihood is re-evaluated here with its gradients.
    pub fn backward(&mut self, be: &B, batch: &Batch<B>, noise: &Noise<B>, f: &Forward<B>, beta: f64, align: Option<&InterTarget<B>>) {
        assert!(self.has_training_state(be), "backward pass on a model whose training state was released");
        let rows = batch.rows;
        let (n, s, l) = (self.cfg.n_genes, self.cfg.n_batches, self.cfg.latent);
        let scale = 1.0 / rows as f64;
        let [mo, mi, ml, md] = self.module_masks(noise.masks.as_deref());

        // likelihood → dρ, dθ, ds, dl (from the forward pass when it computed them)
        let computed;
        let (mut d_rho, d_theta, d_logit, d_lib) = match &f.lik_grads {
            Some(g) => (be.copy(&g.d_rho), &g.d_theta, g.d_logit.as_ref(), &g.d_lib),
            None => {
                let mut nll = be.zeros(rows);
                let (mut d_rho, mut d_theta, mut d_lib) = (be.zeros(rows * n), be.zeros(rows * n), be.zeros(rows));
                let mut d_logit = self.pi.map(|_| be.zeros(rows * n));
                let g = Some((&mut d_rho, &mut d_theta, d_logit.as_mut(), &mut d_lib));
                be.likelihood(self.cfg.distribution, &batch.x, &f.rho, &f.theta, f.logit.as_ref(), &f.lib, n, scale, &mut nll, g);
                computed = (d_theta, d_logit, d_lib);
                (d_rho, &computed.0, computed.1.as_ref(), &computed.2)
            }
        };
        let mut dla = be.zeros(s * n);
        be.scatter_theta_grad(d_theta, &f.theta, &batch.batch, &mut dla, n);
        self.grads[self.log_alpha] = dla;
        be.split_softmax_bwd(&f.rho, &self.group, self.group_weight, &mut d_rho, n);

        // decoder heads → d hd
        let hd = &f.decoder.last().unwrap().out;
        let hdim = self.rho.k;
        let mut d_hd = be.zeros(rows * hdim);
        let (mut dw, mut db) = (self.grad_buffer(be, self.rho.w), self.grad_buffer(be, self.rho.b));
        be.linear_bwd(hd, self.val(self.rho.w), &d_rho, Some(&mut d_hd), &mut dw, &mut db, rows, hdim, n);
        self.grads[self.rho.w] = dw;
        self.grads[self.rho.b] = db;
        if let (Some(pi), Some(dl)) = (self.pi, d_logit.as_ref()) {
            let mut d2 = be.zeros(rows * hdim);
            let (mut dw, mut db) = (self.grad_buffer(be, pi.w), self.grad_buffer(be, pi.b));
            be.linear_bwd(hd, self.val(pi.w), dl, Some(&mut d2), &mut dw, &mut db, rows, hdim, n);
            self.grads[pi.w] = dw;
            self.grads[pi.b] = db;
            be.axpy(1.0, &d2, &mut d_hd);
        }
        let dec = self.decoder.clone();
        let d_in = self.stack_bwd(be, &dec, &f.decoder, d_hd, Some(&f.dec_in), None, rows, md, true).unwrap();
        let mut dz = be.zeros(rows * l);
        be.copy_cols(&d_in, l + s, 0, l, &mut dz);
        // latent alignment: Align = mean_S ‖z − z̃‖² → dz += η·2(z − z̃)/|S| on the aligned rows
        if let Some(t) = align.filter(|t| t.space == AlignSpace::Latent && !t.rows.is_empty()) {
            be.axpy(1.0, &be.upload(&align_grad(&be.download(&f.z), t, l, rows)), &mut dz);
        }

        // z = μ + σε and KL_z → dμ, dls
        let mut kl = be.zeros(rows);
        let (mut d_mu, mut d_ls) = (be.zeros(rows * l), be.zeros(rows * l));
        be.kl_normal(&f.z_mu, &f.z_ls, l, &mut kl, Some((beta * scale, &mut d_mu, &mut d_ls)));
        be.reparam_bwd(&dz, &f.z_ls, &noise.eps_z, &mut d_mu, &mut d_ls);
        let hi = &f.inner.last().unwrap().out;
        let hidim = self.z_mu.k;
        let mut d_hi = be.zeros(rows * hidim);
        let mut tmp = be.zeros(rows * hidim);
        for (lin, d) in [(self.z_mu, &d_mu), (self.z_ls, &d_ls)] {
            let (mut dw, mut db) = (be.zeros(hidim * l), be.zeros(l));
            be.linear_bwd(hi, self.val(lin.w), d, Some(&mut tmp), &mut dw, &mut db, rows, hidim, l);
            self.grads[lin.w] = dw;
            self.grads[lin.b] = db;
            be.axpy(1.0, &tmp, &mut d_hi);
        }
        let inner = self.inner.clone();
        let inter = &f.outer.last().unwrap().out;
        let mut d_inter = self.stack_bwd(be, &inner, &f.inner, d_hi, Some(inter), None, rows, mi, true).unwrap();

        // alignment of the intermediate space: η·2(h − c)/|S| on the aligned rows
        if let Some(t) = align.filter(|t| t.space == AlignSpace::Inter && !t.rows.is_empty()) {
            be.axpy(1.0, &be.upload(&align_grad(&be.download(inter), t, self.cfg.inter_dim(), rows)), &mut d_inter);
        }
        let outer = self.outer.clone();
        self.stack_bwd(be, &outer, &f.outer, d_inter, None, Some(&batch.sparse), rows, mo, false);

        // library: l = exp(m + σ_l ε) → d log l = dl·l; KL_l
        let mut d_log_lib = be.zeros(rows);
        be.mul(d_lib, &f.lib, &mut d_log_lib);
        let (mut d_m, mut d_lls) = (be.zeros(rows), be.zeros(rows));
        let mut kll = be.zeros(rows);
        be.kl_library(&f.l_mu, &f.l_ls, &batch.prior_mu, &batch.prior_sig, &mut kll, Some((beta * scale, &mut d_m, &mut d_lls)));
        be.reparam_bwd(&d_log_lib, &f.l_ls, &noise.eps_l, &mut d_m, &mut d_lls);
        let hl = &f.library.last().unwrap().out;
        let hldim = self.l_mu.k;
        let mut d_hl = be.zeros(rows * hldim);
        for (lin, d) in [(self.l_mu, &d_m), (self.l_ls, &d_lls)] {
            let (mut dw, mut db) = (be.zeros(hldim), be.zeros(1));
            let mut t = be.zeros(rows * hldim);
            be.linear_bwd(hl, self.val(lin.w), d, Some(&mut t), &mut dw, &mut db, rows, hldim, 1);
            self.grads[lin.w] = dw;
            self.grads[lin.b] = db;
            be.axpy(1.0, &t, &mut d_hl);
        }
        let lib_blocks = self.library.clone();
        self.stack_bwd(be, &lib_blocks, &f.library, d_hl, None, Some(&batch.sparse), rows, ml, false);
    }

    /// Adam on the parameters selected by `trainable` (all others keep their values and moments).
    pub fn adam_step(&mut self, be: &B, cfg: &AdamConfig, trainable: impl Fn(&str) -> bool) {
        self.adam_step_checked(be, cfg, trainable);
    }

    /// Free the gradients and Adam moments once training is over: three quarters of a model's memory
    /// (0.2 GB for the Baron context model). The weights stay; training the model again panics.
    pub fn release_training_state(&mut self, be: &B) {
        for p in &mut self.params {
            (p.m, p.v) = (be.zeros(0), be.zeros(0));
        }
        for g in &mut self.grads {
            *g = be.zeros(0);
        }
    }

    /// Parameter `p`'s gradient buffer from the previous step, for an op that writes every element
    /// (`linear_bwd`, `sparse_linear_bwd`): reusing it skips zeroing a fresh one, ~20 MB per decoder
    /// head and input layer each step. Its contents are stale until the op has run.
    fn grad_buffer(&mut self, be: &B, p: usize) -> B::Buf {
        let old = std::mem::replace(&mut self.grads[p], be.zeros(0));
        if be.len(&old) == be.len(&self.params[p].value) { old } else { be.zeros(be.len(&self.params[p].value)) }
    }

    /// Whether the gradients and Adam moments are there ([`Self::release_training_state`]).
    pub fn has_training_state(&self, be: &B) -> bool {
        self.params.iter().zip(&self.grads).all(|(p, g)| be.len(g) == be.len(&p.value) && be.len(&p.m) == be.len(&p.value))
    }

    /// [`Self::adam_step`], returning the first trainable parameter whose gradient was not finite. Every
    /// parameter is updated either way, so after a `Some` the weights are spoilt: training stops or
    /// rolls back to a checkpoint.
    pub fn adam_step_checked(&mut self, be: &B, cfg: &AdamConfig, trainable: impl Fn(&str) -> bool) -> Option<String> {
        assert!(self.has_training_state(be), "Adam step on a model whose training state was released");
        self.step += 1;
        let mut first_bad = None;
        for (p, g) in self.params.iter_mut().zip(&self.grads) {
            if trainable(&p.name) && !be.adam_checked(cfg, self.step, &mut p.value, g, &mut p.m, &mut p.v) && first_bad.is_none() {
                first_bad = Some(p.name.clone());
            }
        }
        first_bad
    }

    /// Index of a parameter by its PyTorch name.
    pub fn param_index(&self, name: &str) -> Option<usize> {
        self.params.iter().position(|p| p.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn n_params_matches_the_built_model() {
        let be = crate::engine::Cpu::<f32>::new();
        for dist in [Distribution::Zinb, Distribution::Nb] {
            let mut cfg = ModelConfig::scspecies(17, 3, vec![1, 4], 0.5);
            cfg.distribution = dist;
            cfg.decoder_dims = vec![5, 7];
            let mut rng = crate::train::stream(1, 0, 0, 0);
            let m = Model::new(&be, cfg.clone(), &mut rng);
            assert_eq!(m.n_params(&be) as u64, cfg.n_params());
        }
    }
}
