//! The whole run as a library call. Read top to bottom, [`run`] is the method:
//!
//! 1. [`prepare`]: read both species, preprocess each, match homologous genes;
//! 2. [`pretrain`] the context model (or [`load_context`]);
//! 3. [`data_knn`]: nearest context cells of every target cell on homologous genes;
//! 4. [`align`] the target models in the intermediate space (or [`load_targets`]);
//! 5. [`transfer`] the cell-type labels;
//! 6. [`crate::out::write_run`] writes the run folder.
//!
//! [`run_targets`] aligns several targets to one context model. The CLI and the Python module are
//! shells over these calls; an [`Observer`] receives their progress.

mod config;
mod evaluate;
mod metrics;
mod prepare;
mod stages;

pub use config::{AlignOptions, Checkpoints, RunConfig};
pub use evaluate::{CONFIDENCE_BINS, CalibrationBin, Evaluation, TypeRecall, balanced_accuracy, calibration, evaluate};
pub use metrics::{AlignSummary, Metrics, PretrainSummary};
pub use prepare::{Inputs, PreparedPair, demo_like_inputs, prepare, prepare_datasets, read_checked};
pub use stages::{
    AlignRun, ContextRun, DataKnn, Member, align, align_and_transfer, context_label_codes, data_knn, load_context, load_targets,
    member_stem, pretrain, pretrain_guarded, transfer,
};

use crate::engine::Backend;
use crate::error::Result;
use crate::train::Progress;
use std::path::PathBuf;
use std::time::Instant;

/// Receives what a run reports: log lines, the start and end of each phase and every training step.
/// Every method has an empty default; [`Silent`] keeps them all.
pub trait Observer {
    /// A line for the person running it (filters applied, counts, warnings).
    fn log(&self, _line: &str) {}
    /// Something the user should check even when progress is not wanted (the line has no prefix).
    fn warn(&self, line: &str) {
        self.log(&format!("warning: {line}"));
    }
    /// A phase begins; `steps` training steps follow (0: a phase without steps).
    fn phase(&self, _name: &str, _steps: u64) {}
    /// One training step of the current phase.
    fn step(&self, _p: &Progress) {}
    /// The current phase has ended (also when it failed).
    fn phase_done(&self) {}
}

/// An observer that ignores everything.
pub struct Silent;
impl Observer for Silent {}

/// Forwards everything to another observer and keeps the warnings, for the metrics (a script that
/// runs quietly still finds them in `metrics.json`).
struct Recording<'a> {
    inner: &'a dyn Observer,
    warnings: std::sync::Mutex<Vec<String>>,
}

impl<'a> Recording<'a> {
    fn new(inner: &'a dyn Observer) -> Self {
        Recording { inner, warnings: Default::default() }
    }
    fn warnings(&self) -> Vec<String> {
        self.warnings.lock().unwrap().clone()
    }
}

impl Observer for Recording<'_> {
    fn log(&self, line: &str) {
        self.inner.log(line);
    }
    fn warn(&self, line: &str) {
        self.warnings.lock().unwrap().push(line.to_string());
        self.inner.warn(line);
    }
    fn phase(&self, name: &str, steps: u64) {
        self.inner.phase(name, steps);
    }
    fn step(&self, p: &Progress) {
        self.inner.step(p);
    }
    fn phase_done(&self) {
        self.inner.phase_done();
    }
}

/// Which stages run, and where the saved models of the skipped ones are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stages {
    /// Everything: preprocess, pre-train, kNN, align, transfer.
    All,
    /// Stop after pre-training the context model.
    Pretrain,
    /// Load the context model saved in the folder, then kNN, align, transfer.
    Align { models: PathBuf },
    /// Load the context and target models saved in the folder, then kNN (for its labels) and transfer.
    Transfer { models: PathBuf },
}

