//! Training (spec §6): minibatches of 128, floor(n/128) steps per epoch over a fresh permutation,
//! β raised per epoch (f64), Adam on every parameter every step; and eval-mode representations.
//!
//! Randomness: every (epoch, purpose, step) gets its own ChaCha8 stream derived from the seed, and all
//! noise is drawn on the host in a fixed order, so a CPU run is bit-for-bit reproducible for a seed and
//! thread count (the kernels themselves are order-deterministic).

use crate::data::Csr;
use crate::engine::Backend;
use crate::engine::ops::AdamConfig;
use crate::error::{Error, Result};
use crate::model::{Batch, Losses, Model, Noise};
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub mod checkpoint;
pub use checkpoint::{Checkpointing, Guard, OnNan};

/// splitmix64: decorrelates the derived seeds.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The RNG stream for one (purpose, epoch, step) of a run.
pub fn stream(seed: u64, purpose: u64, epoch: u64, step: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix(mix(mix(seed) ^ purpose) ^ epoch.wrapping_mul(0x1000_0001)) ^ step)
}

pub const STREAM_PERMUTATION: u64 = 1;
pub const STREAM_STEP: u64 = 2;

/// A per-epoch linear schedule: the start value in epoch 0, +Δ after each epoch, capped (f64).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Schedule {
    pub start: f64,
    pub max: f64,
    pub epochs_raise: usize,
}

impl Schedule {
    /// The value during `epoch` (0-based), accumulated in f64 as the reference does.
    pub fn at(&self, epoch: usize) -> f64 {
        let delta = if self.epochs_raise == 0 { self.max - self.start } else { (self.max - self.start) / self.epochs_raise as f64 };
        let mut v = self.start;
        for _ in 0..epoch {
            v = (v + delta).min(self.max);
        }
        v
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub beta: Schedule,
    pub adam: AdamConfig,
    pub seed: u64,
}

impl TrainConfig {
    /// The paper's defaults: 60 epochs below 10,000 cells, else 30; β 0.1 → 1 over 10 epochs.
    pub fn default_for(n_cells: usize, seed: u64) -> Self {
        TrainConfig {
            epochs: if n_cells < 10_000 { 60 } else { 30 },
            batch_size: 128,
            beta: Schedule { start: 0.1, max: 1.0, epochs_raise: 10 },
            adam: AdamConfig::default(),
            seed,
        }
    }
}

/// The cells a model trains on.
pub struct TrainData<'a> {
    pub counts: &'a Csr,
    pub batch: &'a [u32],
    /// The library prior per cell: log-mean and log-std of its batch's library sizes.
    pub prior_mu: std::borrow::Cow<'a, [f64]>,
    pub prior_sig: std::borrow::Cow<'a, [f64]>,
    pub n_batches: usize,
}

impl<'a> TrainData<'a> {
    /// The training view of one species' prepared data: its counts, batches and library prior (the
    /// reference's f32 obs columns, widened).
    pub fn of(p: &'a crate::preprocess::Prepared) -> Self {
        let widen = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
        TrainData {
            counts: &p.data.counts,
            batch: &p.batch,
            prior_mu: widen(&p.library_log_mean).into(),
            prior_sig: widen(&p.library_log_std).into(),
            n_batches: p.n_batches(),
        }
    }

    /// A view of given parts (tests, simulated inputs).
    pub fn new(counts: &'a Csr, batch: &'a [u32], prior_mu: &'a [f64], prior_sig: &'a [f64], n_batches: usize) -> Self {
        TrainData { counts, batch, prior_mu: prior_mu.into(), prior_sig: prior_sig.into(), n_batches }
    }
}

impl TrainData<'_> {
    pub fn n_cells(&self) -> usize {
        self.counts.n_rows
    }

    /// Upload the given cells as a minibatch.
    pub fn batch<B: Backend>(&self, be: &B, rows: &[usize]) -> Batch<B> {
        let mut indptr = Vec::with_capacity(rows.len() + 1);
        let mut genes = Vec::new();
        let mut vals = Vec::new();
        indptr.push(0);
        for &r in rows {
            let (i, v) = self.counts.row(r);
            genes.extend_from_slice(i);
            vals.extend_from_slice(v);
            indptr.push(genes.len());
        }
        let batch: Vec<u32> = rows.iter().map(|&r| self.batch[r]).collect();
        let pm: Vec<f64> = rows.iter().map(|&r| self.prior_mu[r]).collect();
        let ps: Vec<f64> = rows.iter().map(|&r| self.prior_sig[r]).collect();
        Batch::new(be, self.counts.n_cols, self.n_batches, &indptr, &genes, &vals, batch, &pm, &ps)
    }
}

