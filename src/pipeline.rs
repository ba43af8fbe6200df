//! The pipeline as a library call: read both species, preprocess each, match homologous genes.
//! Model stages (pre-training, alignment, label transfer) attach here as they are built.

use crate::data::{Dataset, read_dataset_layer};
use crate::error::{Error, Result};
use crate::homology::{Homology, OrthologTable};
use crate::preprocess::{Prepared, PreprocessConfig, preprocess};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where the inputs are and how to read them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Inputs {
    pub context: PathBuf,
    pub target: PathBuf,
    pub context_batch_key: String,
    pub context_label_key: String,
    pub target_batch_key: String,
    pub target_label_key: Option<String>,
    /// Ortholog table (context gene, target gene); None: case-insensitive symbol matching.
    pub homology: Option<PathBuf>,
    pub context_name: String,
    pub target_name: String,
    /// `.h5ad` only: take the counts from `raw` or `layers/<name>` instead of `X`.
    pub context_layer: Option<String>,
    pub target_layer: Option<String>,
    /// With an ortholog table: pair genes it lists on neither side by symbol. Runs recorded before
    /// this option existed used the table only.
    #[serde(default = "table_only")]
    pub homology_fill: crate::homology::SymbolFill,
}

fn table_only() -> crate::homology::SymbolFill {
    crate::homology::SymbolFill::None
}

/// Both species, preprocessed, with their homologous genes.
#[derive(Debug, Clone)]
pub struct PreparedPair {
    pub context: Prepared,
    pub target: Prepared,
    pub homology: Homology,
    /// (phase, seconds)
    pub timings: Vec<(String, f64)>,
}

/// Read, preprocess and match. `log` receives one line per notable event (filters, counts).
pub fn prepare(inputs: &Inputs, cfg: &PreprocessConfig, log: &mut dyn FnMut(&str)) -> Result<PreparedPair> {
    let mut timings = Vec::new();
    let t = Instant::now();
    // Read the ortholog table first: it is small, and a wrong path should fail before the big reads.
    let table = inputs.homology.as_deref().map(OrthologTable::read).transpose()?;
    let ctx = read_dataset_layer(&inputs.context, inputs.context_layer.as_deref())?;
    log(&format!("{}: {} cells x {} genes from {}", inputs.context_name, ctx.n_cells(), ctx.n_genes(), inputs.context.display()));
    let tgt = read_dataset_layer(&inputs.target, inputs.target_layer.as_deref())?;
    log(&format!("{}: {} cells x {} genes from {}", inputs.target_name, tgt.n_cells(), tgt.n_genes(), inputs.target.display()));
    timings.push(("read".to_string(), t.elapsed().as_secs_f64()));

    let t = Instant::now();
    check_labels(&ctx, None, &inputs.context_label_key, &inputs.context, true, log)?;
    if let Some(k) = &inputs.target_label_key {
        check_labels(&tgt, None, k, &inputs.target, false, log)?;
    }
    let context = preprocess(&ctx, &inputs.context_name, &inputs.context_batch_key, Some(&inputs.context_label_key), cfg)?;
    // The target's labels are for evaluation only: they must not decide which target cells are kept.
    let target_cfg = PreprocessConfig { min_cell_type_size: 0, ..cfg.clone() };
    let target = preprocess(&tgt, &inputs.target_name, &inputs.target_batch_key, inputs.target_label_key.as_deref(), &target_cfg)?;
    check_labels(&ctx, Some(&context), &inputs.context_label_key, &inputs.context, true, log)?;
    for p in [&context, &target] {
        for m in p.report.messages(&p.name) {
            log(&m);
        }
        log(&format!("{}: {} cells x {} genes after preprocessing, {} batches", p.name, p.n_cells(), p.data.n_genes(), p.n_batches()));
    }
    timings.push(("preprocess".to_string(), t.elapsed().as_secs_f64()));

    let t = Instant::now();
    let homology = crate::homology::match_genes_with(&context.data.genes, &target.data.genes, table.as_ref(), inputs.homology_fill)?;
    if homology.report.symbol_matched_gaps > 0 {
        log(&format!(
            "homology: {} of the pairs matched by symbol, for genes the ortholog table does not list (--homology-fill none: the table only)",
            homology.report.symbol_matched_gaps
        ));
    }
    log(&format!(
        "homology ({}): {} homologous genes ({:.1} % of {} context genes, {:.1} % of {} target genes)",
        homology.report.method,
        homology.len(),
        100.0 * homology.len() as f64 / context.data.n_genes() as f64,
        context.data.n_genes(),
        100.0 * homology.len() as f64 / target.data.n_genes() as f64,
        target.data.n_genes()
    ));
    timings.push(("homology".to_string(), t.elapsed().as_secs_f64()));
    Ok(PreparedPair { context, target, homology, timings })
}

