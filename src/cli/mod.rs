//! The `scspecies` command line. Every command returns a `Result`; `main` prints the error (which names
//! the file, key or value) and exits non-zero.

use crate::error::{Error, Result};
use crate::out;
use crate::pipeline::{Inputs, Observer, Stages, read_checked};
use crate::preprocess::PreprocessConfig;
use crate::summary::{summarize, thousands};
use clap::{Args, Parser, Subcommand, ValueEnum};

mod analyses;
mod report;
mod robustness;
pub use report::Reporter;
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(name = "scspecies", version, about = "Cross-species alignment of single-cell RNA-seq data (scSpecies in Rust)")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The whole pipeline: preprocess, data-level kNN, pre-train, align, transfer labels.
    Run(PipelineArgs),
    /// Pre-train the context model and save it.
    Pretrain(PipelineArgs),
    /// Align the target to a pre-trained context model.
    Align(PipelineArgs),
    /// Transfer cell-type labels from context to target with saved models.
    Transfer(PipelineArgs),
    /// Run the pipeline on the bundled Baron pancreas pair (mouse context, human target).
    Demo(DemoArgs),
    /// Time the pipeline's phases on the bundled data and write a JSON report.
    Bench(BenchArgs),
    /// Print cells, genes, batches, labels, sparsity and homology overlap of the inputs.
    Inspect(InspectArgs),
    /// The demo over seeds x rounding variants (one process per run): a table of balanced accuracy and
    /// per-type recall with mean, min and max, and the confidence calibration.
    Robustness(robustness::RobustnessArgs),
    /// Write a synthetic cross-species pair (context/, target/, homology.tsv) for benchmarks and tests.
    Simulate(SimulateArgs),
    /// Integration metrics of a finished run's joint latent space (species as the batch) and UMAP plots.
    Evaluate(analyses::AnalysisArgs),
    /// Cell-type similarity matrix of a finished run (target types x context types), TSV and heatmap.
    Similarity(analyses::SimilarityArgs),
    /// Cross-species differential expression (log2 fold changes of homologous genes) per shared cell type.
    Dge(analyses::DgeArgs),
    /// Relevance of input genes for the latent mean (LRP-γ), ranked per cell type and species.
    Lrp(analyses::LrpArgs),
    /// Write <run>/report.html (one self-contained page with the figures) for a finished run folder.
    Report(ReportArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// Output folder of a finished `scspecies run` or `demo` (with several targets: one target's folder).
    #[arg(long)]
    pub run: PathBuf,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Args, Debug, Clone)]
pub struct SimulateArgs {
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 2000)]
    pub context_cells: usize,
    #[arg(long, default_value_t = 2000)]
    pub target_cells: usize,
    /// Genes per species.
    #[arg(long, default_value_t = 2000)]
    pub genes: usize,
    /// Fraction of genes with a one-to-one ortholog.
    #[arg(long, default_value_t = 0.7)]
    pub orthologous_fraction: f64,
    /// Cell types present in both species (one more is context-only, one target-only).
    #[arg(long, default_value_t = 6)]
    pub shared_types: usize,
    /// Batches per species.
    #[arg(long, default_value_t = 2)]
    pub batches: usize,
    /// Fraction of non-zero counts (sets the library size).
    #[arg(long, default_value_t = 0.1)]
    pub density: f64,
    /// Zero-inflation probability.
    #[arg(long, default_value_t = 0.05)]
    pub dropout: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Worker threads (default: all cores; the output does not depend on it).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Cpu,
    Cuda,
    Auto,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NanPolicy {
    /// Stop with a message naming epoch, step, term and the last good checkpoint.
    Stop,
    /// Reload the last checkpoint and continue with a lower learning rate.
    Rollback,
}

/// `--precision` (see [`crate::engine::precision`]).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrecisionArg {
    F32,
    Bf16,
    Auto,
}
impl PrecisionArg {
    /// The engine's precision setting for this choice.
    pub fn to_engine(self) -> crate::engine::precision::Precision {
        use crate::engine::precision::Precision;
        match self {
            PrecisionArg::F32 => Precision::F32,
            PrecisionArg::Bf16 => Precision::Bf16,
            PrecisionArg::Auto => Precision::Auto,
        }
    }
}