/// Per-epoch means, as the reference's progress bar reports them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochStats {
    pub epoch: usize,
    pub beta: f64,
    pub nelbo: f64,
    pub nll: f64,
    pub kl_z: f64,
    pub kl_l: f64,
    pub ms_per_step: f64,
}

/// What the progress callback sees after each step.
pub struct Progress<'a> {
    pub epoch: usize,
    pub epochs: usize,
    pub step: usize,
    pub steps: usize,
    pub ms_per_step: f64,
    /// Running means over the last 100 steps: nELBO, NLL, β·KL_z, β·KL_l.
    pub running: [f64; 4],
    pub finished_epoch: Option<&'a EpochStats>,
}

/// A fresh permutation of 0..n for an epoch (Fisher–Yates).
pub fn permutation(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    use rand::RngExt;
    let mut rng = stream(seed, STREAM_PERMUTATION, epoch as u64, 0);
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.random_range(0..=i);
        p.swap(i, j);
    }
    p
}

impl EpochStats {
    /// Epoch means from per-step sums of (nELBO, NLL, KL_z, KL_l).
    pub fn from_sums(epoch: usize, beta: f64, sums: &[f64], steps: usize, ms_per_step: f64) -> Self {
        let st = steps as f64;
        EpochStats { epoch: epoch + 1, beta, nelbo: sums[0] / st, nll: sums[1] / st, kl_z: sums[2] / st, kl_l: sums[3] / st, ms_per_step }
    }
}

/// Which loss term is not finite, if any.
pub fn non_finite(l: &Losses) -> Option<&'static str> {
    [("NLL", l.nll), ("KL_z", l.kl_z), ("KL_l", l.kl_l), ("alignment", l.align)].into_iter().find(|(_, v)| !v.is_finite()).map(|(k, _)| k)
}

/// Where a training step went non-finite.
#[derive(Debug, Clone)]
pub struct Divergence {
    /// 0-based epoch and step.
    pub epoch: usize,
    pub step: usize,
    pub steps: usize,
    /// "the NLL term", "the gradient of decoder.rho.weight", ...
    pub what: String,
}

/// A failed device call since the backend was created, as an error naming where it surfaced.
pub fn device_ok<B: Backend>(be: &B, during: &str) -> Result<()> {
    match be.device_error() {
        Some(e) => Err(Error::Device(format!("{e} (during {during}; later device work was skipped)"))),
        None => Ok(()),
    }
}

/// The Adam update of one step, guarded: the loss terms must be finite (else no update), then the
/// gradients of the trainable parameters, which the update itself checks (after a non-finite one the
/// weights are spoilt; the caller stops or rolls back to a checkpoint).
pub fn checked_update<B: Backend>(
    be: &B,
    model: &mut Model<B>,
    l: &Losses,
    adam: &AdamConfig,
    trainable: &dyn Fn(&str) -> bool,
    at: (usize, usize, usize),
) -> std::result::Result<(), Divergence> {
    let what = match non_finite(l) {
        Some(term) => Some(format!("the {term} term")),
        None => model.adam_step_checked(be, adam, trainable).map(|name| format!("the gradient of {name}")),
    };
    match what {
        Some(what) => Err(Divergence { epoch: at.0, step: at.1, steps: at.2, what }),
        None => Ok(()),
    }
}

/// One epoch of training: (model, epoch, Adam settings in force) → the epoch's statistics.
pub type EpochFn<'a, B, H> = dyn FnMut(&mut Model<B>, usize, &AdamConfig) -> std::result::Result<H, Divergence> + 'a;