/// A label column that cannot be what the user meant: one value for every cell, or a different value
/// in every cell (an ID column), or one type left after the rare types are removed. An error for the
/// context's labels (they are what is transferred), a warning for the target's (used only for
/// evaluation). `p` is None before preprocessing.
fn check_labels(raw: &Dataset, p: Option<&Prepared>, key: &str, path: &Path, context: bool, log: &mut dyn FnMut(&str)) -> Result<()> {
    let raw_l = raw.labels(key)?;
    let n_raw_types = raw_l.categories.len();
    let what = match p.and_then(|p| p.labels.as_ref()) {
        None if n_raw_types > 1 && n_raw_types == raw.n_cells() => {
            format!("has a different value in every cell (e.g. '{}'): it looks like an ID column, not cell types", raw_l.categories[0])
        }
        None if n_raw_types == 1 => format!("has a single value ('{}') for all cells", raw_l.categories[0]),
        Some(l) if l.categories.len() == 1 && n_raw_types > 1 => {
            format!("keeps a single cell type ('{}') once the rare types are removed (see above; --min-cell-type-size)", l.categories[0])
        }
        _ => return Ok(()),
    };
    let others: Vec<&str> = raw.obs.iter().map(|(k, _)| k.as_str()).filter(|k| *k != key).collect();
    let msg = format!(
        "{}: the label column '{key}' {what}; other obs columns: {}",
        path.display(),
        if others.is_empty() { "none".to_string() } else { others.join(", ") }
    );
    if context {
        Err(Error::Input(format!(
            "{msg}. Label transfer needs at least two context cell types: choose the cell-type column with --context-label-key"
        )))
    } else {
        log(&format!("warning: {msg}. The evaluation against it will say little: check --target-label-key"));
        Ok(())
    }
}

/// Inputs for a folder laid out like the bundled demo data (`mouse/`, `human/`, `homology.tsv`, with
/// `batch` and `cell_type` columns).
pub fn demo_like_inputs(dir: &Path) -> Inputs {
    Inputs {
        context: dir.join("mouse"),
        target: dir.join("human"),
        context_batch_key: "batch".into(),
        context_label_key: "cell_type".into(),
        target_batch_key: "batch".into(),
        target_label_key: Some("cell_type".into()),
        homology: Some(dir.join("homology.tsv")),
        context_name: "mouse".into(),
        target_name: "human".into(),
        context_layer: None,
        target_layer: None,
        homology_fill: Default::default(),
    }
}

/// Read a dataset and check that the keys exist, for `inspect`.
pub fn read_checked(path: &Path, layer: Option<&str>, keys: &[Option<&str>]) -> Result<Dataset> {
    let ds = read_dataset_layer(path, layer)?;
    for k in keys.iter().flatten() {
        ds.column(k)?;
    }
    if ds.n_cells() == 0 {
        return Err(Error::format(path, "the dataset has no cells"));
    }
    Ok(ds)
}

/// A pre-trained context model with its training history and eval-mode representations.
pub struct ContextRun<B: crate::engine::Backend> {
    pub model: crate::model::Model<B>,
    pub history: Vec<crate::train::EpochStats>,
    pub repr: crate::train::Representation,
    pub meta: crate::model::io::ModelFile,
    pub train_seconds: f64,
}

/// Pre-train the context model (spec §6.2) and extract its representations.
pub fn pretrain<B: crate::engine::Backend>(
    be: &B,
    pair: &PreparedPair,
    tcfg: &crate::train::TrainConfig,
    progress: &mut dyn FnMut(&crate::train::Progress),
) -> Result<ContextRun<B>> {
    pretrain_guarded(be, pair, tcfg, &crate::train::Guard::default(), progress, &mut |_| {})
}

