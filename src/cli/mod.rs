//! The `scspecies` command line. Every command returns a `Result`; `main` prints the error (which names
//! the file, key or value) and exits non-zero.

use crate::error::{Error, Result};
use crate::out;
use crate::pipeline::{Inputs, PreparedPair, prepare, read_checked};
use crate::preprocess::PreprocessConfig;
use crate::summary::{summarize, thousands};
use clap::{Args, Parser, Subcommand, ValueEnum};

mod analyses;
mod bench;
mod robustness;
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
    fn to_engine(self) -> crate::engine::precision::Precision {
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
    /// transfer): `bf16` (f32 accumulation: AVX512-BF16 on the CPU, refused where it lacks it; tensor
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
    /// No progress output (errors still go to stderr).
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
    #[arg(long, value_enum, default_value_t = crate::align::knn::KnnSpace::Informative)]
    pub knn_space: crate::align::knn::KnnSpace,
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
    /// Adam learning rate of both training phases.
    #[arg(long, default_value_t = 1e-3)]
    pub learning_rate: f64,
    /// Continue an interrupted run from the checkpoints in DIR (the interrupted run's --out); the
    /// result is the one the uninterrupted run would have given.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Write a checkpoint every N epochs (0: none) to <out>/checkpoints.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub checkpoint_every: usize,
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

fn parse_size_arg(s: &str) -> std::result::Result<u64, String> {
    crate::resources::parse_size(s)
}

impl RunOptions {
    /// Checkpoints and divergence policy of one training phase (the fingerprint is set by the pipeline).
    pub fn guard(&self, out_dir: &Path, phase: &str) -> crate::train::Guard {
        use crate::train::{Checkpointing, Guard, OnNan};
        let file = format!("{phase}.safetensors");
        let checkpoint = (self.checkpoint_every > 0 || self.resume.is_some()).then(|| Checkpointing {
            path: out_dir.join("checkpoints").join(&file),
            resume_from: self.resume.as_ref().map(|d| d.join("checkpoints").join(&file)),
            fingerprint: serde_json::Value::Null,
            every: self.checkpoint_every,
        });
        let on_nan = match self.on_nan {
            NanPolicy::Stop => OnNan::Stop,
            NanPolicy::Rollback => OnNan::Rollback { lr_factor: self.rollback_lr_factor, max_retries: self.rollback_retries },
        };
        Guard { checkpoint, on_nan }
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
    /// obs column with the context's experimental batch.
    #[arg(long)]
    pub context_batch_key: String,
    /// obs column with the context's cell-type labels.
    #[arg(long)]
    pub context_label_key: String,
    /// obs column with the target's experimental batch.
    #[arg(long)]
    pub target_batch_key: String,
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

/// A spinner on stderr for long work (hidden when quiet or when stderr is not a terminal) and a log
/// function whose lines print above it.
fn progress(quiet: bool, what: &str) -> (indicatif::ProgressBar, impl FnMut(&str)) {
    let pb = if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new_spinner() };
    pb.set_style(indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").unwrap());
    pb.set_message(what.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    let bar = pb.clone();
    let log = move |m: &str| {
        if quiet {
        } else if bar.is_hidden() {
            eprintln!("{m}");
        } else {
            bar.println(m);
        }
    };
    (pb, log)
}

/// Entry point used by `main`.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(a) if a.target.len() > 1 => run_several(&a),
        Command::Run(a) => run_pipeline(&a.inputs()?, &a.out, &a.opts, Stages::All),
        Command::Pretrain(a) => run_pipeline(&a.inputs()?, &a.out, &a.opts, Stages::Pretrain),
        Command::Align(a) => run_pipeline(&a.inputs()?, &a.out, &a.opts, Stages::Align),
        Command::Transfer(a) => run_pipeline(&a.inputs()?, &a.out, &a.opts, Stages::Transfer),
        Command::Demo(a) => {
            run_pipeline(&demo_inputs(a.data.as_deref())?, &a.out, &a.opts, Stages::All)?;
            if a.analyses {
                analyses::all(&a.out, a.opts.quiet)?;
            }
            Ok(())
        }
        Command::Bench(a) => bench::bench(&a),
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
    }
}

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
    if !(o.learning_rate > 0.0 && o.learning_rate.is_finite()) {
        return Err(Error::Config(format!("--learning-rate must be a positive number, got {}", o.learning_rate)));
    }
    if o.on_nan == NanPolicy::Rollback {
        if !(o.rollback_lr_factor > 0.0 && o.rollback_lr_factor < 1.0) {
            return Err(Error::Config(format!("--rollback-lr-factor must be in (0, 1), got {}", o.rollback_lr_factor)));
        }
        if o.checkpoint_every == 0 {
            return Err(Error::Config("--on-nan rollback needs checkpoints: --checkpoint-every must be at least 1".into()));
        }
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

/// The alignment settings the options ask for (every alignment option is applied or refused here).
pub fn align_config(o: &RunOptions, n_target: usize) -> Result<crate::align::AlignConfig> {
    let mut acfg = crate::align::AlignConfig::default_for(n_target, o.seed);
    if let Some(e) = o.epochs_target {
        acfg.epochs = e;
    }
    if !(0.0..=100.0).contains(&o.top_percent) {
        return Err(Error::Config(format!("--top-percent must be in [0, 100], got {}", o.top_percent)));
    }
    acfg.top_percent = o.top_percent;
    if o.k_neighbours == 0 {
        return Err(Error::Config("--k-neighbours must be at least 1".into()));
    }
    if o.members == 0 {
        return Err(Error::Config("--members must be at least 1".into()));
    }
    acfg.k = o.k_neighbours;
    acfg.adam.lr = o.learning_rate;
    acfg.inner_dropout = o.inner_dropout;
    acfg.candidate_dropout = !o.eval_candidates;
    acfg.decoder_init = o.target_decoder_init;
    acfg.knn_space = o.knn_space;
    acfg.candidates = o.candidates;
    acfg.space = o.alignment;
    if o.alignment == crate::model::AlignSpace::Latent && o.inner_dropout {
        return Err(Error::Config("--inner-dropout applies to the frozen shared inner encoder of --alignment inter; in latent mode the inner encoder trains with dropout anyway".into()));
    }
    acfg.members = o.members;
    Ok(acfg)
}

/// Where consensus member `m` of a run's target model is saved (member 0: `target_model`).
pub fn member_stem(out_dir: &Path, m: usize) -> PathBuf {
    if m == 0 { out_dir.join("target_model") } else { out_dir.join(format!("target_model_member{m}")) }
}

/// The memory a run on these prepared data will need at its peak.
fn memory_estimate(pair: &PreparedPair) -> crate::resources::MemoryEstimate {
    use crate::model::ModelConfig;
    let (c, t) = (&pair.context, &pair.target);
    let pc = ModelConfig::scspecies(c.data.n_genes(), c.n_batches(), pair.homology.context.clone(), 0.0).n_params();
    let pt = ModelConfig::scspecies(t.data.n_genes(), t.n_batches(), pair.homology.target.clone(), 0.0).n_params();
    crate::resources::estimate(
        (c.data.n_genes(), t.data.n_genes()),
        (c.n_cells(), t.n_cells()),
        (c.data.counts.nnz(), t.data.counts.nnz()),
        (c.n_batches(), t.n_batches()),
        (pc, pt),
        128,
    )
}

/// After a successful command the checkpoints are no longer needed (unless kept).
fn finish_checkpoints(out_dir: &Path, o: &RunOptions) {
    if !o.keep_checkpoints {
        let dir = out_dir.join("checkpoints");
        for phase in ["context", "target"] {
            let _ = std::fs::remove_file(dir.join(format!("{phase}.safetensors")));
        }
        let _ = std::fs::remove_dir(&dir);
    }
}

/// A progress bar over all training steps, with the reference's running means.
fn training_bar(quiet: bool, total: u64) -> indicatif::ProgressBar {
    let pb = if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(total) };
    pb.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:25}] {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
            .unwrap()
            .progress_chars("=> "),
    );
    pb
}