/// Run `epochs` epochs of `one_epoch` under a [`Guard`]: resume from a checkpoint, write one after each
/// epoch, and stop or roll back when an epoch diverges. `one_epoch` gets the epoch and the Adam settings
/// in force (the learning rate falls after a rollback).
#[allow(clippy::too_many_arguments)]
pub fn drive_epochs<B: Backend, H: Serialize + serde::de::DeserializeOwned>(
    be: &B,
    model: &mut Model<B>,
    phase: &str,
    epochs: usize,
    adam: &AdamConfig,
    guard: &Guard,
    log: &mut dyn FnMut(&str),
    one_epoch: &mut EpochFn<'_, B, H>,
) -> Result<Vec<H>> {
    use checkpoint::{CHECKPOINT_FORMAT, CHECKPOINT_VERSION, State};
    let mut adam = *adam;
    let mut history: Vec<H> = Vec::with_capacity(epochs);
    let mut rollbacks = 0usize;
    let ck = guard.checkpoint.as_ref();
    let mut last_good: Option<(PathBuf, usize)> = None;
    let restore = |model: &mut Model<B>, path: &Path| -> Result<(State, Vec<H>)> {
        let st = checkpoint::load(be, model, path)?;
        if st.phase != phase {
            return Err(Error::format(path, format!("this is a checkpoint of the {} phase, not of the {phase} phase", st.phase)));
        }
        let fp = &ck.expect("restore needs checkpointing").fingerprint;
        if &st.fingerprint != fp {
            return Err(Error::format(
                path,
                format!(
                    "this checkpoint belongs to a run with other settings or data (differing: {}); start afresh without --resume, or resume with the original inputs and options",
                    checkpoint::differing_keys(&st.fingerprint, fp).join(", ")
                ),
            ));
        }
        let h: Vec<H> =
            serde_json::from_value(st.history.clone()).map_err(|e| Error::format(path, format!("checkpoint history unreadable: {e}")))?;
        if h.len() != st.epochs_done || st.epochs_done > epochs {
            return Err(Error::format(path, format!("checkpoint after epoch {} of a {epochs}-epoch run is inconsistent", st.epochs_done)));
        }
        Ok((st, h))
    };
    if let Some(r) = ck.and_then(|c| c.resume_from.as_ref()).filter(|r| !r.is_file()) {
        log(&format!("{phase}: no checkpoint at {}, training from the start", r.display()));
    }
    if let Some(c) = ck
        && let Some(r) = c.resume_from.as_ref().filter(|r| r.is_file())
    {
        let (st, h) = restore(model, r)?;
        log(&format!("{phase}: resuming from {} after epoch {} of {epochs}", r.display(), st.epochs_done));
        adam.lr = st.lr;
        rollbacks = st.rollbacks;
        history = h;
        last_good = Some((r.clone(), st.epochs_done));
    }
    let save = |model: &Model<B>, history: &Vec<H>, adam: &AdamConfig, rollbacks: usize| -> Result<Option<(PathBuf, usize)>> {
        let Some(c) = ck else { return Ok(None) };
        let st = State {
            format: CHECKPOINT_FORMAT.into(),
            version: CHECKPOINT_VERSION,
            phase: phase.into(),
            fingerprint: c.fingerprint.clone(),
            epochs_done: history.len(),
            adam_step: model.step,
            lr: adam.lr,
            rollbacks,
            history: serde_json::to_value(history).map_err(|e| Error::write(&c.path, std::io::Error::other(e)))?,
        };
        checkpoint::save(be, model, &st, &c.path)?;
        Ok(Some((c.path.clone(), history.len())))
    };
    // A rollback needs a state to go back to, even in the first epoch.
    if matches!(guard.on_nan, OnNan::Rollback { .. }) && last_good.is_none() {
        last_good = save(model, &history, &adam, rollbacks)?;
    }
    let mut last_save = std::time::Instant::now();
    while history.len() < epochs {
        let epoch = history.len();
        let outcome = one_epoch(model, epoch, &adam);
        device_ok(be, &format!("{phase} training, epoch {}", epoch + 1))?;
        match outcome {
            Ok(h) => {
                history.push(h);
                if let Some(c) = ck
                    && c.due(history.len(), epochs, last_save.elapsed().as_secs_f64())
                {
                    last_good = save(model, &history, &adam, rollbacks)?;
                    last_save = std::time::Instant::now();
                }
            }
            Err(d) => {
                // An interrupted epoch stops the same way as a diverged one; it is reported as what it is.
                crate::interrupt::check()?;
                let at = format!("{} is not finite at epoch {} step {} (of {})", d.what, d.epoch + 1, d.step + 1, d.steps);
                let last = match &last_good {
                    Some((p, e)) => format!("the last good checkpoint is {} (after epoch {e})", p.display()),
                    None => "no checkpoint was written".to_string(),
                };
                match (guard.on_nan, &last_good) {
                    (OnNan::Rollback { lr_factor, max_retries }, Some((p, _))) if rollbacks < max_retries => {
                        let (st, h) = restore(model, p)?;
                        rollbacks += 1;
                        adam.lr *= lr_factor;
                        history = h;
                        log(&format!(
                            "{phase} training: {at}; rolled back to {} (after epoch {}), learning rate now {:e} (rollback {rollbacks} of {max_retries})",
                            p.display(),
                            st.epochs_done,
                            adam.lr
                        ));
                    }
                    (OnNan::Rollback { max_retries, .. }, _) => {
                        return Err(Error::Input(format!(
                            "{phase} training diverged: {at}; gave up after {rollbacks} of {max_retries} rollbacks; {last}. Check the input counts or lower the learning rate"
                        )));
                    }
                    (OnNan::Stop, _) => {
                        return Err(Error::Input(format!(
                            "{phase} training diverged: {at}; {last}. Try --on-nan rollback, another --seed, or check the input counts"
                        )));
                    }
                }
            }
        }
    }
    Ok(history)
}