/// The result of [`run`]: every stage's output, and the metrics describing them.
pub struct Run<B: Backend> {
    pub inputs: Inputs,
    pub pair: PreparedPair,
    pub context: ContextRun<B>,
    /// None when the run stopped after pre-training.
    pub target: Option<AlignRun<B>>,
    /// True when the target models were trained in this run (not loaded).
    pub target_trained: bool,
    /// The folder the context model was loaded from (None: trained here, or handed over in memory).
    pub context_source: Option<PathBuf>,
    pub evaluation: Option<Evaluation>,
    pub metrics: Metrics,
    pub config: RunConfig,
    /// When the run began (the metrics' total time counts from here).
    pub started: Instant,
}

/// Run the stages `stages` asks for, from the inputs' files to every result, in memory. Nothing is
/// written but checkpoints (when `cfg.checkpoints` asks for them); [`crate::out::write_run`] writes
/// the run folder.
pub fn run<B: Backend>(be: &B, inputs: &Inputs, cfg: &RunConfig, stages: &Stages, obs: &dyn Observer) -> Result<Run<B>> {
    cfg.validate()?;
    let t0 = Instant::now();
    let obs = &Recording::new(obs);
    obs.phase("reading and preprocessing", 0);
    let pair = prepare(inputs, &cfg.preprocess, obs);
    obs.phase_done();
    run_from(be, inputs, pair?, None, cfg, stages, obs, t0)
}

/// [`run`] on datasets already in memory (the Python module's AnnData objects): `inputs` gives their
/// keys and names, its paths only name them in messages; `table` is the ortholog table.
#[allow(clippy::too_many_arguments)]
pub fn run_datasets<B: Backend>(
    be: &B,
    context: &crate::data::Dataset,
    target: &crate::data::Dataset,
    table: Option<&crate::homology::OrthologTable>,
    inputs: &Inputs,
    cfg: &RunConfig,
    stages: &Stages,
    obs: &dyn Observer,
) -> Result<Run<B>> {
    cfg.validate()?;
    let t0 = Instant::now();
    let obs = &Recording::new(obs);
    obs.phase("preprocessing", 0);
    let pair = prepare_datasets(context, target, table, inputs, &cfg.preprocess, obs);
    obs.phase_done();
    run_from(be, inputs, pair?, None, cfg, stages, obs, t0)
}