/// The progress bar's message after a training step: position, speed and the four running means.
fn step_message(p: &crate::train::Progress, names: [&str; 4]) -> String {
    let r = &p.running;
    format!(
        "epoch {}/{} step {}/{} | {:.1} ms/step | {} {:.1} {} {:.1} {} {:.2} {} {:.3}",
        p.epoch + 1,
        p.epochs,
        p.step + 1,
        p.steps,
        p.ms_per_step,
        names[0],
        r[0],
        names[1],
        r[1],
        names[2],
        r[2],
        names[3],
        r[3]
    )
}

/// A line above a progress bar (or on stderr when the bar is hidden), unless quiet.
fn bar_log(bar: &indicatif::ProgressBar, quiet: bool, m: &str) {
    if quiet {
    } else if bar.is_hidden() {
        eprintln!("{m}");
    } else {
        bar.println(m);
    }
}

/// Pre-train the context model with a progress bar, and write its files.
fn pretrain_stage<B: crate::engine::Backend>(
    be: &B,
    pair: &PreparedPair,
    out_dir: &Path,
    o: &RunOptions,
    log: &mut dyn FnMut(&str),
) -> Result<(crate::pipeline::ContextRun<B>, serde_json::Value)> {
    let n = pair.context.n_cells();
    let mut tcfg = crate::train::TrainConfig::default_for(n, o.seed);
    if let Some(e) = o.epochs_context {
        tcfg.epochs = e;
    }
    tcfg.adam.lr = o.learning_rate;
    let steps = (n / tcfg.batch_size.min(n)).max(1);
    let bar = training_bar(o.quiet, (tcfg.epochs * steps) as u64);
    bar.set_prefix(format!("pretrain {}", pair.context.name));
    let mut lines = Vec::new();
    let guard = o.guard(out_dir, "context");
    let res = crate::pipeline::pretrain_guarded(
        be,
        pair,
        &tcfg,
        &guard,
        &mut |p| {
            bar.inc(1);
            bar.set_message(step_message(p, ["nELBO", "NLL", "KL_z", "KL_l"]));
            if let Some(e) = p.finished_epoch {
                lines.push(format!(
                    "epoch {:>3}: nELBO {:.2} NLL {:.2} KL_z {:.3} KL_l {:.4} beta {:.2} ({:.1} ms/step)",
                    e.epoch, e.nelbo, e.nll, e.kl_z, e.kl_l, e.beta, e.ms_per_step
                ));
            }
        },
        &mut |m| bar_log(&bar, o.quiet, m),
    );
    bar.finish_and_clear();
    let run = res?;
    if let (Some(first), Some(last)) = (lines.first(), lines.last()) {
        log(first);
        if lines.len() > 1 {
            log(last);
        }
    }
    crate::model::io::save(&run.model, be, &run.meta, &out_dir.join("context_model"))?;
    out::write_tsv(
        &out_dir.join("context_training.tsv"),
        &["epoch", "beta", "nelbo", "nll", "kl_z", "kl_l", "ms_per_step"],
        run.history.iter().map(|e| {
            vec![
                e.epoch.to_string(),
                format!("{}", e.beta),
                format!("{}", e.nelbo),
                format!("{}", e.nll),
                format!("{}", e.kl_z),
                format!("{}", e.kl_l),
                format!("{:.3}", e.ms_per_step),
            ]
        }),
    )?;
    let last = run.history.last();
    let summary = json!({
        "backend": be.name(),
        "epochs": tcfg.epochs,
        "steps_per_epoch": steps,
        "train_seconds": run.train_seconds,
        "ms_per_step": last.map(|e| e.ms_per_step),
        "final_nelbo": last.map(|e| e.nelbo),
        "final_nll": last.map(|e| e.nll),
        "parameters": run.model.n_params(be),
    });
    Ok((run, summary))
}

