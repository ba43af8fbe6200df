//! `metrics.json`: one struct that the stages fill, written once at the end.

use super::{AlignRun, ContextRun, Evaluation, Inputs, PreparedPair, RunConfig};
use crate::engine::Backend;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Debug, Clone, Serialize)]
pub struct Precision {
    pub requested: String,
    pub ranking_gemms: crate::engine::precision::Precision,
    /// The CPU kernel of the bf16 ranking GEMMs (`amx`, `avx512-bf16`); absent in f32 or on a GPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ranking_kernel: Option<&'static str>,
    pub training_gemms: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct BatchPrior {
    pub batch: String,
    pub log_mean: f64,
    pub log_std: f64,
}

/// The library-size prior of one species.
#[derive(Debug, Clone, Serialize)]
pub struct LibraryPrior {
    pub lib_mu_add: f64,
    pub batches: Vec<BatchPrior>,
}

impl LibraryPrior {
    fn of(p: &crate::preprocess::Prepared) -> Self {
        LibraryPrior {
            lib_mu_add: p.lib_mu_add,
            batches: p
                .batch_names
                .iter()
                .zip(&p.batch_prior)
                .map(|(b, (m, s))| BatchPrior { batch: b.clone(), log_mean: *m, log_std: *s })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub estimate_bytes: crate::resources::MemoryEstimate,
    pub limit_bytes: Option<u64>,
    pub peak_rss_bytes: Option<u64>,
}

/// Context pre-training, summed up.
#[derive(Debug, Clone, Serialize)]
pub struct PretrainSummary {
    pub backend: String,
    pub epochs: usize,
    pub steps_per_epoch: usize,
    pub train_seconds: f64,
    pub ms_per_step: Option<f64>,
    pub final_nelbo: Option<f64>,
    pub final_nll: Option<f64>,
    pub parameters: usize,
}

impl PretrainSummary {
    pub fn of<B: Backend>(be: &B, run: &ContextRun<B>, tcfg: &crate::train::TrainConfig, n_cells: usize) -> Self {
        let last = run.history.last();
        PretrainSummary {
            backend: be.name(),
            epochs: tcfg.epochs,
            steps_per_epoch: (n_cells / tcfg.batch_size.min(n_cells)).max(1),
            train_seconds: run.train_seconds,
            ms_per_step: last.map(|e| e.ms_per_step),
            final_nelbo: last.map(|e| e.nelbo),
            final_nll: last.map(|e| e.nll),
            parameters: run.model.n_params(be),
        }
    }
}

/// Alignment and transfer, summed up.
#[derive(Debug, Clone, Serialize)]
pub struct AlignSummary {
    pub epochs: usize,
    pub config: crate::align::AlignConfig,
    pub history: Vec<crate::align::AlignEpoch>,
    /// The consensus members' seeds.
    pub members: Vec<u64>,
    pub data_knn_genes: usize,
    pub aligned_cells: usize,
    pub unassigned_cells: usize,
    pub transfer_config: crate::transfer::TransferConfig,
}

impl AlignSummary {
    pub fn of<B: Backend>(acfg: &crate::align::AlignConfig, run: &AlignRun<B>, tcfg: &crate::transfer::TransferConfig) -> Self {
        AlignSummary {
            epochs: acfg.epochs,
            config: acfg.clone(),
            history: run.history().to_vec(),
            members: run.members.iter().map(|m| m.seed).collect(),
            data_knn_genes: run.knn.genes,
            aligned_cells: run.knn.n_aligned(),
            unassigned_cells: run.transfer.unassigned.iter().filter(|&&u| u).count(),
            transfer_config: tcfg.clone(),
        }
    }
}

/// Everything `metrics.json` holds about a run.
#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    pub scspecies_version: &'static str,
    pub inputs: Inputs,
    pub preprocess_config: crate::preprocess::PreprocessConfig,
    pub seed: u64,
    /// The device asked for (`cpu`, `cuda`, `auto`); `backend` names the one used.
    pub device: String,
    pub backend: String,
    pub precision: Precision,
    /// Per species name.
    pub preprocessing: BTreeMap<String, crate::preprocess::PreprocessReport>,
    pub library_prior: BTreeMap<String, LibraryPrior>,
    pub homology: crate::homology::HomologyReport,
    pub memory: Memory,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pretrain: Option<PretrainSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub align: Option<AlignSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<Evaluation>,
    /// The warnings of the run (also shown unless quiet).
    pub warnings: Vec<String>,
    /// Seconds per phase, and `total`.
    pub timings_s: BTreeMap<String, f64>,
}

impl Metrics {
    pub fn new<B: Backend>(
        inputs: &Inputs,
        cfg: &RunConfig,
        be: &B,
        pair: &PreparedPair,
        (estimate, limit): (crate::resources::MemoryEstimate, Option<u64>),
    ) -> Self {
        let (c, t) = (&pair.context, &pair.target);
        Metrics {
            scspecies_version: env!("CARGO_PKG_VERSION"),
            inputs: inputs.clone(),
            preprocess_config: cfg.preprocess.clone(),
            seed: cfg.seed,
            device: cfg.device_requested.clone(),
            backend: be.name(),
            precision: Precision {
                requested: cfg.precision_requested.clone(),
                ranking_gemms: crate::engine::precision::ranking_precision(),
                ranking_kernel: match crate::engine::precision::ranking_precision() {
                    crate::engine::precision::Precision::Bf16 if be.name().starts_with("cpu") => crate::engine::precision::bf16_kernel(),
                    _ => None,
                },
                training_gemms: "f32",
            },
            preprocessing: [(c.name.clone(), c.report.clone()), (t.name.clone(), t.report.clone())].into(),
            library_prior: [(c.name.clone(), LibraryPrior::of(c)), (t.name.clone(), LibraryPrior::of(t))].into(),
            homology: pair.homology.report.clone(),
            memory: Memory { estimate_bytes: estimate, limit_bytes: limit, peak_rss_bytes: None },
            pretrain: None,
            align: None,
            evaluation: None,
            warnings: Vec::new(),
            timings_s: BTreeMap::new(),
        }
    }

    /// Record the phases' times, the total since `t0` and the peak memory.
    pub fn finish(&mut self, timings: Vec<(String, f64)>, t0: Instant) {
        self.timings_s = timings.into_iter().collect();
        self.timings_s.insert("total".into(), t0.elapsed().as_secs_f64());
        self.memory.peak_rss_bytes = crate::resources::peak_rss();
    }

    /// Add a phase's time (e.g. writing the outputs) and update the total and the peak memory.
    pub fn add_time(&mut self, phase: &str, seconds: f64, t0: Instant) {
        *self.timings_s.entry(phase.into()).or_default() += seconds;
        self.timings_s.insert("total".into(), t0.elapsed().as_secs_f64());
        self.memory.peak_rss_bytes = crate::resources::peak_rss();
    }
}
