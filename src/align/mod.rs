//! Alignment of the target to the context: the data-level kNN on homologous genes, the agreement
//! ranking that selects the cells to align, and the target fine-tuning with argmax-likelihood candidates.

pub mod agreement;
pub mod candidates;

use crate::data::Csr;
use crate::engine::Backend;
use crate::engine::ops::AdamConfig;
use crate::error::{Error, Result};
pub use crate::model::AlignSpace;
use crate::model::{InterTarget, Model, Noise};
use crate::train::{
    Divergence, EpochStats, Guard, Progress, Representation, Schedule, TrainData, checked_update, drive_epochs, permutation, stream,
};
use candidates::{Query, choose};
use rand::RngExt;
use serde::{Deserialize, Serialize};

/// Target fine-tuning settings (spec §6.3, decisions.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlignConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub beta: Schedule,
    pub eta: Schedule,
    /// Context neighbours considered per aligned cell.
    pub k: usize,
    /// Align the top p % of each predicted label by agreement.
    pub top_percent: f64,
    pub adam: crate::engine::ops::AdamConfig,
    pub seed: u64,
    /// Dropout in the frozen inner encoder (the package's behaviour); off by default (the publication's).
    pub inner_dropout: bool,
    /// Decode candidates with decoder dropout (the reference's train mode).
    pub candidate_dropout: bool,
    /// How the target decoder starts: fresh (the reference) or from the context decoder.
    #[serde(default)]
    pub decoder_init: DecoderInit,
    /// Where the alignment term acts: the intermediate space (frozen shared inner encoder, the
    /// default) or the latent space (fresh trainable inner encoder).
    #[serde(default)]
    pub space: AlignSpace,
    /// Feature space of the data-level kNN that selects the aligned cells and their candidates.
    #[serde(default)]
    pub knn_space: crate::knn::KnnSpace,
    /// Target models aligned from the one context model, each with its own seed; their label votes
    /// are pooled per cell ([`crate::transfer::consensus`]).
    #[serde(default = "one")]
    pub members: usize,
    /// Which of an aligned cell's k neighbours compete in the likelihood choice. Runs saved before
    /// this field existed used all of them.
    #[serde(default = "all_candidates")]
    pub candidates: CandidateSet,
}

fn all_candidates() -> CandidateSet {
    CandidateSet::All
}

/// The neighbours among which an aligned cell's candidate is chosen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum CandidateSet {
    /// Those of the k neighbours whose context label is the cell's data-level kNN label: the label
    /// that selected the cell for alignment. A cell is never pulled onto a type its own selection
    /// evidence voted against.
    KnnLabel,
    /// Those with the kNN label while β and η ramp up, then all k. The target decoder that scores
    /// the candidates learns from the cells' current places, so early on it confirms wherever a cell
    /// sits; once it has learnt where the anchored types lie, the likelihood may overrule the kNN.
    #[default]
    Warmup,
    /// All k neighbours (the reference).
    All,
}

fn one() -> usize {
    1
}

/// Target models by default: one. A consensus (`members` > 1) costs one alignment and one transfer per
/// member; measured on the bundled pair it did not pay for itself (see the README).
pub const DEFAULT_MEMBERS: usize = 1;

