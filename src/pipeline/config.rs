//! The settings of a run, checked in one place: every option the CLI and Python accept lands here
//! and takes effect, or is refused by [`RunConfig::validate`].

use crate::align::{AlignConfig, AlignSpace, CandidateSet, DecoderInit};
use crate::error::{Error, Result};
use crate::knn::KnnSpace;
use crate::preprocess::PreprocessConfig;
use crate::train::{Checkpointing, Guard, OnNan, TrainConfig};
use crate::transfer::TransferConfig;
use serde::Serialize;
use std::path::PathBuf;

/// Alignment settings beyond epochs, seed and learning rate (which [`RunConfig`] holds for both phases).
#[derive(Debug, Clone, Serialize)]
pub struct AlignOptions {
    /// Align the top p % of each data-level predicted type.
    pub top_percent: f64,
    /// Context neighbours per aligned cell among which the best candidate is chosen.
    pub k_neighbours: usize,
    /// Target models aligned from the one context model, each with its own seed.
    pub members: usize,
    pub inner_dropout: bool,
    /// Decode candidates with decoder dropout (the reference's train mode).
    pub candidate_dropout: bool,
    pub decoder_init: DecoderInit,
    pub space: AlignSpace,
    pub knn_space: KnnSpace,
    pub candidates: CandidateSet,
}

impl Default for AlignOptions {
    fn default() -> Self {
        let a = AlignConfig::default_for(0, 0);
        AlignOptions {
            top_percent: a.top_percent,
            k_neighbours: a.k,
            members: a.members,
            inner_dropout: a.inner_dropout,
            candidate_dropout: a.candidate_dropout,
            decoder_init: a.decoder_init,
            space: a.space,
            knn_space: a.knn_space,
            candidates: a.candidates,
        }
    }
}

/// Checkpoints of both training phases.
#[derive(Debug, Clone, Serialize)]
pub struct Checkpoints {
    /// Folder of this run's checkpoints (`<out>/checkpoints` on the command line).
    pub dir: PathBuf,
    /// Write one every this many epochs (0: not by count; and after the last).
    pub every: usize,
    /// Write one after an epoch that ends this long after the last checkpoint (0: not by time).
    pub min_seconds: f64,
    /// Resume from the checkpoints in this folder (an interrupted run's `dir`) where they exist.
    pub resume_from: Option<PathBuf>,
}

/// Everything a run needs besides its inputs. `Default` gives the method's defaults.
#[derive(Debug, Clone, Serialize)]
pub struct RunConfig {
    pub preprocess: PreprocessConfig,
    pub seed: u64,
    /// Epochs of context pre-training (None: 60 below 10,000 cells, else 30).
    pub epochs_context: Option<usize>,
    /// Epochs of target fine-tuning (None: 60 below 10,000 cells, else 30).
    pub epochs_target: Option<usize>,
    /// Adam learning rate of both phases.
    pub learning_rate: f64,
    pub align: AlignOptions,
    pub transfer: TransferConfig,
    pub checkpoints: Option<Checkpoints>,
    pub on_nan: OnNan,
    /// Refuse to start when the estimated peak memory exceeds this (None: the memory available).
    pub max_memory: Option<u64>,
    /// What `--precision` asked for (the ranking GEMMs' precision is set with the device).
    pub precision_requested: String,
    /// What `--device` asked for.
    pub device_requested: String,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            preprocess: PreprocessConfig::default(),
            seed: crate::method::DEFAULT_SEED,
            epochs_context: None,
            epochs_target: None,
            learning_rate: crate::engine::ops::AdamConfig::default().lr,
            align: AlignOptions::default(),
            transfer: TransferConfig::default(),
            checkpoints: None,
            on_nan: OnNan::Stop,
            max_memory: None,
            precision_requested: "auto".into(),
            device_requested: "cpu".into(),
        }
    }
}

impl RunConfig {
    /// Refuse values out of range or inconsistent with each other, naming the option.
    pub fn validate(&self) -> Result<()> {
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return Err(Error::Config(format!("--learning-rate must be a positive number, got {}", self.learning_rate)));
        }
        if let OnNan::Rollback { lr_factor, .. } = self.on_nan {
            if !(lr_factor > 0.0 && lr_factor < 1.0) {
                return Err(Error::Config(format!("--rollback-lr-factor must be in (0, 1), got {lr_factor}")));
            }
            if self.checkpoints.as_ref().is_none_or(|c| c.every == 0 && c.min_seconds <= 0.0) {
                return Err(Error::Config("--on-nan rollback needs checkpoints: --checkpoint-every must not be 0".into()));
            }
        }
        let a = &self.align;
        if !(0.0..=100.0).contains(&a.top_percent) {
            return Err(Error::Config(format!("--top-percent must be in [0, 100], got {}", a.top_percent)));
        }
        if a.k_neighbours == 0 {
            return Err(Error::Config("--k-neighbours must be at least 1".into()));
        }
        if a.members == 0 {
            return Err(Error::Config("--members must be at least 1".into()));
        }
        if a.space == AlignSpace::Latent && a.inner_dropout {
            return Err(Error::Config("--inner-dropout applies to the frozen shared inner encoder of --alignment inter; in latent mode the inner encoder trains with dropout anyway".into()));
        }
        if !self.transfer.unassigned_threshold.is_finite() {
            return Err(Error::Config(format!("--unassigned-threshold must be a number, got {}", self.transfer.unassigned_threshold)));
        }
        Ok(())
    }

    /// Context pre-training settings for a context of `n_cells` cells.
    pub fn train_config(&self, n_cells: usize) -> TrainConfig {
        let mut t = TrainConfig::default_for(n_cells, self.seed);
        if let Some(e) = self.epochs_context {
            t.epochs = e;
        }
        t.adam.lr = self.learning_rate;
        t
    }

    /// Alignment settings for a target of `n_target` cells.
    pub fn align_config(&self, n_target: usize) -> Result<AlignConfig> {
        self.validate()?;
        let a = &self.align;
        let mut c = AlignConfig::default_for(n_target, self.seed);
        if let Some(e) = self.epochs_target {
            c.epochs = e;
        }
        c.top_percent = a.top_percent;
        c.k = a.k_neighbours;
        c.adam.lr = self.learning_rate;
        c.inner_dropout = a.inner_dropout;
        c.candidate_dropout = a.candidate_dropout;
        c.decoder_init = a.decoder_init;
        c.knn_space = a.knn_space;
        c.candidates = a.candidates;
        c.space = a.space;
        c.members = a.members;
        Ok(c)
    }

    /// Checkpoints and divergence policy of one training phase (`context` or `target`; the
    /// fingerprint is set by the stage).
    pub fn guard(&self, phase: &str) -> Guard {
        let file = format!("{phase}.safetensors");
        let checkpoint = self.checkpoints.as_ref().map(|c| Checkpointing {
            path: c.dir.join(&file),
            resume_from: c.resume_from.as_ref().map(|d| d.join(&file)),
            fingerprint: serde_json::Value::Null,
            every: c.every,
            min_seconds: c.min_seconds,
        });
        Guard { checkpoint, on_nan: self.on_nan }
    }
}