/// Which stages a command runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stages {
    /// Everything: preprocess, pre-train, kNN, align, transfer.
    All,
    /// Stop after saving the context model.
    Pretrain,
    /// Load the context model from `--out`, then kNN, align, transfer.
    Align,
    /// Load both models from `--out`, then kNN (for its labels) and transfer.
    Transfer,
}

/// Run `$body` with `$be` bound to the backend `--device` asks for: the CPU, the GPU (an error when
/// none can be used), or for `auto` the GPU when there is one, else the CPU with a line saying why.
macro_rules! on_device {
    ($o:expr, $be:ident => $body:expr) => {{
        let o: &$crate::cli::RunOptions = $o;
        #[cfg(feature = "cuda")]
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
        #[cfg(not(feature = "cuda"))]
        if o.device == $crate::cli::Device::Cuda {
            return Err($crate::error::Error::Config(
                "--device cuda: this build has no CUDA support (built without the `cuda` feature)".into(),
            ));
        }
        #[cfg(feature = "cuda")]
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
pub(crate) use on_device;

/// Run the requested stages and write their outputs. Nothing is written unless preprocessing succeeded.
fn run_pipeline(inputs: &Inputs, out_dir: &Path, o: &RunOptions, stages: Stages) -> Result<()> {
    check_options(o)?;
    let inputs = &Inputs { homology_fill: o.homology_fill, ..inputs.clone() };
    on_device!(o, be => run_pipeline_on(be, inputs, out_dir, o, stages))
}

fn run_pipeline_on<B: crate::engine::Backend>(be: &B, inputs: &Inputs, out_dir: &Path, o: &RunOptions, stages: Stages) -> Result<()> {
    let cfg = o.preprocess_config();
    let (bar, mut log) = progress(o.quiet, "reading and preprocessing");
    let t0 = std::time::Instant::now();
    let pair = prepare(inputs, &cfg, &mut log);
    bar.finish_and_clear();
    let pair = pair?;
    let ctx_stem = out_dir.join("context_model");
    let tgt_stem = out_dir.join("target_model");
    for (needed, stem) in [(stages != Stages::All && stages != Stages::Pretrain, &ctx_stem), (stages == Stages::Transfer, &tgt_stem)] {
        if needed && !stem.with_extension("json").is_file() {
            return Err(Error::io(
                stem.with_extension("json"),
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no saved model here: run `scspecies pretrain` (and `align`) with this --out first",
                ),
            ));
        }
    }
    let mem = memory_estimate(&pair);
    crate::resources::check(&mem, o.max_memory)?;
    log(&format!(
        "estimated peak memory {} (limit {})",
        crate::resources::gib(mem.total),
        o.max_memory.or_else(crate::resources::available).map(crate::resources::gib).unwrap_or_else(|| "unknown".into())
    ));
    let t_write = std::time::Instant::now();
    out::create_out_dir(out_dir)?;
    write_pair_outputs(&pair, out_dir, o.write_h5ad)?;
    let mut timings = pair.timings.clone();
    timings.push(("write".into(), t_write.elapsed().as_secs_f64()));
    let mut metrics = json!({
        "scspecies_version": env!("CARGO_PKG_VERSION"),
        "inputs": inputs,
        "preprocess_config": cfg,
        "seed": o.seed,
        "device": o.device,
        "backend": be.name(),
        "precision": {
            "requested": format!("{:?}", o.precision).to_lowercase(),
            "ranking_gemms": crate::engine::precision::ranking_precision(),
            "training_gemms": "f32",
        },
        "preprocessing": { &pair.context.name: pair.context.report, &pair.target.name: pair.target.report },
        "library_prior": {
            &pair.context.name: prior_json(&pair.context),
            &pair.target.name: prior_json(&pair.target),
        },
        "homology": pair.homology.report,
        "memory": { "estimate_bytes": mem, "limit_bytes": o.max_memory.or_else(crate::resources::available) },
    });
    // Context model: trained here or loaded.
    let t = std::time::Instant::now();
    let (ctx_model, ctx_repr) = if matches!(stages, Stages::All | Stages::Pretrain) {
        let (run, summary) = pretrain_stage(be, &pair, out_dir, o, &mut log)?;
        metrics["pretrain"] = summary;
        timings.push(("pretrain".into(), t.elapsed().as_secs_f64()));
        (run.model, run.repr)
    } else {
        let (m, meta) = crate::model::io::load(be, &ctx_stem)?;
        check_model_genes(&meta, &pair.context, &ctx_stem)?;
        let data = crate::train::TrainData::of(&pair.context);
        let repr = crate::train::represent(be, &m, &data, crate::method::REPRESENT_BATCH);
        (m, repr)
    };
    if stages == Stages::Pretrain {
        write_latent(out_dir, &pair, &ctx_repr, None)?;
        metrics["timings_s"] = timings_json(&timings, t0);
        metrics["memory"]["peak_rss_bytes"] = json!(crate::resources::peak_rss());
        out::write_json(&out_dir.join("metrics.json"), &metrics)?;
        finish_checkpoints(out_dir, o);
        log(&format!("wrote {}", out_dir.display()));
        return Ok(());
    }
    let n_t = pair.target.n_cells();
    let mut acfg = align_config(o, n_t)?;
    if stages == Stages::Transfer {
        acfg.epochs = 0;
    }
    let tcfg = crate::transfer::TransferConfig { unassigned_threshold: o.unassigned_threshold, ..Default::default() };
    let trained = if stages == Stages::Transfer {
        // Every member the alignment saved; --members must match what was trained.
        let mut v = Vec::new();
        for m in 0..acfg.members {
            let stem = member_stem(out_dir, m);
            if m > 0 && !stem.with_extension("json").is_file() {
                return Err(Error::Config(format!(
                    "--members {} but {} holds {m} aligned target model(s) (no {}): use the --members of the alignment",
                    acfg.members,
                    out_dir.display(),
                    stem.with_extension("json").display()
                )));
            }
            let (model, meta) = crate::model::io::load(be, &stem)?;
            check_model_genes(&meta, &pair.target, &stem)?;
            v.push((model, meta));
        }
        Some(v)
    } else {
        None
    };
    let steps = (n_t / acfg.batch_size.min(n_t)).max(1);
    let bar = training_bar(o.quiet, (acfg.epochs * steps * acfg.members) as u64);
    bar.set_prefix(format!("align {}", pair.target.name));
    let run = crate::pipeline::align_and_transfer(
        be,
        &pair,
        &ctx_model,
        &ctx_repr,
        &acfg,
        &tcfg,
        trained,
        &o.guard(out_dir, "target"),
        &mut |p| {
            bar.inc(1);
            bar.set_message(step_message(p, ["loss", "NLL", "KL_z", "eta*Align"]));
        },
        &mut log,
    );
    bar.finish_and_clear();
    let run = run?;
    timings.extend(run.timings.iter().cloned());
    if stages != Stages::Transfer {
        for (m, member) in run.members.iter().enumerate() {
            crate::model::io::save(&member.model, be, &member.meta, &member_stem(out_dir, m))?;
        }
    }
    let eval = write_alignment_outputs(out_dir, &pair, &ctx_repr, &run, inputs)?;
    if let Some(last) = run.history().last() {
        log(&format!(
            "target epoch {:>3}: loss {:.2} NLL {:.2} KL_z {:.3} align {:.3} ({:.0} aligned cells per step, {:.1} ms/step)",
            last.stats.epoch, last.stats.nelbo, last.stats.nll, last.stats.kl_z, last.align, last.aligned_per_step, last.stats.ms_per_step
        ));
    }
    let flagged = run.transfer.unassigned.iter().filter(|&&u| u).count();
    log(&format!("label transfer: {} of {} target cells flagged unassigned", flagged, n_t));
    if let Some(e) = &eval {
        log(&format!(
            "balanced accuracy on target cells of shared types: latent transfer {:.3}, data-level kNN {:.3}",
            e["balanced_accuracy"]["latent_transfer"].as_f64().unwrap_or(f64::NAN),
            e["balanced_accuracy"]["data_level_knn"].as_f64().unwrap_or(f64::NAN)
        ));
        metrics["evaluation"] = e.clone();
    }
    metrics["align"] = json!({
        "epochs": acfg.epochs,
        "config": acfg,
        "history": run.history(),
        "members": run.members.iter().map(|m| m.seed).collect::<Vec<_>>(),
        "data_knn_genes": run.knn_genes,
        "aligned_cells": run.aligned.iter().filter(|&&a| a).count(),
        "unassigned_cells": flagged,
        "transfer_config": tcfg,
    });
    metrics["timings_s"] = timings_json(&timings, t0);
    metrics["memory"]["peak_rss_bytes"] = json!(crate::resources::peak_rss());
    out::write_json(&out_dir.join("metrics.json"), &metrics)?;
    finish_checkpoints(out_dir, o);
    log(&format!("wrote {}", out_dir.display()));
    Ok(())
}

/// `run` with several targets: pre-train once (with the first target, whose homologous genes set the
/// context decoder's softmax split), align every target to that context model in `<out>/<target name>/`
/// (each a complete single-target run folder), and write the joint latent space of all species to
/// `<out>/latent.tsv` with a summary in `<out>/metrics.json`.
fn run_several(a: &PipelineArgs) -> Result<()> {
    if a.opts.resume.is_some() {
        return Err(Error::Config("--resume works with one --target; resume each target's folder with `align` instead".into()));
    }
    let names = a.target_names()?;
    let t0 = std::time::Instant::now();
    out::create_out_dir(&a.out)?;
    let dirs: Vec<PathBuf> = names.iter().map(|n| a.out.join(n)).collect();
    let mut summary = Vec::new();
    for (k, dir) in dirs.iter().enumerate() {
        if !a.opts.quiet {
            eprintln!("== target {} of {}: {} ({})", k + 1, names.len(), names[k], a.target[k].display());
        }
        if k == 0 {
            run_pipeline(&a.inputs_for(0)?, dir, &a.opts, Stages::All)?;
        } else {
            out::create_out_dir(dir)?;
            for f in ["context_model.json", "context_model.safetensors"] {
                std::fs::copy(dirs[0].join(f), dir.join(f)).map_err(|e| Error::write(dir.join(f), e))?;
            }
            run_pipeline(&a.inputs_for(k)?, dir, &a.opts, Stages::Align)?;
        }
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).map_err(|e| Error::io(dir.join("metrics.json"), e))?)
                .map_err(|e| Error::format(dir.join("metrics.json"), e.to_string()))?;
        summary.push(json!({"target": names[k], "input": a.target[k], "folder": dir, "evaluation": m.get("evaluation"), "timings_s": m.get("timings_s")}));
    }
    // The joint latent space: context and first target from the first folder, then each other target.
    let mut lines: Vec<String> = Vec::new();
    for (k, dir) in dirs.iter().enumerate() {
        let p = dir.join("latent.tsv");
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        for (i, line) in text.lines().enumerate() {
            let dataset = line.split('\t').nth(1).unwrap_or("");
            if (i == 0 && k == 0) || (i > 0 && (k == 0 || dataset == names[k])) {
                lines.push(line.to_string());
            }
        }
    }
    out::write_bytes_atomic(&a.out.join("latent.tsv"), (lines.join("\n") + "\n").as_bytes())?;
    out::write_json(
        &a.out.join("metrics.json"),
        &json!({"scspecies_version": env!("CARGO_PKG_VERSION"), "context": a.context, "targets": summary, "seconds": t0.elapsed().as_secs_f64(),
                "context_model": dirs[0].join("context_model.json")}),
    )?;
    if !a.opts.quiet {
        eprintln!("wrote {} (one folder per target, joint latent.tsv)", a.out.display());
    }
    Ok(())
}