/// What a checkpoint of a phase must agree on with the run that resumes it.
fn fingerprint(phase: &str, config: &impl serde::Serialize, model: &crate::model::ModelConfig, p: &Prepared) -> serde_json::Value {
    let mut genes = crate::train::checkpoint::Fnv::default();
    for g in &p.data.genes {
        genes.bytes(g.as_bytes()).bytes(&[0]);
    }
    serde_json::json!({
        "phase": phase,
        "config": config,
        "model": model,
        "cells": p.n_cells(),
        "genes": genes.hex(),
        "counts": crate::train::checkpoint::hash_counts(&p.data.counts),
        "batches": p.batch_names,
        "batch_of_cell": crate::train::checkpoint::Fnv::default().u64s(p.batch.iter().map(|&b| b as u64)).hex(),
    })
}

/// [`pretrain`] with checkpoints (the guard's fingerprint is filled in here) and a divergence policy.
pub fn pretrain_guarded<B: crate::engine::Backend>(
    be: &B,
    pair: &PreparedPair,
    tcfg: &crate::train::TrainConfig,
    guard: &crate::train::Guard,
    progress: &mut dyn FnMut(&crate::train::Progress),
    log: &mut dyn FnMut(&str),
) -> Result<ContextRun<B>> {
    use crate::model::{Model, ModelConfig, io::ModelFile};
    let ctx = &pair.context;
    let mut hom = pair.homology.context.clone();
    hom.sort_unstable();
    let cfg = ModelConfig::scspecies(ctx.data.n_genes(), ctx.n_batches(), hom, ctx.lib_mu_add);
    let mut rng = crate::train::stream(tcfg.seed, 0, 0, 0);
    let mut model = Model::new(be, cfg.clone(), &mut rng);
    let data = crate::train::TrainData::of(ctx);
    let mut guard = guard.clone();
    if let Some(c) = guard.checkpoint.as_mut() {
        c.fingerprint = fingerprint("context", tcfg, &cfg, ctx);
    }
    let t = Instant::now();
    let history = crate::train::train_context_guarded(be, &mut model, &data, tcfg, &guard, progress, log)?;
    let train_seconds = t.elapsed().as_secs_f64();
    let repr = crate::train::represent(be, &model, &data, crate::method::REPRESENT_BATCH);
    let meta = ModelFile {
        format: "scspecies".into(),
        format_version: crate::model::io::FORMAT_VERSION,
        scspecies_version: env!("CARGO_PKG_VERSION").into(),
        model: cfg,
        genes: ctx.data.genes.clone(),
        batches: ctx.batch_names.clone(),
        homologous_names: pair.homology.names.clone(),
        labels: ctx.labels.as_ref().map(|l| l.categories.clone()).unwrap_or_default(),
        training: serde_json::json!({ "config": tcfg, "history": history, "backend": be.name(), "train_seconds": train_seconds }),
    };
    crate::train::device_ok(be, "the context model's representations")?;
    Ok(ContextRun { model, history, repr, meta, train_seconds })
}

/// Everything after pre-training: the data-level kNN and agreement, the aligned target models, the
/// first one's representations and the (consensus) transferred labels.
pub struct AlignRun<B: crate::engine::Backend> {
    pub knn: Vec<u32>,
    pub knn_stored: usize,
    /// Genes the data-level kNN compared on.
    pub knn_genes: usize,
    /// Data-level kNN label (context label index) and agreement count per target cell.
    pub knn_label: Vec<u32>,
    pub agreement: Vec<u32>,
    pub top_percent: Vec<f64>,
    pub aligned: Vec<bool>,
    /// The consensus members: member 0 (the run's seed) first. Its model, history and representation
    /// are the run's target model, history and latent space.
    pub members: Vec<Member<B>>,
    pub transfer: crate::transfer::Transfer,
    /// (phase, seconds)
    pub timings: Vec<(String, f64)>,
}

/// One aligned target model of a consensus.
pub struct Member<B: crate::engine::Backend> {
    pub seed: u64,
    pub model: crate::model::Model<B>,
    pub meta: crate::model::io::ModelFile,
    pub history: Vec<crate::align::AlignEpoch>,
    pub repr: crate::train::Representation,
}