/// Options shared by every command that trains or analyses.
#[derive(Args, Debug, Clone)]
pub struct RunOptions {
    /// Compute device: `cuda` fails with a message when no GPU can be used, `auto` takes the GPU when
    /// there is one (CUDA driver, NVRTC and cuBLAS are loaded at run time).
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
    /// GPU: let cuBLAS use TF32 tensor cores for the dense GEMMs (faster on Ampere/Hopper, ~1e-3 relative rounding).
    #[arg(long)]
    pub tf32: bool,
    /// GEMM precision of the forward-only decoding that is only ranked (candidate choice, label
    /// transfer): `bf16` (f32 accumulation: AMX or AVX512-BF16 on the CPU, refused where it has neither; tensor
    /// cores on a GPU), `f32`, or `auto` (bf16 where the hardware has it). Training always runs in f32.
    #[arg(long, value_enum, default_value = "auto")]
    pub precision: PrecisionArg,
    /// Epochs of context pre-training (default: 60 below 10,000 cells, else 30).
    #[arg(long)]
    pub epochs_context: Option<usize>,
    /// Epochs of target fine-tuning (default: 60 below 10,000 cells, else 30).
    #[arg(long)]
    pub epochs_target: Option<usize>,
    /// Random seed (the reference's default).
    #[arg(long, default_value_t = 369963)]
    pub seed: u64,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print nothing but errors (warnings are listed in metrics.json).
    #[arg(long, short)]
    pub quiet: bool,
    /// Batches with fewer cells are an error (or dropped with --drop-small-batches).
    #[arg(long, default_value_t = 20)]
    pub min_batch_size: usize,
    /// Drop the cells of batches below --min-batch-size instead of stopping.
    #[arg(long)]
    pub drop_small_batches: bool,
    /// Cells must express at least this fraction of the genes.
    #[arg(long, default_value_t = 0.025)]
    pub min_genes_fraction: f64,
    /// Cell types need more than this many cells to be kept.
    #[arg(long, default_value_t = 20)]
    pub min_cell_type_size: usize,
    /// Keep only this many highly variable genes per species (Seurat v3 on counts, batch-aware).
    #[arg(long)]
    pub n_top_genes: Option<usize>,
    /// Also write each preprocessed dataset as <out>/<name>_preprocessed.h5ad.
    #[arg(long)]
    pub write_h5ad: bool,
    /// Do not write <out>/report.html (the run's figures and tables on one page).
    #[arg(long)]
    pub no_report: bool,
    /// Align the top p % of each data-level predicted type (the package's default 20 at every size;
    /// the publication used 50 below 10,000 target cells).
    #[arg(long, default_value_t = 20.0)]
    pub top_percent: f64,
    /// Alignment space: `inter` (intermediate space, the context's inner encoder shared and frozen)
    /// or `latent` (sampled latents, a fresh trainable inner encoder; the reference's other mode).
    #[arg(long, value_enum, default_value_t = crate::model::AlignSpace::Inter)]
    pub alignment: crate::model::AlignSpace,
    /// With --homology: `gaps` also pairs genes the ortholog table lists on neither side when their
    /// symbols match (case-insensitively); `none` uses the table's pairs only (the reference).
    #[arg(long, value_enum, default_value_t = crate::homology::SymbolFill::Gaps)]
    pub homology_fill: crate::homology::SymbolFill,
    /// Feature space of the data-level kNN: `informative` (counts per 10,000, log1p, the union of each
    /// species' 2,000 most variable homologous genes) or `log1p-counts` (the reference: log1p of raw
    /// counts, all homologous genes).
    #[arg(long, value_enum, default_value_t = crate::knn::data_level::KnnSpace::Informative)]
    pub knn_space: crate::knn::data_level::KnnSpace,
    /// Target models aligned from the one pre-trained context, each with its own seed; each cell's
    /// label votes are pooled over them (1: a single model, as the reference).
    #[arg(long, default_value_t = crate::align::DEFAULT_MEMBERS)]
    pub members: usize,
    /// Context neighbours per aligned cell among which the best candidate is chosen.
    #[arg(long, default_value_t = 25)]
    pub k_neighbours: usize,
    /// Which of those neighbours compete: `warmup` (those carrying the cell's data-level kNN label,
    /// the label that selected it for alignment, while β and η ramp up; then all), `knn-label` (those,
    /// throughout) or `all` (the reference).
    #[arg(long, value_enum, default_value_t = crate::align::CandidateSet::Warmup)]
    pub candidates: crate::align::CandidateSet,
    /// Keep dropout on in the frozen inner encoder during alignment (the package's behaviour).
    #[arg(long)]
    pub inner_dropout: bool,
    /// Decode alignment candidates without decoder dropout (the reference uses train mode).
    #[arg(long)]
    pub eval_candidates: bool,
    /// How the target decoder starts: `fresh` (the reference) or `context` (copied from the context
    /// decoder along the homologous genes).
    #[arg(long, value_enum, default_value_t = crate::align::DecoderInit::Fresh)]
    pub target_decoder_init: crate::align::DecoderInit,
    /// Robust z-score of the cross-species misfit above which a target cell is flagged unassigned.
    #[arg(long, default_value_t = 2.0)]
    pub unassigned_threshold: f64,
    /// Label transfer scores: `interpolated` reads each pair's zero-count part (every gene's zero-count
    /// term) from a polynomial in the library size per context cell, checked against exact values at
    /// points between its nodes and replaced by exact scores where it misses by more than the scores'
    /// f32 rounding; `exact` computes it for every pair (about 2.5x slower on the bundled pair).
    #[arg(long, value_enum, default_value_t = crate::transfer::Scoring::Interpolated)]
    pub transfer_scoring: crate::transfer::Scoring,
    /// Adam learning rate of both training phases.
    #[arg(long, default_value_t = 1e-3)]
    pub learning_rate: f64,
    /// Continue an interrupted run from the checkpoints in DIR (the interrupted run's --out); the
    /// result is the one the uninterrupted run would have given.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Write a checkpoint to <out>/checkpoints every N epochs (0: none), or with `auto` after the
    /// first epoch that ends two minutes or more after the last one; and after each phase's last epoch.
    #[arg(long, default_value = "auto", value_name = "N|auto", value_parser = parse_checkpoint_every)]
    pub checkpoint_every: CheckpointEvery,
    /// Keep <out>/checkpoints after the run has finished (they are deleted by default).
    #[arg(long)]
    pub keep_checkpoints: bool,
    /// What to do when a loss or gradient is not finite.
    #[arg(long, value_enum, default_value = "stop")]
    pub on_nan: NanPolicy,
    /// With --on-nan rollback: factor applied to the learning rate at each rollback.
    #[arg(long, default_value_t = 0.5)]
    pub rollback_lr_factor: f64,
    /// With --on-nan rollback: rollbacks allowed per training phase.
    #[arg(long, default_value_t = 3)]
    pub rollback_retries: usize,
    /// Refuse to start when the run's estimated memory exceeds this (e.g. 24G; default: the memory
    /// available on this machine).
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
    pub max_memory: Option<u64>,
}