/// Train every parameter of a context model (spec §6.2).
pub fn train_context<B: Backend>(
    be: &B,
    model: &mut Model<B>,
    data: &TrainData,
    cfg: &TrainConfig,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Vec<EpochStats>> {
    train_context_guarded(be, model, data, cfg, &Guard::default(), progress, &mut |_| {})
}

/// [`train_context`] with checkpoints, resume and a divergence policy.
pub fn train_context_guarded<B: Backend>(
    be: &B,
    model: &mut Model<B>,
    data: &TrainData,
    cfg: &TrainConfig,
    guard: &Guard,
    progress: &mut dyn FnMut(&Progress),
    log: &mut dyn FnMut(&str),
) -> Result<Vec<EpochStats>> {
    let n = data.n_cells();
    if n == 0 {
        return Err(Error::Input("no cells to train on".into()));
    }
    let bs = cfg.batch_size.min(n);
    let steps = (n / bs).max(1);
    let mut window: std::collections::VecDeque<[f64; 4]> = std::collections::VecDeque::with_capacity(100);
    let all = |_: &str| true;
    let mut one_epoch = |model: &mut Model<B>, epoch: usize, adam: &AdamConfig| -> std::result::Result<EpochStats, Divergence> {
        let beta = cfg.beta.at(epoch);
        let perm = permutation(n, cfg.seed, epoch);
        let t0 = std::time::Instant::now();
        let mut sums = [0f64; 4];
        for step in 0..steps {
            let rows = &perm[step * bs..(step + 1) * bs];
            let batch = data.batch(be, rows);
            let mut rng = stream(cfg.seed, STREAM_STEP, epoch as u64, step as u64);
            let noise = Noise::sample(be, model, rows.len(), true, &mut rng);
            let f = model.forward_with(be, &batch, &noise, true);
            let l = model.losses(be, &f, None);
            model.backward(be, &batch, &noise, &f, beta, None);
            checked_update(be, model, &l, adam, &all, (epoch, step, steps))?;
            let vals = [l.total(beta, 0.0), l.nll, beta * l.kl_z, beta * l.kl_l];
            for (s, v) in sums.iter_mut().zip([l.total(beta, 0.0), l.nll, l.kl_z, l.kl_l]) {
                *s += v;
            }
            if window.len() == 100 {
                window.pop_front();
            }
            window.push_back(vals);
            let mut running = [0f64; 4];
            for w in &window {
                for k in 0..4 {
                    running[k] += w[k] / window.len() as f64;
                }
            }
            let ms = t0.elapsed().as_secs_f64() * 1000.0 / (step + 1) as f64;
            let done = (step + 1 == steps).then(|| EpochStats::from_sums(epoch, beta, &sums, steps, ms));
            progress(&Progress { epoch, epochs: cfg.epochs, step, steps, ms_per_step: ms, running, finished_epoch: done.as_ref() });
            if crate::interrupt::requested() {
                return Err(Divergence { epoch, step, steps, what: "interrupted".into() });
            }
            if let Some(d) = done {
                return Ok(d);
            }
        }
        unreachable!("an epoch has at least one step")
    };
    drive_epochs(be, model, "context", cfg.epochs, &cfg.adam, guard, log, &mut one_epoch)
}

/// Eval-mode representations of every cell (spec §7): z mean and σ, the intermediate space, library
/// mean and σ. Row-major, f32.
#[derive(Debug, Clone)]
pub struct Representation {
    pub latent: usize,
    pub inter_dim: usize,
    pub z_mu: Vec<f32>,
    pub z_sig: Vec<f32>,
    pub inter: Vec<f32>,
    pub l_mu: Vec<f32>,
    pub l_sig: Vec<f32>,
}

pub fn represent<B: Backend>(be: &B, model: &Model<B>, data: &TrainData, chunk: usize) -> Representation {
    let n = data.n_cells();
    let (l, d) = (model.cfg.latent, model.cfg.inter_dim());
    let mut r = Representation {
        latent: l,
        inter_dim: d,
        z_mu: Vec::with_capacity(n * l),
        z_sig: Vec::with_capacity(n * l),
        inter: Vec::with_capacity(n * d),
        l_mu: Vec::with_capacity(n),
        l_sig: Vec::with_capacity(n),
    };
    let rows: Vec<usize> = (0..n).collect();
    for c in rows.chunks(chunk.max(1)) {
        let batch = data.batch(be, c);
        let e = model.encode(be, &batch);
        let f32s = |b: &B::Buf| be.download(b).into_iter().map(|x| x as f32);
        r.z_mu.extend(f32s(&e.z_mu));
        r.z_sig.extend(f32s(&e.z_ls).map(|x| x.exp()));
        r.inter.extend(f32s(&e.inter));
        r.l_mu.extend(f32s(&e.l_mu));
        r.l_sig.extend(f32s(&e.l_ls).map(|x| x.exp()));
    }
    r
}