/// The seed of consensus member `m`: member 0 is the run's seed, so a one-member run is the plain run.
pub fn member_seed(seed: u64, m: usize) -> u64 {
    if m == 0 {
        return seed;
    }
    // splitmix64 of (seed, m): unrelated streams for neighbouring seeds and members.
    let mut z = seed ^ (m as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Initialisation of the target decoder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum DecoderInit {
    /// PyTorch's default initialisation, as the reference.
    #[default]
    Fresh,
    /// Copied from the context decoder along the homologous genes ([`Model::init_decoder_from`]).
    Context,
}

impl AlignConfig {
    /// The defaults: 60 epochs below 10,000 target cells (else 30), k = 25, p = 20 at every size
    /// (decisions.md), β 0.1 → 1 and η 10 → 25 over 10 epochs, the informative-gene kNN space,
    /// candidates of the kNN label during that ramp and [`DEFAULT_MEMBERS`] target model.
    pub fn default_for(n_target: usize, seed: u64) -> Self {
        let small = n_target < 10_000;
        AlignConfig {
            epochs: if small { 60 } else { 30 },
            batch_size: 128,
            beta: Schedule { start: 0.1, max: 1.0, epochs_raise: 10 },
            eta: Schedule { start: 10.0, max: 25.0, epochs_raise: 10 },
            k: 25,
            top_percent: 20.0,
            adam: Default::default(),
            seed,
            inner_dropout: false,
            candidate_dropout: true,
            decoder_init: DecoderInit::Fresh,
            space: AlignSpace::Inter,
            knn_space: crate::knn::KnnSpace::Informative,
            members: DEFAULT_MEMBERS,
            candidates: CandidateSet::Warmup,
        }
    }
}

/// Per-epoch means of target training.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlignEpoch {
    pub stats: EpochStats,
    pub eta: f64,
    pub align: f64,
    pub aligned_per_step: f64,
    /// Share of the chosen candidates whose context label is the target cell's data-level kNN label.
    /// With [`CandidateSet::All`], a fall over the first epochs means the likelihood choice pulls cells
    /// of a type onto a neighbouring type (the failure mode seen on small endocrine types); while the
    /// candidates are restricted to the kNN label ([`CandidateSet::KnnLabel`], or the warm-up of
    /// [`CandidateSet::Warmup`]) it is 1 by construction.
    #[serde(default)]
    pub candidate_label_agreement: Option<f64>,
}

const STREAM_ALIGN_FALLBACK: u64 = 3;

/// Fine-tune a target model whose inner encoder is the (frozen) context one, aligning the intermediate
/// space of the selected cells to their best context candidates.
pub fn train_target<B: Backend>(
    be: &B,
    model: &mut Model<B>,
    data: &TrainData,
    ctx: &Representation,
    sel: &Selection,
    cfg: &AlignConfig,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Vec<AlignEpoch>> {
    train_target_guarded(be, model, data, ctx, sel, cfg, &Guard::default(), progress, &mut |_| {})
}

/// The data-level neighbours, the cells selected for alignment and the labels behind the selection.
pub struct Selection<'a> {
    pub knn: &'a [u32],
    pub knn_stored: usize,
    pub aligned: &'a [bool],
    /// Each context cell's label code.
    pub context_labels: &'a [u32],
    /// Each target cell's data-level kNN label ([`agreement::predict`]).
    pub knn_label: &'a [u32],
}

impl Selection<'_> {
    /// Each target cell's first `k` neighbours, or ([`CandidateSet::KnnLabel`]) those of them that carry
    /// its kNN label; all k where none does (`k` below the kNN's vote size).
    fn candidates(&self, k: usize, set: CandidateSet) -> Vec<Vec<u32>> {
        let n = self.knn.len() / self.knn_stored;
        (0..n)
            .map(|i| {
                let first = &self.knn[i * self.knn_stored..i * self.knn_stored + k];
                if set != CandidateSet::KnnLabel {
                    return first.to_vec();
                }
                let same: Vec<u32> = first.iter().copied().filter(|&j| self.context_labels[j as usize] == self.knn_label[i]).collect();
                if same.is_empty() { first.to_vec() } else { same }
            })
            .collect()
    }
}