fn timings_json(timings: &[(String, f64)], t0: std::time::Instant) -> serde_json::Value {
    let mut m: serde_json::Map<String, serde_json::Value> = timings.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    m.insert("total".into(), json!(t0.elapsed().as_secs_f64()));
    serde_json::Value::Object(m)
}

/// A saved model must have been trained on exactly these genes and batches.
fn check_model_genes(meta: &crate::model::io::ModelFile, p: &crate::preprocess::Prepared, stem: &Path) -> Result<()> {
    if meta.genes != p.data.genes || meta.batches != p.batch_names {
        return Err(Error::format(
            stem.with_extension("json"),
            format!(
                "this model was trained on {} genes and batches {:?}, but the preprocessed {} data have {} genes and batches {:?}: use the same inputs and options as for training",
                meta.genes.len(),
                meta.batches,
                p.name,
                p.data.n_genes(),
                p.batch_names
            ),
        ));
    }
    Ok(())
}

/// `latent.tsv`: cell, dataset, z_1..z_L for the context and (if given) the target.
fn write_latent(
    out_dir: &Path,
    pair: &PreparedPair,
    ctx: &crate::train::Representation,
    tgt: Option<&crate::train::Representation>,
) -> Result<()> {
    let l = ctx.latent;
    let mut header: Vec<String> = vec!["cell".into(), "dataset".into()];
    header.extend((1..=l).map(|k| format!("z_{k}")));
    let header_ref: Vec<&str> = header.iter().map(|s| s.as_str()).collect();
    let mut rows = Vec::new();
    for (p, r) in [(&pair.context, Some(ctx)), (&pair.target, tgt)] {
        let Some(r) = r else { continue };
        for i in 0..p.n_cells() {
            let mut row = vec![p.data.cells[i].clone(), p.name.clone()];
            row.extend(r.z_mu[i * l..(i + 1) * l].iter().map(|v| format!("{v}")));
            rows.push(row);
        }
    }
    out::write_tsv(&out_dir.join("latent.tsv"), &header_ref, rows)
}