impl<B: crate::engine::Backend> AlignRun<B> {
    pub fn model(&self) -> &crate::model::Model<B> {
        &self.members[0].model
    }
    pub fn meta(&self) -> &crate::model::io::ModelFile {
        &self.members[0].meta
    }
    pub fn history(&self) -> &[crate::align::AlignEpoch] {
        &self.members[0].history
    }
    pub fn repr(&self) -> &crate::train::Representation {
        &self.members[0].repr
    }
}

/// Context label codes (sorted categories) of the prepared context.
pub fn context_label_codes(p: &Prepared) -> Result<(Vec<u32>, Vec<String>)> {
    let l = p.labels.as_ref().ok_or_else(|| Error::Input("the context needs cell-type labels".into()))?;
    Ok((l.codes.iter().map(|c| c.unwrap()).collect(), l.categories.clone()))
}

/// The checkpoint file of consensus member `m` (member 0 keeps the phase's own file).
fn member_guard(guard: &crate::train::Guard, m: usize) -> crate::train::Guard {
    let mut g = guard.clone();
    if m > 0
        && let Some(c) = g.checkpoint.as_mut()
    {
        let rename = |p: &Path| {
            let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            p.with_file_name(format!("{stem}_member{m}.safetensors"))
        };
        c.resume_from = c.resume_from.as_deref().map(rename);
        c.path = rename(&c.path);
    }
    g
}