/// [`train_target`] with checkpoints, resume and a divergence policy.
#[allow(clippy::too_many_arguments)]
pub fn train_target_guarded<B: Backend>(
    be: &B,
    model: &mut Model<B>,
    data: &TrainData,
    ctx: &Representation,
    sel_in: &Selection,
    cfg: &AlignConfig,
    guard: &Guard,
    progress: &mut dyn FnMut(&Progress),
    log: &mut dyn FnMut(&str),
) -> Result<Vec<AlignEpoch>> {
    let (knn, knn_stored, aligned) = (sel_in.knn, sel_in.knn_stored, sel_in.aligned);
    let n = data.n_cells();
    let k = cfg.k.min(knn_stored);
    if n == 0 {
        return Err(Error::Input("no target cells to train on".into()));
    }
    check_knn(knn, knn_stored, data.counts)?;
    if sel_in.knn_label.len() != n || aligned.len() != n {
        return Err(Error::Input(format!(
            "the selection has {} kNN labels and {} aligned flags for {n} target cells",
            sel_in.knn_label.len(),
            aligned.len()
        )));
    }
    let all = sel_in.candidates(k, CandidateSet::All);
    let same_label = (cfg.candidates != CandidateSet::All).then(|| sel_in.candidates(k, CandidateSet::KnnLabel));
    // The warm-up is the β/η ramp.
    let warmup = cfg.beta.epochs_raise.max(cfg.eta.epochs_raise);
    let bs = cfg.batch_size.min(n);
    let steps = (n / bs).max(1);
    let d = model.cfg.inter_dim();
    // Inter mode: the shared inner encoder is frozen; latent mode: every module trains.
    let latent = cfg.space == AlignSpace::Latent;
    let trainable = |name: &str| latent || !name.starts_with("inner.");
    let inner_dropout = latent || cfg.inner_dropout;
    let mut one_epoch = |model: &mut Model<B>, epoch: usize, adam: &AdamConfig| -> std::result::Result<AlignEpoch, Divergence> {
        let (beta, eta) = (cfg.beta.at(epoch), cfg.eta.at(epoch));
        let candidates = match (&same_label, cfg.candidates) {
            (Some(c), CandidateSet::KnnLabel) => c,
            (Some(c), CandidateSet::Warmup) if epoch < warmup => c,
            _ => &all,
        };
        let perm = permutation(n, cfg.seed, epoch);
        let t0 = std::time::Instant::now();
        let mut sums = [0f64; 6];
        let (mut same_label, mut chosen_total) = (0usize, 0usize);
        for step in 0..steps {
            let rows = &perm[step * bs..(step + 1) * bs];
            let batch = data.batch(be, rows);
            let mut rng = stream(cfg.seed, crate::train::STREAM_STEP, epoch as u64, step as u64);
            let noise = Noise::sample_modes(be, model, rows.len(), true, inner_dropout, &mut rng);
            let f = model.forward_with(be, &batch, &noise, true);
            // Aligned cells of this minibatch; if none, one random cell (the reference's fallback).
            let mut sel: Vec<usize> = (0..rows.len()).filter(|&i| aligned[rows[i]]).collect();
            if sel.is_empty() {
                let mut r = stream(cfg.seed, STREAM_ALIGN_FALLBACK, epoch as u64, step as u64);
                sel.push(r.random_range(0..rows.len()));
            }
            let lib = be.download(&f.lib);
            let queries: Vec<Query> = sel
                .iter()
                .map(|&i| Query { cell: rows[i], batch: data.batch[rows[i]], lib: lib[i], neighbours: &candidates[rows[i]] })
                .collect();
            let (chosen, _, sampled) = choose(be, model, ctx, data.counts, &queries, cfg.candidate_dropout, &mut rng);
            for (q, &j) in queries.iter().zip(&chosen) {
                same_label += (sel_in.context_labels[q.neighbours[j] as usize] == sel_in.knn_label[q.cell]) as usize;
            }
            chosen_total += queries.len();
            let (targets, t);
            if latent {
                targets = sampled;
                t = InterTarget::latent(&sel, &targets, eta);
            } else {
                targets = queries
                    .iter()
                    .zip(&chosen)
                    .map(|(q, &j)| {
                        let c = q.neighbours[j] as usize;
                        ctx.inter[c * d..(c + 1) * d].iter().map(|&v| v as f64).collect()
                    })
                    .collect::<Vec<Vec<f64>>>();
                t = InterTarget::new(&sel, &targets, eta);
            }
            let l = model.losses(be, &f, Some(&t));
            model.backward(be, &batch, &noise, &f, beta, Some(&t));
            checked_update(be, model, &l, adam, &trainable, (epoch, step, steps))?;
            let vals = [l.total(beta, eta), l.nll, l.kl_z, l.kl_l, l.align, sel.len() as f64];
            for (s, v) in sums.iter_mut().zip(vals) {
                *s += v;
            }
            let ms = t0.elapsed().as_secs_f64() * 1000.0 / (step + 1) as f64;
            let done = (step + 1 == steps).then(|| {
                let st = steps as f64;
                AlignEpoch {
                    stats: EpochStats::from_sums(epoch, beta, &sums[..4], steps, ms),
                    eta,
                    align: sums[4] / st,
                    aligned_per_step: sums[5] / st,
                    candidate_label_agreement: (chosen_total > 0).then(|| same_label as f64 / chosen_total as f64),
                }
            });
            let running = [l.total(beta, eta), l.nll, beta * l.kl_z, eta * l.align];
            progress(&Progress {
                epoch,
                epochs: cfg.epochs,
                step,
                steps,
                ms_per_step: ms,
                running,
                finished_epoch: done.as_ref().map(|h| &h.stats),
            });
            if crate::interrupt::requested() {
                return Err(Divergence { epoch, step, steps, what: "interrupted".into() });
            }
            if let Some(h) = done {
                return Ok(h);
            }
        }
        unreachable!("an epoch has at least one step")
    };
    drive_epochs(be, model, "target", cfg.epochs, &cfg.adam, guard, log, &mut one_epoch)
}

/// Check that the kNN input fits: every target cell has `stored` neighbours.
pub fn check_knn(knn: &[u32], stored: usize, counts: &Csr) -> Result<()> {
    if stored == 0 || knn.len() != stored * counts.n_rows {
        return Err(Error::Input(format!("the data-level kNN has {} entries for {} target cells x {stored}", knn.len(), counts.n_rows)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_keep_the_neighbours_with_the_knn_label() {
        // Two target cells, 4 stored neighbours each; context labels 0,1,0,1,2.
        let knn = [0u32, 1, 2, 3, 4, 1, 3, 0];
        let context_labels = [0u32, 1, 0, 1, 2];
        let knn_label = [0u32, 0];
        let aligned = [true, true];
        let sel = Selection { knn: &knn, knn_stored: 4, aligned: &aligned, context_labels: &context_labels, knn_label: &knn_label };
        let c = sel.candidates(3, CandidateSet::KnnLabel);
        assert_eq!(c[0], vec![0, 2]);
        // Cell 1's first three neighbours lack label 0 (k smaller than the kNN's vote): all of them.
        assert_eq!(c[1], vec![4, 1, 3]);
        let c = sel.candidates(3, CandidateSet::All);
        assert_eq!(c, vec![vec![0, 1, 2], vec![4, 1, 3]]);
    }
}