/// `--checkpoint-every`: a number of epochs, or `auto` (by time, see [`crate::train::checkpoint::AUTO_SECONDS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointEvery {
    Auto,
    Epochs(usize),
}

fn parse_checkpoint_every(s: &str) -> std::result::Result<CheckpointEvery, String> {
    if s == "auto" {
        return Ok(CheckpointEvery::Auto);
    }
    s.parse().map(CheckpointEvery::Epochs).map_err(|_| format!("'{s}' is neither a number of epochs nor 'auto'"))
}

fn parse_size_arg(s: &str) -> std::result::Result<u64, String> {
    crate::resources::parse_size(s)
}

impl RunOptions {
    /// The run's settings, with checkpoints in `<out_dir>/checkpoints`.
    pub fn run_config(&self, out_dir: &Path) -> crate::pipeline::RunConfig {
        use crate::pipeline::{AlignOptions, Checkpoints, RunConfig};
        RunConfig {
            preprocess: self.preprocess_config(),
            seed: self.seed,
            epochs_context: self.epochs_context,
            epochs_target: self.epochs_target,
            learning_rate: self.learning_rate,
            align: AlignOptions {
                top_percent: self.top_percent,
                k_neighbours: self.k_neighbours,
                members: self.members,
                inner_dropout: self.inner_dropout,
                candidate_dropout: !self.eval_candidates,
                decoder_init: self.target_decoder_init,
                space: self.alignment,
                knn_space: self.knn_space,
                candidates: self.candidates,
            },
            transfer: crate::transfer::TransferConfig {
                unassigned_threshold: self.unassigned_threshold,
                scoring: self.transfer_scoring,
                ..Default::default()
            },
            checkpoints: {
                let (every, min_seconds) = match self.checkpoint_every {
                    CheckpointEvery::Auto => (0, crate::train::checkpoint::AUTO_SECONDS),
                    CheckpointEvery::Epochs(n) => (n, 0.0),
                };
                (every > 0 || min_seconds > 0.0 || self.resume.is_some()).then(|| Checkpoints {
                    dir: out_dir.join("checkpoints"),
                    every,
                    min_seconds,
                    resume_from: self.resume.as_ref().map(|d| d.join("checkpoints")),
                })
            },
            on_nan: match self.on_nan {
                NanPolicy::Stop => crate::train::OnNan::Stop,
                NanPolicy::Rollback => {
                    crate::train::OnNan::Rollback { lr_factor: self.rollback_lr_factor, max_retries: self.rollback_retries }
                }
            },
            max_memory: self.max_memory,
            precision_requested: format!("{:?}", self.precision).to_lowercase(),
            device_requested: format!("{:?}", self.device).to_lowercase(),
        }
    }

