//! The `scspecies` command line. Every command returns a `Result`; `main` prints the error (which names
//! the file, key or value) and exits non-zero.

use crate::error::{Error, Result};
use crate::out;
use crate::pipeline::{Inputs, PreparedPair, prepare, read_checked};
use crate::preprocess::PreprocessConfig;
use crate::summary::{summarize, thousands};
use clap::{Args, Parser, Subcommand, ValueEnum};
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
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Cpu,
    Cuda,
    Auto,
}

/// Options shared by every command that trains or analyses.
#[derive(Args, Debug, Clone)]
pub struct RunOptions {
    /// Compute device.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
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
}

impl RunOptions {
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
    /// Target dataset (species to annotate), same formats.
    #[arg(long)]
    pub target: PathBuf,
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
    /// Name of the target species in outputs.
    #[arg(long, default_value = "target")]
    pub target_name: String,
    #[command(flatten)]
    pub opts: RunOptions,
}

impl PipelineArgs {
    pub fn inputs(&self) -> Inputs {
        Inputs {
            context: self.context.clone(),
            target: self.target.clone(),
            context_batch_key: self.context_batch_key.clone(),
            context_label_key: self.context_label_key.clone(),
            target_batch_key: self.target_batch_key.clone(),
            target_label_key: self.target_label_key.clone(),
            homology: self.homology.clone(),
            context_name: self.context_name.clone(),
            target_name: self.target_name.clone(),
            context_layer: self.context_layer.clone(),
            target_layer: self.target_layer.clone(),
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
        Command::Run(a) | Command::Pretrain(a) => run_pipeline(&a.inputs(), &a.out, &a.opts),
        Command::Demo(a) => run_pipeline(&demo_inputs(a.data.as_deref())?, &a.out, &a.opts),
        Command::Align(_) | Command::Transfer(_) => Err(Error::Input(
            "this build has no alignment or label transfer yet: `run`, `demo` and `pretrain` do the data stages and pre-train the context model".into(),
        )),
        Command::Bench(a) => bench(&a),
        Command::Inspect(a) => inspect(&a),
    }
}

fn check_options(o: &RunOptions) -> Result<()> {
    if o.device == Device::Cuda {
        return Err(Error::Config("--device cuda: this build has no CUDA backend yet; use --device cpu".into()));
    }
    match o.threads {
        Some(0) => return Err(Error::Config("--threads must be at least 1".into())),
        Some(t) => {
            // The global pool can be set once per process; a second call (tests) keeps the first.
            let _ = rayon::ThreadPoolBuilder::new().num_threads(t).build_global();
        }
        None => {}
    }
    Ok(())
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

/// Pre-train the context model with a progress bar, and write its files.
fn pretrain_stage(pair: &PreparedPair, out_dir: &Path, o: &RunOptions, log: &mut dyn FnMut(&str)) -> Result<serde_json::Value> {
    use crate::engine::{Backend, Cpu};
    let n = pair.context.n_cells();
    let mut tcfg = crate::train::TrainConfig::default_for(n, o.seed);
    if let Some(e) = o.epochs_context {
        tcfg.epochs = e;
    }
    let steps = (n / tcfg.batch_size.min(n)).max(1);
    let be = Cpu::<f32>::new();
    let bar = training_bar(o.quiet, (tcfg.epochs * steps) as u64);
    bar.set_prefix(format!("pretrain {}", pair.context.name));
    let mut lines = Vec::new();
    let res = crate::pipeline::pretrain(&be, pair, &tcfg, &mut |p| {
        bar.inc(1);
        bar.set_message(format!(
            "epoch {}/{} step {}/{} | {:.1} ms/step | nELBO {:.1} NLL {:.1} KL_z {:.2} KL_l {:.3}",
            p.epoch + 1,
            p.epochs,
            p.step + 1,
            p.steps,
            p.ms_per_step,
            p.running[0],
            p.running[1],
            p.running[2],
            p.running[3]
        ));
        if let Some(e) = p.finished_epoch {
            lines.push(format!(
                "epoch {:>3}: nELBO {:.2} NLL {:.2} KL_z {:.3} KL_l {:.4} beta {:.2} ({:.1} ms/step)",
                e.epoch, e.nelbo, e.nll, e.kl_z, e.kl_l, e.beta, e.ms_per_step
            ));
        }
    });
    bar.finish_and_clear();
    let run = res?;
    if let (Some(first), Some(last)) = (lines.first(), lines.last()) {
        log(first);
        if lines.len() > 1 {
            log(last);
        }
    }
    crate::model::io::save(&run.model, &be, &run.meta, &out_dir.join("context_model"))?;
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
    let l = run.repr.latent;
    let mut header: Vec<String> = vec!["cell".into(), "dataset".into()];
    header.extend((1..=l).map(|k| format!("z_{k}")));
    let header_ref: Vec<&str> = header.iter().map(|s| s.as_str()).collect();
    let ctx = &pair.context;
    out::write_tsv(
        &out_dir.join("latent.tsv"),
        &header_ref,
        (0..ctx.n_cells()).map(|i| {
            let mut r = vec![ctx.data.cells[i].clone(), ctx.name.clone()];
            r.extend(run.repr.z_mu[i * l..(i + 1) * l].iter().map(|v| format!("{v}")));
            r
        }),
    )?;
    let last = run.history.last();
    Ok(json!({
        "backend": be.name(),
        "epochs": tcfg.epochs,
        "steps_per_epoch": steps,
        "train_seconds": run.train_seconds,
        "ms_per_step": last.map(|e| e.ms_per_step),
        "final_nelbo": last.map(|e| e.nelbo),
        "final_nll": last.map(|e| e.nll),
        "parameters": run.model.n_params(&be),
    }))
}

/// The stages that exist today, with their outputs. Nothing is written unless preprocessing succeeded.
fn run_pipeline(inputs: &Inputs, out_dir: &Path, o: &RunOptions) -> Result<()> {
    check_options(o)?;
    let cfg = o.preprocess_config();
    let (bar, mut log) = progress(o.quiet, "reading and preprocessing");
    let t0 = std::time::Instant::now();
    let pair = prepare(inputs, &cfg, &mut log);
    bar.finish_and_clear();
    let pair = pair?;
    let t_write = std::time::Instant::now();
    out::create_out_dir(out_dir)?;
    write_pair_outputs(&pair, out_dir, o.write_h5ad)?;
    let mut timings = pair.timings.clone();
    timings.push(("write".into(), t_write.elapsed().as_secs_f64()));
    let t_train = std::time::Instant::now();
    let pretrain = pretrain_stage(&pair, out_dir, o, &mut log)?;
    timings.push(("pretrain".into(), t_train.elapsed().as_secs_f64()));
    let metrics = json!({
        "scspecies_version": env!("CARGO_PKG_VERSION"),
        "inputs": inputs,
        "preprocess_config": cfg,
        "seed": o.seed,
        "device": o.device,
        "stages_done": ["read", "preprocess", "homology", "pretrain"],
        "stages_pending": ["data_knn", "align", "transfer"],
        "pretrain": pretrain,
        "timings_s": timings.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "total_s": t0.elapsed().as_secs_f64(),
        "preprocessing": { &pair.context.name: pair.context.report, &pair.target.name: pair.target.report },
        "library_prior": {
            &pair.context.name: prior_json(&pair.context),
            &pair.target.name: prior_json(&pair.target),
        },
        "homology": pair.homology.report,
    });
    out::write_json(&out_dir.join("metrics.json"), &metrics)?;
    log(&format!("wrote {}", out_dir.display()));
    log("note: this build stops after pre-training the context model; alignment and label transfer are not built yet");
    Ok(())
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
        let h = crate::homology::match_genes(c, t, table.as_ref())?;
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

/// Peak resident memory of this process in bytes (Linux), for the bench report.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn bench(a: &BenchArgs) -> Result<()> {
    check_options(&a.opts)?;
    let inputs = demo_inputs(a.data.as_deref())?;
    let cfg = a.opts.preprocess_config();
    let mut runs = Vec::new();
    for _ in 0..a.repeat.max(1) {
        let t = std::time::Instant::now();
        let pair = prepare(&inputs, &cfg, &mut |_| {})?;
        let mut m: serde_json::Map<String, serde_json::Value> = pair.timings.iter().map(|(k, v)| (format!("{k}_s"), json!(v))).collect();
        m.insert("total_s".into(), json!(t.elapsed().as_secs_f64()));
        let nnz = pair.context.data.counts.nnz() + pair.target.data.counts.nnz();
        m.insert("nonzeros".into(), json!(nnz));
        runs.push(serde_json::Value::Object(m));
    }
    let report = json!({
        "scspecies_version": env!("CARGO_PKG_VERSION"),
        "data": inputs.context.parent(),
        "phases": ["read", "preprocess", "homology"],
        "runs": runs,
        "peak_rss_bytes": peak_rss_bytes(),
        "threads": a.opts.threads,
    });
    match &a.out {
        Some(p) => out::write_json(p, &report)?,
        None => println!("{}", serde_json::to_string_pretty(&report).unwrap()),
    }
    Ok(())
}
