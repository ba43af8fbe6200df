//! How well the transferred labels match the target's own labels, when the target has them.

use super::{AlignRun, Observer, PreparedPair};
use crate::engine::Backend;
use serde::{Deserialize, Serialize};

/// Balanced accuracies of the latent transfer and of the data-level kNN.
#[derive(Debug, Clone, Serialize)]
pub struct BalancedAccuracy {
    pub latent_transfer: f64,
    pub data_level_knn: f64,
}

/// Recall of one true cell type that the context also has.
#[derive(Debug, Clone, Serialize)]
pub struct TypeRecall {
    #[serde(rename = "type")]
    pub cell_type: String,
    pub cells: usize,
    pub latent_transfer: f64,
    pub data_level_knn: f64,
}

/// One consensus member's own accuracy.
#[derive(Debug, Clone, Serialize)]
pub struct MemberAccuracy {
    pub seed: u64,
    pub balanced_accuracy: f64,
    pub recall_per_type: Vec<MemberRecall>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberRecall {
    #[serde(rename = "type")]
    pub cell_type: String,
    pub recall: f64,
}

/// Cells flagged unassigned among a group of target cells.
#[derive(Debug, Clone, Serialize)]
pub struct UnassignedRate {
    pub cells: usize,
    pub unassigned: usize,
    /// NaN (null in JSON) for an empty group.
    pub rate: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct UnassignedRates {
    pub shared_types: UnassignedRate,
    pub types_absent_from_context: UnassignedRate,
}

/// The evaluation against the target's labels (`metrics.json`'s `evaluation`).
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub balanced_accuracy: BalancedAccuracy,
    pub members: Vec<MemberAccuracy>,
    pub calibration: Vec<CalibrationBin>,
    pub recall_per_type: Vec<TypeRecall>,
    pub unassigned: UnassignedRates,
}

/// The evaluation of a run's transfer, or None when the target has no labels.
pub fn evaluate<B: Backend>(pair: &PreparedPair, run: &AlignRun<B>, obs: &dyn Observer) -> Option<Evaluation> {
    let tgt = &pair.target;
    let l = tgt.labels.as_ref()?;
    let names = &run.meta().labels;
    let tr = &run.transfer;
    let truth: Vec<&str> = (0..tgt.n_cells()).map(|i| l.value(i).unwrap_or("unknown")).collect();
    let (bas, per) = balanced_accuracy(&truth, &tr.pred, names);
    let (bas_knn, per_knn) = balanced_accuracy(&truth, &run.knn.knn_label, names);
    if per.is_empty() {
        obs.warn("no target label (--target-label-key) matches a context label, so no balanced accuracy can be computed");
    }
    let shared: Vec<bool> = truth.iter().map(|x| names.iter().any(|n| n == x)).collect();
    let rate = |want: bool| {
        let idx: Vec<usize> = (0..truth.len()).filter(|&i| shared[i] == want).collect();
        let f = idx.iter().filter(|&&i| tr.unassigned[i]).count();
        UnassignedRate { cells: idx.len(), unassigned: f, rate: if idx.is_empty() { f64::NAN } else { f as f64 / idx.len() as f64 } }
    };
    let members = run
        .members
        .iter()
        .zip(&tr.member_pred)
        .map(|(m, p)| {
            let (b, per) = balanced_accuracy(&truth, p, names);
            MemberAccuracy {
                seed: m.seed,
                balanced_accuracy: b,
                recall_per_type: per.into_iter().map(|x| MemberRecall { cell_type: x.0, recall: x.2 }).collect(),
            }
        })
        .collect();
    obs.log(&format!("balanced accuracy on target cells of shared types: latent transfer {bas:.3}, data-level kNN {bas_knn:.3}"));
    Some(Evaluation {
        balanced_accuracy: BalancedAccuracy { latent_transfer: bas, data_level_knn: bas_knn },
        members,
        calibration: calibration(&truth, &tr.pred, &tr.confidence, &tr.unassigned, names),
        recall_per_type: per
            .into_iter()
            .zip(per_knn)
            .map(|(a, b)| TypeRecall { cell_type: a.0, cells: a.1, latent_transfer: a.2, data_level_knn: b.2 })
            .collect(),
        unassigned: UnassignedRates { shared_types: rate(true), types_absent_from_context: rate(false) },
    })
}

/// Balanced accuracy (mean recall over the true classes that exist in the context) and per-type recall.
/// `truth` holds target label names; `pred` context label indices into `names`.
pub fn balanced_accuracy(truth: &[&str], pred: &[u32], names: &[String]) -> (f64, Vec<(String, usize, f64)>) {
    let mut per = Vec::new();
    let mut types: Vec<&str> = truth.to_vec();
    types.sort_unstable();
    types.dedup();
    for t in types {
        let Some(ci) = names.iter().position(|n| n == t) else { continue };
        let cells: Vec<usize> = (0..truth.len()).filter(|&i| truth[i] == t).collect();
        let hit = cells.iter().filter(|&&i| pred[i] as usize == ci).count();
        per.push((t.to_string(), cells.len(), hit as f64 / cells.len() as f64));
    }
    let bas = if per.is_empty() { f64::NAN } else { per.iter().map(|p| p.2).sum::<f64>() / per.len() as f64 };
    (bas, per)
}

/// Confidence bins for calibration: [0, 0.5), [0.5, 0.7), [0.7, 0.9), [0.9, 1].
pub const CONFIDENCE_BINS: [f64; 5] = [0.0, 0.5, 0.7, 0.9, 1.0];

/// One confidence bin of target cells.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CalibrationBin {
    pub low: f64,
    pub high: f64,
    /// Cells of types the context has: how many, how many predicted correctly.
    pub shared_cells: usize,
    pub shared_correct: usize,
    /// Cells of types the context lacks (no prediction can be right): how many, how many flagged unassigned.
    pub novel_cells: usize,
    pub novel_unassigned: usize,
}

/// Target cells binned by confidence ([`CONFIDENCE_BINS`]; the last bin includes 1), with the share
/// predicted correctly among the cells of shared types and the share flagged unassigned among the
/// cells of types the context lacks.
pub fn calibration(truth: &[&str], pred: &[u32], confidence: &[f64], unassigned: &[bool], names: &[String]) -> Vec<CalibrationBin> {
    let nb = CONFIDENCE_BINS.len() - 1;
    let mut bins: Vec<CalibrationBin> =
        (0..nb).map(|b| CalibrationBin { low: CONFIDENCE_BINS[b], high: CONFIDENCE_BINS[b + 1], ..Default::default() }).collect();
    for i in 0..truth.len() {
        let b = CONFIDENCE_BINS[1..nb].iter().filter(|&&edge| confidence[i] >= edge).count();
        let bin = &mut bins[b];
        match names.iter().position(|n| n == truth[i]) {
            Some(t) => {
                bin.shared_cells += 1;
                bin.shared_correct += (pred[i] as usize == t) as usize;
            }
            None => {
                bin.novel_cells += 1;
                bin.novel_unassigned += unassigned[i] as usize;
            }
        }
    }
    bins
}
