//! Cell-type similarity matrix (spec §8.3): for every pair (target type T, context type C), up to
//! 2000 target cells of T, each against 50 context cells of C drawn without replacement; the score is
//! −mode of the likelihood differences d(j, i) (closer to 0 = more similar), the mode being the
//! midpoint of the fullest bin of a Freedman–Diaconis histogram (numpy's `bins='fd'`).

use crate::engine::Backend;
use crate::model::Model;
use crate::train::{Representation, TrainData};
use rand::SeedableRng;
use rand::seq::{IndexedRandom, SliceRandom};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct SimilarityConfig {
    pub max_target_cells: usize,
    pub context_per_cell: usize,
    pub seed: u64,
}

impl Default for SimilarityConfig {
    fn default() -> Self {
        SimilarityConfig { max_target_cells: 2000, context_per_cell: 50, seed: 0 }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SimilarityMatrix {
    pub target_types: Vec<String>,
    pub context_types: Vec<String>,
    /// −mode of d per (target type, context type), row-major.
    pub values: Vec<f64>,
    /// Number of d values behind each entry.
    pub pairs: Vec<usize>,
}

impl SimilarityMatrix {
    /// Context type indices of row `t`, most similar first.
    pub fn ranking(&self, t: usize) -> Vec<usize> {
        let c = self.context_types.len();
        let mut o: Vec<usize> = (0..c).filter(|&k| self.values[t * c + k].is_finite()).collect();
        o.sort_by(|&a, &b| self.values[t * c + b].total_cmp(&self.values[t * c + a]).then(a.cmp(&b)));
        o
    }
    /// Target types whose own name is among the `top` best context matches, of those the context has.
    pub fn agreement(&self, top: usize) -> (usize, usize) {
        let mut hit = 0;
        let mut shared = 0;
        for (t, name) in self.target_types.iter().enumerate() {
            let Some(ci) = self.context_types.iter().position(|c| c == name) else { continue };
            shared += 1;
            if self.ranking(t).iter().take(top).any(|&k| k == ci) {
                hit += 1;
            }
        }
        (hit, shared)
    }
}

/// Linear-interpolated percentile (numpy's default) of sorted data.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * q;
    let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (h - lo as f64)
}

/// Midpoint of the fullest bin of numpy's Freedman–Diaconis histogram (first bin on ties). NaN for no data.
pub fn histogram_mode(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let (lo, hi) = (v[0], v[v.len() - 1]);
    if hi == lo {
        return lo; // numpy widens to [lo - 0.5, lo + 0.5] with one bin: midpoint lo
    }
    let iqr = percentile(&v, 0.75) - percentile(&v, 0.25);
    let width = 2.0 * iqr / (v.len() as f64).cbrt();
    let bins = if width > 0.0 { ((hi - lo) / width).ceil() as usize } else { 1 }.max(1);
    let mut counts = vec![0usize; bins];
    for &x in &v {
        let b = (((x - lo) / (hi - lo)) * bins as f64) as usize;
        counts[b.min(bins - 1)] += 1;
    }
    let best = counts.iter().enumerate().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0))).unwrap().0;
    let w = (hi - lo) / bins as f64;
    lo + (best as f64 + 0.5) * w
}

/// The matrix for target labels `tgt_labels` (codes into `target_types`) against context labels.
#[allow(clippy::too_many_arguments)]
pub fn similarity_matrix<B: Backend>(
    be: &B,
    model: &Model<B>,
    data: &TrainData,
    tgt: &Representation,
    ctx: &Representation,
    tgt_labels: &[usize],
    target_types: &[String],
    ctx_labels: &[usize],
    context_types: &[String],
    cfg: &SimilarityConfig,
) -> SimilarityMatrix {
    let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(cfg.seed);
    let (nt, nc) = (target_types.len(), context_types.len());
    let members = |labels: &[usize], k: usize| -> Vec<usize> { (0..labels.len()).filter(|&i| labels[i] == k).collect() };
    let ctx_members: Vec<Vec<usize>> = (0..nc).map(|k| members(ctx_labels, k)).collect();
    let mut pairs: Vec<(u32, u32)> = Vec::new();
    let mut owner: Vec<(usize, usize)> = Vec::new(); // (target type, context type) per pair
    for t in 0..nt {
        let mut cells = members(tgt_labels, t);
        cells.shuffle(&mut rng);
        cells.truncate(cfg.max_target_cells);
        cells.sort_unstable();
        for (c, cm) in ctx_members.iter().enumerate() {
            for &j in &cells {
                for &i in cm.sample(&mut rng, cfg.context_per_cell.min(cm.len())) {
                    pairs.push((j as u32, i as u32));
                    owner.push((t, c));
                }
            }
        }
    }
    let d = crate::transfer::similarities(be, model, data, tgt, &ctx.z_mu, &pairs, crate::transfer::Scoring::default());
    let mut per: Vec<Vec<f64>> = vec![Vec::new(); nt * nc];
    for (v, &(t, c)) in d.iter().zip(&owner) {
        per[t * nc + c].push(*v);
    }
    SimilarityMatrix {
        target_types: target_types.to_vec(),
        context_types: context_types.to_vec(),
        values: per.iter().map(|v| -histogram_mode(v)).collect(),
        pairs: per.iter().map(|v| v.len()).collect(),
    }
}