/// Predictions, latent spaces, results.h5ad; returns the evaluation when target labels are known.
fn write_alignment_outputs<B: crate::engine::Backend>(
    out_dir: &Path,
    pair: &PreparedPair,
    ctx_repr: &crate::train::Representation,
    run: &crate::pipeline::AlignRun<B>,
    inputs: &Inputs,
) -> Result<Option<serde_json::Value>> {
    use crate::out::h5ad::{AnnData, Uns, Values};
    let (ctx, tgt) = (&pair.context, &pair.target);
    let names = &run.meta().labels;
    let tr = &run.transfer;
    let truth: Option<Vec<&str>> = tgt.labels.as_ref().map(|l| (0..tgt.n_cells()).map(|i| l.value(i).unwrap_or("unknown")).collect());
    let mut header = vec![
        "cell",
        "predicted_label",
        "confidence",
        "member_agreement",
        "vote_share",
        "best_similarity",
        "best_similarity_per_count",
        "novelty",
        "unassigned",
        "knn_label",
        "agreement",
        "top_percent",
        "aligned",
    ];
    if truth.is_some() {
        header.push("true_label");
    }
    out::write_tsv(
        &out_dir.join("target_predictions.tsv"),
        &header,
        (0..tgt.n_cells()).map(|i| {
            let mut r = vec![
                tgt.data.cells[i].clone(),
                names[tr.pred[i] as usize].clone(),
                format!("{:.4}", tr.confidence[i]),
                format!("{:.4}", tr.member_agreement[i]),
                format!("{:.4}", tr.vote_share[i]),
                format!("{:.4}", tr.best_similarity[i]),
                format!("{:.6}", tr.best_per_count[i]),
                format!("{:.5}", tr.novelty[i]),
                tr.unassigned[i].to_string(),
                names[run.knn_label[i] as usize].clone(),
                run.agreement[i].to_string(),
                format!("{}", run.top_percent[i]),
                run.aligned[i].to_string(),
            ];
            if let Some(t) = &truth {
                r.push(t[i].to_string());
            }
            r
        }),
    )?;
    write_latent(out_dir, pair, ctx_repr, Some(run.repr()))?;
    // results.h5ad: both species, latent means in obsm, predictions in obs; var = homologous genes.
    let l = ctx_repr.latent;
    let nc = ctx.n_cells();
    let nt = tgt.n_cells();
    let mut obs_names: Vec<String> = ctx.data.cells.iter().map(|c| format!("{c}_{}", ctx.name)).collect();
    obs_names.extend(tgt.data.cells.iter().map(|c| format!("{c}_{}", tgt.name)));
    let mut dataset = vec![ctx.name.clone(); nc];
    dataset.extend(vec![tgt.name.clone(); nt]);
    let mut batch: Vec<String> = ctx.batch.iter().map(|&b| ctx.batch_names[b as usize].clone()).collect();
    batch.extend(tgt.batch.iter().map(|&b| tgt.batch_names[b as usize].clone()));
    let ctx_l = ctx.labels.as_ref().unwrap();
    let mut label: Vec<String> = (0..nc).map(|i| ctx_l.value(i).unwrap().to_string()).collect();
    label.extend((0..nt).map(|i| names[tr.pred[i] as usize].clone()));
    let mut z = ctx_repr.z_mu.clone();
    z.extend_from_slice(&run.repr().z_mu);
    let mut obs = vec![
        ("dataset".to_string(), Values::Categorical(crate::data::Categorical::from_strings(&dataset))),
        ("batch".to_string(), Values::Categorical(crate::data::Categorical::from_strings(&batch))),
        ("cell_type".to_string(), Values::Categorical(crate::data::Categorical::from_strings(&label))),
    ];
    let pad = |v: Vec<f64>| -> Vec<f64> {
        let mut o = vec![f64::NAN; nc];
        o.extend(v);
        o
    };
    obs.push(("confidence".into(), Values::F64(pad(tr.confidence.clone()))));
    obs.push(("member_agreement".into(), Values::F64(pad(tr.member_agreement.clone()))));
    obs.push(("vote_share".into(), Values::F64(pad(tr.vote_share.clone()))));
    obs.push(("best_similarity".into(), Values::F64(pad(tr.best_similarity.clone()))));
    obs.push(("novelty".into(), Values::F64(pad(tr.novelty.clone()))));
    // Context cells carry their own labels: never unassigned.
    let mut un = vec![false; nc];
    un.extend(tr.unassigned.iter().copied());
    obs.push(("unassigned".into(), Values::Bool(un)));
    let mut knn_l = vec![String::new(); nc];
    knn_l.extend(run.knn_label.iter().map(|&k| names[k as usize].clone()));
    obs.push(("knn_label".into(), Values::Categorical(crate::data::Categorical::from_strings(&knn_l))));
    if let Some(t) = &truth {
        let mut tl: Vec<String> = (0..nc).map(|i| ctx_l.value(i).unwrap().to_string()).collect();
        tl.extend(t.iter().map(|s| s.to_string()));
        obs.push(("true_label".into(), Values::Categorical(crate::data::Categorical::from_strings(&tl))));
    }
    let ad = AnnData {
        x: None,
        obs_names,
        obs,
        var_names: pair.homology.names.clone(),
        var: vec![],
        obsm: vec![("X_scspecies".into(), l, z)],
        uns: vec![(
            "scspecies".into(),
            Uns::Dict(vec![
                ("version".into(), Uns::Str(env!("CARGO_PKG_VERSION").into())),
                ("context".into(), Uns::Str(inputs.context.display().to_string())),
                ("target".into(), Uns::Str(inputs.target.display().to_string())),
                ("context_labels".into(), Uns::Strings(names.clone())),
            ]),
        )],
    };
    ad.write(&out_dir.join("results.h5ad"))?;
    let Some(t) = truth else { return Ok(None) };
    let (bas, per) = crate::pipeline::balanced_accuracy(&t, &tr.pred, names);
    let (bas_knn, per_knn) = crate::pipeline::balanced_accuracy(&t, &run.knn_label, names);
    if per.is_empty() {
        eprintln!("warning: no target label (--target-label-key) matches a context label, so no balanced accuracy can be computed");
    }
    // Unassigned rates on shared and unshared true types.
    let shared: Vec<bool> = t.iter().map(|x| names.iter().any(|n| n == x)).collect();
    let rate = |want: bool| {
        let idx: Vec<usize> = (0..nt).filter(|&i| shared[i] == want).collect();
        let f = idx.iter().filter(|&&i| tr.unassigned[i]).count();
        json!({"cells": idx.len(), "unassigned": f, "rate": if idx.is_empty() { f64::NAN } else { f as f64 / idx.len() as f64 }})
    };
    let members: Vec<serde_json::Value> = run
        .members
        .iter()
        .zip(&tr.member_pred)
        .map(|(m, p)| {
            let (b, per) = crate::pipeline::balanced_accuracy(&t, p, names);
            json!({"seed": m.seed, "balanced_accuracy": b, "recall_per_type": per.iter().map(|x| json!({"type": x.0, "recall": x.2})).collect::<Vec<_>>()})
        })
        .collect();
    let calibration = crate::pipeline::calibration(&t, &tr.pred, &tr.confidence, &tr.unassigned, names);
    Ok(Some(json!({
        "balanced_accuracy": {"latent_transfer": bas, "data_level_knn": bas_knn},
        "members": members,
        "calibration": calibration,
        "recall_per_type": per.iter().zip(&per_knn).map(|(a, b)| json!({"type": a.0, "cells": a.1, "latent_transfer": a.2, "data_level_knn": b.2})).collect::<Vec<_>>(),
        "unassigned": {"shared_types": rate(true), "types_absent_from_context": rate(false)},
    })))
}

