//! Arguments of the analysis commands `evaluate`, `similarity`, `dge`, `lrp`; the analyses themselves
//! are [`crate::analysis::folder`].

use super::Reporter;
use crate::analysis::folder::{self, DgeOptions, FolderOptions, LabelSource, LrpOptions, SimilarityOptions};
use crate::error::{Error, Result};
use crate::pipeline::Observer;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct AnalysisArgs {
    /// Output folder of a finished `scspecies run` or `demo` (models, predictions, metrics.json).
    #[arg(long)]
    pub run: PathBuf,
    /// Where to write (default: <run>/<command>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Which target labels define the target's cell types.
    #[arg(long, value_enum, default_value = "auto")]
    pub target_labels: LabelSource,
    /// Random seed of the sampling in the analysis.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
}

impl AnalysisArgs {
    /// The library's options; sets the worker threads.
    fn options(&self) -> Result<(FolderOptions, Reporter)> {
        match self.threads {
            Some(0) => return Err(Error::Config("--threads must be at least 1".into())),
            Some(t) => {
                let _ = rayon::ThreadPoolBuilder::new().num_threads(t).build_global();
            }
            None => {}
        }
        let o = FolderOptions { run: self.run.clone(), out: self.out.clone(), target_labels: self.target_labels, seed: self.seed };
        Ok((o, Reporter::new(self.quiet)))
    }
}

#[derive(Args, Debug, Clone)]
pub struct SimilarityArgs {
    #[command(flatten)]
    pub common: AnalysisArgs,
    /// Target cells sampled per target type.
    #[arg(long, default_value_t = SimilarityOptions::default().max_target_cells)]
    pub max_target_cells: usize,
    /// Context cells sampled per target cell and context type.
    #[arg(long, default_value_t = SimilarityOptions::default().context_per_cell)]
    pub context_per_cell: usize,
}

#[derive(Args, Debug, Clone)]
pub struct DgeArgs {
    #[command(flatten)]
    pub common: AnalysisArgs,
    /// Latent samples per cell type (the package uses 50,000).
    #[arg(long, default_value_t = DgeOptions::default().samples)]
    pub samples: usize,
    /// |log2 fold change| threshold δ.
    #[arg(long, default_value_t = DgeOptions::default().lfc_delta)]
    pub lfc_delta: f64,
    /// A gene is differentially expressed when |median LFC| > δ and P(|LFC| > δ) exceeds this.
    #[arg(long, default_value_t = DgeOptions::default().min_probability)]
    pub min_probability: f64,
    /// Sample latents with Uniform[0,1) noise, as the package does (a bug), instead of Gaussian.
    #[arg(long)]
    pub uniform_noise: bool,
    /// Only these cell types (default: every type found in both species).
    #[arg(long = "cell-type")]
    pub cell_types: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct LrpArgs {
    #[command(flatten)]
    pub common: AnalysisArgs,
    /// γ of the LRP-γ rule.
    #[arg(long, default_value_t = LrpOptions::default().gamma)]
    pub gamma: f64,
    /// Cells sampled per cell type (all if fewer).
    #[arg(long, default_value_t = LrpOptions::default().max_cells)]
    pub max_cells: usize,
    /// Genes listed per type in summary.tsv.
    #[arg(long, default_value_t = LrpOptions::default().top)]
    pub top: usize,
}

/// A spinner while `f` runs.
fn spinning<T>(r: &Reporter, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    r.phase(name, 0);
    let out = f();
    r.phase_done();
    out
}

pub fn evaluate(a: &AnalysisArgs) -> Result<()> {
    let (o, r) = a.options()?;
    spinning(&r, "evaluate", || folder::evaluate(&o, &r))
}

pub fn similarity(a: &SimilarityArgs) -> Result<()> {
    let (o, r) = a.common.options()?;
    let s = SimilarityOptions { max_target_cells: a.max_target_cells, context_per_cell: a.context_per_cell };
    spinning(&r, "similarity", || folder::similarity(&o, &s, &r))
}

pub fn dge(a: &DgeArgs) -> Result<()> {
    let (o, r) = a.common.options()?;
    let d = DgeOptions {
        samples: a.samples,
        lfc_delta: a.lfc_delta,
        min_probability: a.min_probability,
        uniform_noise: a.uniform_noise,
        cell_types: a.cell_types.clone(),
    };
    spinning(&r, "dge", || folder::dge(&o, &d, &r))
}

pub fn lrp(a: &LrpArgs) -> Result<()> {
    let (o, r) = a.common.options()?;
    let l = LrpOptions { gamma: a.gamma, max_cells: a.max_cells, top: a.top };
    spinning(&r, "lrp", || folder::lrp(&o, &l, &r))
}