/// Data-level kNN, target fine-tuning of `acfg.members` models against the context model (seeds from
/// [`crate::align::member_seed`]), representations, label transfer and the consensus of the members.
/// `trained_targets`: already trained members (the `transfer` step), used instead of training.
#[allow(clippy::too_many_arguments)]
pub fn align_and_transfer<B: crate::engine::Backend>(
    be: &B,
    pair: &PreparedPair,
    ctx_model: &crate::model::Model<B>,
    ctx_repr: &crate::train::Representation,
    acfg: &crate::align::AlignConfig,
    tcfg: &crate::transfer::TransferConfig,
    trained_targets: Option<Vec<(crate::model::Model<B>, crate::model::io::ModelFile)>>,
    guard: &crate::train::Guard,
    progress: &mut dyn FnMut(&crate::train::Progress),
    log: &mut dyn FnMut(&str),
) -> Result<AlignRun<B>> {
    use crate::align::{Selection, agreement, knn::data_level_knn, member_seed, train_target_guarded};
    use crate::model::{Model, ModelConfig, io::ModelFile};
    let (ctx, tgt) = (&pair.context, &pair.target);
    let (ctx_labels, label_names) = context_label_codes(ctx)?;
    let mut timings = Vec::new();
    if tgt.n_cells() < acfg.k {
        log(&format!("warning: the target has only {} cells, fewer than k = {}", tgt.n_cells(), acfg.k));
    }
    if acfg.members == 0 {
        return Err(Error::Config("the consensus needs at least one member".into()));
    }
    let t = Instant::now();
    let stored = crate::method::KNN_STORED.min(ctx.n_cells());
    let (knn, _, knn_genes) = data_level_knn(be, ctx, tgt, &pair.homology, stored, acfg.knn_space);
    let (knn_label, agreement) = agreement::predict(&knn, stored, crate::method::KNN_LABEL_VOTERS, &ctx_labels, label_names.len());
    let top_percent = agreement::top_percent(&knn_label, &agreement, label_names.len());
    let aligned = agreement::aligned(&top_percent, acfg.top_percent);
    timings.push(("data_knn".to_string(), t.elapsed().as_secs_f64()));
    log(&format!(
        "data-level kNN: {} neighbours per target cell on {} genes ({:?}); {} of {} target cells selected for alignment (top {} %)",
        stored,
        knn_genes,
        acfg.knn_space,
        aligned.iter().filter(|&&a| a).count(),
        tgt.n_cells(),
        acfg.top_percent
    ));

    let mut hom = pair.homology.target.clone();
    hom.sort_unstable();
    let mut cfg = ModelConfig::scspecies(tgt.data.n_genes(), tgt.n_batches(), hom, tgt.lib_mu_add);
    cfg.inner_dims = ctx_model.cfg.inner_dims.clone();
    cfg.outer_dims = ctx_model.cfg.outer_dims.clone();
    cfg.latent = ctx_model.cfg.latent;
    let data = crate::train::TrainData::of(tgt);
    let hom_counts = crate::transfer::HomologousCounts::of(pair);
    let n_members = trained_targets.as_ref().map_or(acfg.members, |t| t.len());
    let mut trained_targets = trained_targets.map(|v| v.into_iter());
    let (mut t_align, mut t_transfer) = (0.0, 0.0);
    let mut members = Vec::with_capacity(n_members);
    let mut transfers = Vec::with_capacity(n_members);
    for m in 0..n_members {
        let mcfg = crate::align::AlignConfig { seed: member_seed(acfg.seed, m), ..acfg.clone() };
        if n_members > 1 {
            log(&format!("consensus member {} of {n_members} (seed {})", m + 1, mcfg.seed));
        }
        let t = Instant::now();
        let (model, saved_meta, history) = match trained_targets.as_mut().and_then(|it| it.next()) {
            Some((model, meta)) => (model, Some(meta), Vec::new()),
            None => {
                let mut rng = crate::train::stream(mcfg.seed, 0, 1, 0);
                let mut model = Model::new(be, cfg.clone(), &mut rng);
                if mcfg.space == crate::align::AlignSpace::Inter {
                    model.copy_params_from(be, ctx_model, "inner.");
                }
                if mcfg.decoder_init == crate::align::DecoderInit::Context {
                    let pairs: Vec<(usize, usize)> =
                        pair.homology.context.iter().copied().zip(pair.homology.target.iter().copied()).collect();
                    model.init_decoder_from(be, ctx_model, &pairs);
                }
                let mut guard = member_guard(guard, m);
                if let Some(c) = guard.checkpoint.as_mut() {
                    let mut fp = fingerprint("target", &mcfg, &model.cfg, tgt);
                    let h = |v: &mut dyn Iterator<Item = u64>| crate::train::checkpoint::Fnv::default().u64s(v).hex();
                    fp["context_inter"] = h(&mut ctx_repr.inter.iter().map(|x| x.to_bits() as u64)).into();
                    fp["data_knn"] = h(&mut knn.iter().map(|&x| x as u64)).into();
                    fp["aligned"] = h(&mut aligned.iter().map(|&x| x as u64)).into();
                    c.fingerprint = fp;
                }
                let sel =
                    Selection { knn: &knn, knn_stored: stored, aligned: &aligned, context_labels: &ctx_labels, knn_label: &knn_label };
                let history = train_target_guarded(be, &mut model, &data, ctx_repr, &sel, &mcfg, &guard, progress, log)?;
                (model, None, history)
            }
        };
        t_align += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let repr = crate::train::represent(be, &model, &data, crate::method::REPRESENT_BATCH);
        transfers.push(crate::transfer::transfer(be, &model, &data, &repr, ctx_repr, &ctx_labels, label_names.len(), &hom_counts, tcfg));
        t_transfer += t.elapsed().as_secs_f64();
        let meta = saved_meta.unwrap_or_else(|| ModelFile {
            format: "scspecies".into(),
            format_version: crate::model::io::FORMAT_VERSION,
            scspecies_version: env!("CARGO_PKG_VERSION").into(),
            model: cfg.clone(),
            genes: tgt.data.genes.clone(),
            batches: tgt.batch_names.clone(),
            homologous_names: pair.homology.names.clone(),
            labels: label_names.clone(),
            training: serde_json::json!({ "config": mcfg, "history": history, "backend": be.name(), "member": m, "members": n_members }),
        });
        members.push(Member { seed: mcfg.seed, model, meta, history, repr });
    }
    timings.push(("align".to_string(), t_align));
    timings.push(("transfer".to_string(), t_transfer));
    crate::train::device_ok(be, "alignment and label transfer")?;
    let transfer = crate::transfer::consensus(transfers, label_names.len(), tcfg.unassigned_threshold);
    Ok(AlignRun { knn, knn_stored: stored, knn_genes, knn_label, agreement, top_percent, aligned, members, transfer, timings })
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