fn prior_json(p: &crate::preprocess::Prepared) -> serde_json::Value {
    json!({
        "lib_mu_add": p.lib_mu_add,
        "batches": p.batch_names.iter().zip(&p.batch_prior).map(|(b, (m, s))| json!({"batch": b, "log_mean": m, "log_std": s})).collect::<Vec<_>>(),
    })
}

fn write_pair_outputs(pair: &PreparedPair, dir: &Path, h5ad: bool) -> Result<()> {
    let h = &pair.homology;
    out::write_tsv(
        &dir.join("homologous_genes.tsv"),
        &["name", "context_gene", "target_gene", "context_index", "target_index"],
        (0..h.len()).map(|k| {
            vec![
                h.names[k].clone(),
                pair.context.data.genes[h.context[k]].clone(),
                pair.target.data.genes[h.target[k]].clone(),
                h.context[k].to_string(),
                h.target[k].to_string(),
            ]
        }),
    )?;
    let mut rows = Vec::new();
    for p in [&pair.context, &pair.target] {
        for i in 0..p.n_cells() {
            rows.push(vec![
                p.data.cells[i].clone(),
                p.name.clone(),
                p.batch_names[p.batch[i] as usize].clone(),
                p.labels.as_ref().and_then(|l| l.value(i)).unwrap_or("unknown").to_string(),
                format!("{}", p.library_log_mean[i]),
                format!("{}", p.library_log_std[i]),
                p.n_genes[i].to_string(),
            ]);
        }
    }
    out::write_tsv(
        &dir.join("cells_preprocessed.tsv"),
        &["cell", "dataset", "batch", "label", "library_log_mean", "library_log_std", "n_genes"],
        rows,
    )?;
    if h5ad {
        for (p, hom) in [(&pair.context, &h.context), (&pair.target, &h.target)] {
            preprocessed_anndata(p, hom).write(&dir.join(format!("{}_preprocessed.h5ad", p.name)))?;
        }
    }
    Ok(())
}