/// The stages after preparing; `context`: a context model already in memory (several targets).
#[allow(clippy::too_many_arguments)]
fn run_from<B: Backend>(
    be: &B,
    inputs: &Inputs,
    pair: PreparedPair,
    context: Option<ContextRun<B>>,
    cfg: &RunConfig,
    stages: &Stages,
    obs: &Recording,
    t0: Instant,
) -> Result<Run<B>> {
    cfg.validate()?;
    let mem = prepare::check_memory(&pair, cfg.max_memory, obs)?;
    let mut metrics = Metrics::new(inputs, cfg, be, &pair, mem);
    let mut timings = pair.timings.clone();

    let t = Instant::now();
    let context_source = match stages {
        Stages::Align { models } | Stages::Transfer { models } if context.is_none() => Some(models.clone()),
        _ => None,
    };
    let context = match (context, stages) {
        (Some(c), _) => c.check_genes(&pair)?,
        (None, Stages::All | Stages::Pretrain) => {
            let tcfg = cfg.train_config(pair.context.n_cells());
            let run = pretrain_guarded(be, &pair, &tcfg, &cfg.guard("context"), obs)?;
            metrics.pretrain = Some(PretrainSummary::of(be, &run, &tcfg, pair.context.n_cells()));
            log_pretrain(&run, obs);
            timings.push(("pretrain".into(), t.elapsed().as_secs_f64()));
            run
        }
        (None, Stages::Align { models } | Stages::Transfer { models }) => load_context(be, &pair, models)?,
    };
    crate::interrupt::check()?;
    if *stages == Stages::Pretrain {
        metrics.warnings = obs.warnings();
        metrics.finish(timings, t0);
        return Ok(Run {
            inputs: inputs.clone(),
            pair,
            context,
            target: None,
            target_trained: false,
            context_source,
            evaluation: None,
            metrics,
            config: cfg.clone(),
            started: t0,
        });
    }

    let mut acfg = cfg.align_config(pair.target.n_cells())?;
    let knn = data_knn(be, &pair, &acfg, obs)?;
    timings.push(("data_knn".into(), knn.seconds));
    crate::interrupt::check()?;

    let t = Instant::now();
    let (members, trained) = match stages {
        Stages::Transfer { models } => {
            acfg.epochs = 0;
            (load_targets(be, &pair, models, acfg.members)?, false)
        }
        _ => (align(be, &pair, &context, &knn, &acfg, &cfg.guard("target"), obs)?, true),
    };
    timings.push(("align".into(), t.elapsed().as_secs_f64()));
    if let Some(last) = members[0].history.last() {
        obs.log(&format!(
            "target epoch {:>3}: loss {:.2} NLL {:.2} KL_z {:.3} align {:.3} ({:.0} aligned cells per step, {:.1} ms/step)",
            last.stats.epoch, last.stats.nelbo, last.stats.nll, last.stats.kl_z, last.align, last.aligned_per_step, last.stats.ms_per_step
        ));
    }
    crate::interrupt::check()?;

    let t = Instant::now();
    let transfer = transfer(be, &pair, &context, &members, &cfg.transfer, obs)?;
    timings.push(("transfer".into(), t.elapsed().as_secs_f64()));

    let target = AlignRun { knn, members, transfer, timings: Vec::new() };
    let evaluation = evaluate(&pair, &target, obs);
    metrics.align = Some(AlignSummary::of(&acfg, &target, &cfg.transfer));
    metrics.evaluation = evaluation.clone();
    metrics.warnings = obs.warnings();
    metrics.finish(timings, t0);
    Ok(Run {
        inputs: inputs.clone(),
        pair,
        context,
        target: Some(target),
        target_trained: trained,
        context_source,
        evaluation,
        metrics,
        config: cfg.clone(),
        started: t0,
    })
}

fn log_pretrain<B: Backend>(run: &ContextRun<B>, obs: &dyn Observer) {
    let line = |e: &crate::train::EpochStats| {
        format!(
            "epoch {:>3}: nELBO {:.2} NLL {:.2} KL_z {:.3} KL_l {:.4} beta {:.2} ({:.1} ms/step)",
            e.epoch, e.nelbo, e.nll, e.kl_z, e.kl_l, e.beta, e.ms_per_step
        )
    };
    if let Some(first) = run.history.first() {
        obs.log(&line(first));
    }
    if run.history.len() > 1 {
        obs.log(&line(run.history.last().unwrap()));
    }
}

/// One context aligned to several targets, each with its own inputs and settings (the first target's
/// pre-train the context model): the context model is pre-trained once, with the first target (whose
/// homologous genes set the context decoder's softmax split), and every target is aligned to it.
/// `each` receives every target's run as it finishes (the CLI writes its folder).
pub fn run_targets<B: Backend>(
    be: &B,
    targets: &[(Inputs, RunConfig)],
    obs: &dyn Observer,
    each: &mut dyn FnMut(usize, &mut Run<B>) -> Result<()>,
) -> Result<Vec<Run<B>>> {
    let mut runs: Vec<Run<B>> = Vec::with_capacity(targets.len());
    for (k, (inp, cfg)) in targets.iter().enumerate() {
        obs.log(&format!("== target {} of {}: {} ({})", k + 1, targets.len(), inp.target_name, inp.target.display()));
        let t0 = Instant::now();
        let mut run = match runs.first() {
            None => run(be, inp, cfg, &Stages::All, obs)?,
            Some(first) => {
                let rec = Recording::new(obs);
                rec.phase("reading and preprocessing", 0);
                let pair = prepare(inp, &cfg.preprocess, &rec);
                rec.phase_done();
                run_from(be, inp, pair?, Some(first.context.duplicate(be)), cfg, &Stages::All, &rec, t0)?
            }
        };
        each(k, &mut run)?;
        runs.push(run);
    }
    Ok(runs)
}