    pub fn write_options(&self) -> crate::out::WriteOptions {
        crate::out::WriteOptions { preprocessed_h5ad: self.write_h5ad, keep_checkpoints: self.keep_checkpoints }
    }

    pub fn preprocess_config(&self) -> PreprocessConfig {
        PreprocessConfig {
            min_batch_size: self.min_batch_size,
            drop_small_batches: self.drop_small_batches,
            min_non_zero_genes: self.min_genes_fraction,
            min_cell_type_size: self.min_cell_type_size,
            n_top_genes: self.n_top_genes,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct PipelineArgs {
    /// Context dataset (annotated species): .h5ad file or folder with counts.mtx[.gz], genes.tsv, cells.tsv.
    #[arg(long)]
    pub context: PathBuf,
    /// Target dataset (species to annotate), same formats. `run` takes it more than once to align
    /// several targets to one context model (one pre-training, one joint latent space).
    #[arg(long, required = true)]
    pub target: Vec<PathBuf>,
    /// obs column with the context's experimental batch (default: all cells form one batch).
    #[arg(long)]
    pub context_batch_key: Option<String>,
    /// obs column with the context's cell-type labels.
    #[arg(long)]
    pub context_label_key: String,
    /// obs column with the target's experimental batch (default: all cells form one batch).
    #[arg(long)]
    pub target_batch_key: Option<String>,
    /// obs column with the target's labels, if known (used only for evaluation).
    #[arg(long)]
    pub target_label_key: Option<String>,
    /// Ortholog table: TSV with two columns, context gene and target gene (default: match symbols case-insensitively).
    #[arg(long)]
    pub homology: Option<PathBuf>,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// .h5ad context: read counts from `raw` (raw/X) or a layer (layers/NAME) instead of X.
    #[arg(long)]
    pub context_layer: Option<String>,
    /// .h5ad target: read counts from `raw` or a layer instead of X.
    #[arg(long)]
    pub target_layer: Option<String>,
    /// Name of the context species in outputs.
    #[arg(long, default_value = "context")]
    pub context_name: String,
    /// Name of the target species in outputs (default: `target`; with several targets, each target's
    /// file or folder name). Repeat it once per --target.
    #[arg(long)]
    pub target_name: Vec<String>,
    #[command(flatten)]
    pub opts: RunOptions,
}

impl PipelineArgs {
    /// The target names: as given, else `target` for one target and the file stems for several.
    pub fn target_names(&self) -> Result<Vec<String>> {
        let n = self.target.len();
        if !self.target_name.is_empty() && self.target_name.len() != n {
            return Err(Error::Config(format!(
                "{} --target-name for {} --target: give one name per target, or none",
                self.target_name.len(),
                n
            )));
        }
        let names: Vec<String> = if !self.target_name.is_empty() {
            self.target_name.clone()
        } else if n == 1 {
            vec!["target".into()]
        } else {
            self.target
                .iter()
                .map(|p| {
                    let f = p.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "target".into());
                    f.trim_end_matches(".gz").trim_end_matches(".h5ad").to_string()
                })
                .collect()
        };
        for (i, a) in names.iter().enumerate() {
            if names[..i].contains(a) || *a == self.context_name || a.is_empty() || a.contains(['/', '\\']) {
                return Err(Error::Config(format!(
                    "target name '{a}' is empty, contains a path separator, or is used twice (context '{}'); set one --target-name per --target",
                    self.context_name
                )));
            }
        }
        Ok(names)
    }

    /// The inputs of the k-th target.
    pub fn inputs_for(&self, k: usize) -> Result<Inputs> {
        let mut i = self.inputs_single();
        i.target = self.target[k].clone();
        i.target_name = self.target_names()?[k].clone();
        Ok(i)
    }

    /// The inputs of a command that takes one target.
    pub fn inputs(&self) -> Result<Inputs> {
        if self.target.len() != 1 {
            return Err(Error::Config(format!("this command takes one --target, got {}; `run` aligns several", self.target.len())));
        }
        self.inputs_for(0)
    }

    fn inputs_single(&self) -> Inputs {
        Inputs {
            context: self.context.clone(),
            target: self.target[0].clone(),
            context_batch_key: self.context_batch_key.clone(),
            context_label_key: self.context_label_key.clone(),
            target_batch_key: self.target_batch_key.clone(),
            target_label_key: self.target_label_key.clone(),
            homology: self.homology.clone(),
            context_name: self.context_name.clone(),
            target_name: String::new(),
            context_layer: self.context_layer.clone(),
            target_layer: self.target_layer.clone(),
            homology_fill: self.opts.homology_fill,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Folder of the bundled demo data (default: data/baron-pancreas of this source tree).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Output folder.
    #[arg(long, default_value = "results/demo")]
    pub out: PathBuf,
    /// Afterwards run `evaluate`, `similarity`, `dge` and `lrp` on the result (about 6 more minutes).
    #[arg(long)]
    pub analyses: bool,
    #[command(flatten)]
    pub opts: RunOptions,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Folder of the bundled demo data (default: data/baron-pancreas of this source tree).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Where to write the JSON report (default: print it).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Repetitions of each phase.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// The reference's metrics JSON from `run_ref.py` (run on this machine, at the same thread count):
    /// the report then gives measured speed-ups. Without it the report has none.
    #[arg(long, value_name = "JSON")]
    pub reference: Option<PathBuf>,
    #[command(flatten)]
    pub opts: RunOptions,
}

#[derive(Args, Debug, Clone)]
pub struct InspectArgs {
    /// Context dataset (.h5ad or folder).
    #[arg(long)]
    pub context: Option<PathBuf>,
    /// Target dataset (.h5ad or folder).
    #[arg(long)]
    pub target: Option<PathBuf>,
    #[arg(long)]
    pub context_batch_key: Option<String>,
    #[arg(long)]
    pub context_label_key: Option<String>,
    #[arg(long)]
    pub target_batch_key: Option<String>,
    #[arg(long)]
    pub target_label_key: Option<String>,
    /// .h5ad context: read counts from `raw` or a layer instead of X.
    #[arg(long)]
    pub context_layer: Option<String>,
    /// .h5ad target: read counts from `raw` or a layer instead of X.
    #[arg(long)]
    pub target_layer: Option<String>,
    /// Ortholog table (context gene, target gene); default: case-insensitive symbol match.
    #[arg(long)]
    pub homology: Option<PathBuf>,
    /// With --homology: also pair genes the table lists on neither side by symbol (`gaps`), or not (`none`).
    #[arg(long, value_enum, default_value_t = crate::homology::SymbolFill::Gaps)]
    pub homology_fill: crate::homology::SymbolFill,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The bundled Baron pancreas pair, found next to the sources or given explicitly.
pub fn demo_inputs(data: Option<&Path>) -> Result<Inputs> {
    let dir = data.map(Path::to_path_buf).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("data/baron-pancreas"));
    if !dir.is_dir() {
        return Err(Error::io(&dir, std::io::Error::new(std::io::ErrorKind::NotFound, "demo data folder not found (pass --data)")));
    }
    Ok(crate::pipeline::demo_like_inputs(&dir))
}

/// Entry point used by `main`.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(a) if a.target.len() > 1 => run_several(&a),
        Command::Run(a) => run_pipeline(&a.inputs()?, &a.out, &a.opts, Stages::All),
        Command::Pretrain(a) => run_pipeline(&a.inputs()?, &a.out, &a.opts, Stages::Pretrain),
        Command::Align(a) => run_pipeline(&a.inputs()?, &a.out, &a.opts, Stages::Align { models: a.out.clone() }),
        Command::Transfer(a) => run_pipeline(&a.inputs()?, &a.out, &a.opts, Stages::Transfer { models: a.out.clone() }),
        Command::Demo(a) => {
            // With the analyses the report is written once they are done, and shows their figures.
            let opts = RunOptions { no_report: a.opts.no_report || a.analyses, ..a.opts.clone() };
            run_pipeline(&demo_inputs(a.data.as_deref())?, &a.out, &opts, Stages::All)?;
            if a.analyses {
                let r = Reporter::new(a.opts.quiet);
                crate::analysis::folder::all(&a.out, &r)?;
                write_report(&a.out, &a.opts, &r)?;
            }
            Ok(())
        }
        Command::Bench(a) => bench(&a),
        Command::Robustness(a) => {
            if let Some(t) = a.threads {
                let _ = rayon::ThreadPoolBuilder::new().num_threads(t.max(1)).build_global();
            }
            robustness::robustness(&a)
        }
        Command::Inspect(a) => inspect(&a),
        Command::Simulate(a) => simulate(&a),
        Command::Evaluate(a) => analyses::evaluate(&a),
        Command::Similarity(a) => analyses::similarity(&a),
        Command::Dge(a) => analyses::dge(&a),
        Command::Lrp(a) => analyses::lrp(&a),
        Command::Report(a) => {
            let r = Reporter::new(a.quiet);
            let path = crate::out::report::write_report(&a.run, &r)?;
            r.log(&format!("wrote {} (open it in a browser)", path.display()));
            Ok(())
        }
    }
}

/// The options that act on the process, not the run (the rest are checked by
/// [`crate::pipeline::RunConfig::validate`]).
fn check_options(o: &RunOptions) -> Result<()> {
    if o.tf32 && o.device == Device::Cpu {
        return Err(Error::Config("--tf32 applies to the GPU only: add --device cuda (or auto)".into()));
    }
    // The ranking precision is set (and bf16 refused on a CPU without it) once the device is known, in
    // `on_device!`, before any work.
    match o.threads {
        Some(0) => return Err(Error::Config("--threads must be at least 1".into())),
        Some(t) => {
            // The global pool can be set once per process; a second call (tests) keeps the first.
            let _ = rayon::ThreadPoolBuilder::new().num_threads(t).build_global();
        }
        None => {}
    }
    if let Some(d) = &o.resume
        && !d.is_dir()
    {
        return Err(Error::io(
            d,
            std::io::Error::new(std::io::ErrorKind::NotFound, "--resume: no such folder (give the --out of the interrupted run)"),
        ));
    }
    Ok(())
}

/// Run `$body` with `$be` bound to the backend `--device` asks for: the CPU, the GPU (an error when
/// none can be used), or for `auto` the GPU when there is one, else the CPU with a line saying why.
macro_rules! on_device {
    ($o:expr, $be:ident => $body:expr) => {{
        let o: &$crate::cli::RunOptions = $o;
        // Without the `cuda` feature `Cuda::new` is an error saying so (engine/cuda_absent.rs).
        let gpu = match o.device {
            $crate::cli::Device::Cpu => None,
            $crate::cli::Device::Cuda | $crate::cli::Device::Auto => match $crate::engine::cuda::Cuda::new(0, o.tf32) {
                Ok(g) => {
                    if !o.quiet {
                        eprintln!("device: {}", $crate::engine::Backend::name(&g));
                    }
                    Some(g)
                }
                Err(e) if o.device == $crate::cli::Device::Cuda => return Err($crate::error::Error::Config(format!("--device cuda: {e}"))),
                Err(e) => {
                    if !o.quiet {
                        eprintln!("device auto: {e}; using the CPU");
                    }
                    None
                }
            },
        };
        if let Some(g) = gpu {
            $crate::engine::precision::set_ranking_gpu(o.precision.to_engine());
            let $be = &g;
            return $body;
        }
        $crate::engine::precision::set_ranking(o.precision.to_engine()).map_err($crate::error::Error::Config)?;
        let $be = &$crate::engine::Cpu::<f32>::new();
        $body
    }};
}

/// Run the requested stages and write the run folder.
fn run_pipeline(inputs: &Inputs, out_dir: &Path, o: &RunOptions, stages: Stages) -> Result<()> {
    check_options(o)?;
    let inputs = Inputs { homology_fill: o.homology_fill, ..inputs.clone() };
    let cfg = o.run_config(out_dir);
    let reporter = Reporter::new(o.quiet);
    on_device!(o, be => {
        let mut run = crate::pipeline::run(be, &inputs, &cfg, &stages, &reporter)?;
        crate::out::write_run(be, &mut run, out_dir, &o.write_options())?;
        reporter.log(&format!("wrote {}", out_dir.display()));
        // The report reads the folder: the run's data and models can go first (peak memory).
        drop(run);
        write_report(out_dir, o, &reporter)
    })
}

/// `report.html` at the end of a run, unless `--no-report`.
fn write_report(dir: &Path, o: &RunOptions, reporter: &Reporter) -> Result<()> {
    if o.no_report {
        return Ok(());
    }
    reporter.phase("report", 0);
    let path = crate::out::report::write_report(dir, reporter);
    reporter.phase_done();
    reporter.log(&format!("report: {} (open it in a browser)", path?.display()));
    Ok(())
}

/// `run` with several targets ([`crate::pipeline::run_targets`]): each target's complete run folder in
/// `<out>/<target name>/`, the joint latent space of all species in `<out>/latent.tsv` and a summary in
/// `<out>/metrics.json`.
fn run_several(a: &PipelineArgs) -> Result<()> {
    if a.opts.resume.is_some() {
        return Err(Error::Config("--resume works with one --target; resume each target's folder with `align` instead".into()));
    }
    check_options(&a.opts)?;
    let names = a.target_names()?;
    let dirs: Vec<PathBuf> = names.iter().map(|n| a.out.join(n)).collect();
    let targets: Vec<(Inputs, crate::pipeline::RunConfig)> =
        (0..names.len()).map(|k| Ok((a.inputs_for(k)?, a.opts.run_config(&dirs[k])))).collect::<Result<_>>()?;
    let reporter = Reporter::new(a.opts.quiet);
    let t0 = std::time::Instant::now();
    on_device!(&a.opts, be => {
        let wopts = a.opts.write_options();
        let runs = crate::pipeline::run_targets(be, &targets, &reporter, &mut |k, run| {
            crate::out::write_run(be, run, &dirs[k], &wopts)?;
            write_report(&dirs[k], &a.opts, &reporter)
        })?;
        crate::out::run::write_joint_latent(&a.out.join("latent.tsv"), &runs)?;
        let summary: Vec<serde_json::Value> = runs
            .iter()
            .enumerate()
            .map(|(k, r)| json!({"target": names[k], "input": a.target[k], "folder": dirs[k], "evaluation": r.evaluation, "timings_s": r.metrics.timings_s}))
            .collect();
        out::write_json(
            &a.out.join("metrics.json"),
            &json!({"scspecies_version": env!("CARGO_PKG_VERSION"), "context": a.context, "targets": summary, "seconds": t0.elapsed().as_secs_f64(),
                    "context_model": dirs[0].join("context_model.json")}),
        )?;
        reporter.log(&format!("wrote {} (one folder per target, joint latent.tsv)", a.out.display()));
        Ok(())
    })
}

fn inspect(a: &InspectArgs) -> Result<()> {
    if a.context.is_none() && a.target.is_none() {
        return Err(Error::Config("inspect needs --context and/or --target".into()));
    }
    let mut report = serde_json::Map::new();
    let mut text = String::new();
    let mut genes: Vec<Option<Vec<String>>> = vec![None, None];
    for (k, (role, path, layer, bk, lk)) in [
        ("context", &a.context, &a.context_layer, &a.context_batch_key, &a.context_label_key),
        ("target", &a.target, &a.target_layer, &a.target_batch_key, &a.target_label_key),
    ]
    .into_iter()
    .enumerate()
    {
        let Some(path) = path else { continue };
        let ds = read_checked(path, layer.as_deref(), &[bk.as_deref(), lk.as_deref()])?;
        let s = summarize(&ds, bk.as_deref(), lk.as_deref())?;
        text += &s.render(&format!("{role}: {}", path.display()), bk.as_deref(), lk.as_deref(), &ds.obs_keys());
        report.insert(role.into(), json!({"path": path, "summary": s, "obs_columns": ds.obs_keys()}));
        genes[k] = Some(ds.genes);
    }
    if let (Some(c), Some(t)) = (&genes[0], &genes[1]) {
        let table = a.homology.as_deref().map(crate::homology::OrthologTable::read).transpose()?;
        let h = crate::homology::match_genes_with(c, t, table.as_ref(), a.homology_fill)?;
        text += &format!(
            "homology ({})\n  homologous genes   {} ({:.1} % of context genes, {:.1} % of target genes)\n",
            h.report.method,
            thousands(h.len()),
            100.0 * h.len() as f64 / c.len() as f64,
            100.0 * h.len() as f64 / t.len() as f64
        );
        report.insert("homology".into(), json!(h.report));
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap());
    } else {
        print!("{text}");
    }
    Ok(())
}

fn simulate(a: &SimulateArgs) -> Result<()> {
    if let Some(t) = a.threads.filter(|&t| t > 0) {
        let _ = rayon::ThreadPoolBuilder::new().num_threads(t).build_global();
    }
    let cfg = crate::simulate::SimConfig {
        context_cells: a.context_cells,
        target_cells: a.target_cells,
        genes: a.genes,
        orthologous_fraction: a.orthologous_fraction,
        shared_types: a.shared_types,
        batches: a.batches,
        density: a.density,
        dropout: a.dropout,
        seed: a.seed,
    };
    let t = std::time::Instant::now();
    let r = crate::simulate::simulate(&cfg, &a.out)?;
    eprintln!(
        "wrote {}: context {} cells, target {} cells, {} genes each ({} orthologous); density {:.3} / {:.3}; median library {:.0} / {:.0}; {:.1} s",
        a.out.display(),
        cfg.context_cells,
        cfg.target_cells,
        cfg.genes,
        r.orthologous_genes,
        r.context_density,
        r.target_density,
        r.median_library[0],
        r.median_library[1],
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `bench`: the phases timed on the bundled data (or `--data`), as JSON.
fn bench(a: &BenchArgs) -> Result<()> {
    check_options(&a.opts)?;
    refuse_unused(&a.opts)?;
    let inputs = demo_inputs(a.data.as_deref())?;
    let cfg = a.opts.run_config(Path::new("."));
    let reporter = Reporter::new(a.opts.quiet);
    on_device!(&a.opts, be => {
        let report = crate::bench::bench(be, &inputs, &cfg, a.repeat, a.reference.as_deref(), &reporter)?;
        match &a.out {
            Some(p) => out::write_json(p, &report),
            None => {
                println!("{}", serde_json::to_string_pretty(&report).unwrap());
                Ok(())
            }
        }
    })
}

/// `bench` times one epoch of each phase on the bundled data: options about run length, checkpoints,
/// divergence handling, memory limits and extra outputs would not take effect, so they are refused.
fn refuse_unused(o: &RunOptions) -> Result<()> {
    let mut unused = Vec::new();
    let mut check = |used: bool, flag: &'static str| {
        if used {
            unused.push(flag);
        }
    };
    check(o.epochs_context.is_some(), "--epochs-context");
    check(o.epochs_target.is_some(), "--epochs-target");
    check(o.write_h5ad, "--write-h5ad");
    check(o.no_report, "--no-report");
    check(o.resume.is_some(), "--resume");
    check(o.checkpoint_every != CheckpointEvery::Auto, "--checkpoint-every");
    check(o.keep_checkpoints, "--keep-checkpoints");
    check(o.on_nan != NanPolicy::Stop, "--on-nan");
    check(o.rollback_lr_factor != 0.5, "--rollback-lr-factor");
    check(o.rollback_retries != 3, "--rollback-retries");
    check(o.max_memory.is_some(), "--max-memory");
    if unused.is_empty() {
        return Ok(());
    }
    Err(crate::error::Error::Config(format!(
        "bench does not use {}: it times one epoch of each phase, without checkpoints or a memory check",
        unused.join(", ")
    )))
}