/// A preprocessed dataset as AnnData, with the keys the reference's `create_mdata` produces.
pub fn preprocessed_anndata(p: &crate::preprocess::Prepared, homologous: &[usize]) -> crate::out::h5ad::AnnData {
    use crate::data::Categorical;
    use crate::out::h5ad::{AnnData, Uns, Values};
    let batch = Categorical { codes: p.batch.iter().map(|&b| Some(b)).collect(), categories: p.batch_names.clone() };
    let mut obs = vec![
        ("dataset".to_string(), Values::Strings(vec![p.name.clone(); p.n_cells()])),
        ("batch".to_string(), Values::Categorical(batch)),
        ("library_log_mean".to_string(), Values::F32(p.library_log_mean.clone())),
        ("library_log_std".to_string(), Values::F32(p.library_log_std.clone())),
        ("n_genes".to_string(), Values::I64(p.n_genes.iter().map(|&x| x as i64).collect())),
    ];
    if let Some(l) = &p.labels {
        obs.push(("label".to_string(), Values::Categorical(l.clone())));
    }
    let mut hom = vec![0i64; p.data.n_genes()];
    for &g in homologous {
        hom[g] = 1;
    }
    AnnData {
        x: Some(p.data.counts.clone()),
        obs_names: p.data.cells.iter().map(|c| format!("{c}_{}", p.name)).collect(),
        obs,
        var_names: p.data.genes.clone(),
        var: vec![("homologous".to_string(), Values::I64(hom))],
        obsm: vec![("batch_label_enc".to_string(), p.n_batches(), p.batch_one_hot())],
        uns: vec![(
            "metadata".to_string(),
            Uns::Dict(vec![
                ("name".into(), Uns::Str(p.name.clone())),
                ("source".into(), Uns::Str(p.data.source.display().to_string())),
                ("lib_mu_add".into(), Uns::F64(p.lib_mu_add)),
                ("scspecies_version".into(), Uns::Str(env!("CARGO_PKG_VERSION").into())),
            ]),
        )],
    }
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
