//! The model stages, each a function from typed inputs to typed outputs: [`pretrain`] the context
//! model, the [`data_knn`] on homologous genes, [`align`] the target models, [`transfer`] the labels.

use super::{Observer, PreparedPair};
use crate::align::{AlignConfig, AlignEpoch, Selection, agreement, member_seed, train_target_guarded};
use crate::engine::Backend;
use crate::error::{Error, Result};
use crate::model::{Model, ModelConfig, io::ModelFile};
use crate::preprocess::Prepared;
use crate::train::{EpochStats, Guard, Representation, TrainConfig, TrainData};
use crate::transfer::{Transfer, TransferConfig};
use std::path::Path;
use std::time::Instant;

/// A context model with its training history (empty when loaded) and eval-mode representations.
pub struct ContextRun<B: Backend> {
    pub model: Model<B>,
    pub history: Vec<EpochStats>,
    pub repr: Representation,
    pub meta: ModelFile,
    pub train_seconds: f64,
}

/// Pre-train the context model (spec §6.2) and extract its representations.
pub fn pretrain<B: Backend>(be: &B, pair: &PreparedPair, tcfg: &TrainConfig, obs: &dyn Observer) -> Result<ContextRun<B>> {
    pretrain_guarded(be, pair, tcfg, &Guard::default(), obs)
}

/// What a checkpoint of a phase must agree on with the run that resumes it.
fn fingerprint(phase: &str, config: &impl serde::Serialize, model: &ModelConfig, p: &Prepared) -> serde_json::Value {
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
pub fn pretrain_guarded<B: Backend>(
    be: &B,
    pair: &PreparedPair,
    tcfg: &TrainConfig,
    guard: &Guard,
    obs: &dyn Observer,
) -> Result<ContextRun<B>> {
    let ctx = &pair.context;
    let mut hom = pair.homology.context.clone();
    hom.sort_unstable();
    let cfg = ModelConfig::scspecies(ctx.data.n_genes(), ctx.n_batches(), hom, ctx.lib_mu_add);
    let mut rng = crate::train::stream(tcfg.seed, 0, 0, 0);
    let mut model = Model::new(be, cfg.clone(), &mut rng);
    let data = TrainData::of(ctx);
    let mut guard = guard.clone();
    if let Some(c) = guard.checkpoint.as_mut() {
        c.fingerprint = fingerprint("context", tcfg, &cfg, ctx);
    }
    let steps = (ctx.n_cells() / tcfg.batch_size.min(ctx.n_cells())).max(1);
    obs.phase(&format!("pretrain {}", ctx.name), (tcfg.epochs * steps) as u64);
    let t = Instant::now();
    let history = crate::train::train_context_guarded(be, &mut model, &data, tcfg, &guard, &mut |p| obs.step(p), &mut |m| obs.log(m));
    obs.phase_done();
    let history = history?;
    let train_seconds = t.elapsed().as_secs_f64();
    let repr = crate::train::represent(be, &model, &data, crate::method::REPRESENT_BATCH);
    model.release_training_state(be);
    let meta = model_file(
        cfg,
        ctx,
        pair,
        ctx.labels.as_ref().map(|l| l.categories.clone()).unwrap_or_default(),
        serde_json::json!({ "config": tcfg, "history": history, "backend": be.name(), "train_seconds": train_seconds }),
    );
    crate::train::device_ok(be, "the context model's representations")?;
    Ok(ContextRun { model, history, repr, meta, train_seconds })
}

fn model_file(model: ModelConfig, p: &Prepared, pair: &PreparedPair, labels: Vec<String>, training: serde_json::Value) -> ModelFile {
    ModelFile {
        format: "scspecies".into(),
        format_version: crate::model::io::FORMAT_VERSION,
        scspecies_version: env!("CARGO_PKG_VERSION").into(),
        model,
        genes: p.data.genes.clone(),
        batches: p.batch_names.clone(),
        homologous_names: pair.homology.names.clone(),
        labels,
        training,
    }
}

/// A saved model must have been trained on exactly these genes and batches.
fn check_model_genes(meta: &ModelFile, p: &Prepared, stem: &Path) -> Result<()> {
    match gene_mismatch(meta, p) {
        Some(m) => Err(Error::format(stem.with_extension("json"), format!("{m}: use the same inputs and options as for training"))),
        None => Ok(()),
    }
}

/// How a model's genes and batches differ from the prepared data's, if they do.
fn gene_mismatch(meta: &ModelFile, p: &Prepared) -> Option<String> {
    (meta.genes != p.data.genes || meta.batches != p.batch_names).then(|| {
        format!(
            "this model was trained on {} genes and batches {:?}, but the preprocessed {} data have {} genes and batches {:?}",
            meta.genes.len(),
            meta.batches,
            p.name,
            p.data.n_genes(),
            p.batch_names
        )
    })
}

/// A saved model's files, or an error saying which command writes them.
fn require_model(stem: &Path, what: &str) -> Result<()> {
    let json = stem.with_extension("json");
    if json.is_file() {
        return Ok(());
    }
    Err(Error::io(
        &json,
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no saved {what} here: run `scspecies pretrain` (and `align`) with this --out first"),
        ),
    ))
}

/// The context model saved in `dir` (by [`crate::out::write_run`]), with its representations of `pair`.
pub fn load_context<B: Backend>(be: &B, pair: &PreparedPair, dir: &Path) -> Result<ContextRun<B>> {
    let stem = dir.join("context_model");
    require_model(&stem, "context model")?;
    let (mut model, meta) = crate::model::io::load(be, &stem)?;
    model.release_training_state(be);
    check_model_genes(&meta, &pair.context, &stem)?;
    let repr = crate::train::represent(be, &model, &TrainData::of(&pair.context), crate::method::REPRESENT_BATCH);
    Ok(ContextRun { model, history: Vec::new(), repr, meta, train_seconds: 0.0 })
}

/// Where consensus member `m` of a run's target model is saved (member 0: `target_model`).
pub fn member_stem(dir: &Path, m: usize) -> std::path::PathBuf {
    if m == 0 { dir.join("target_model") } else { dir.join(format!("target_model_member{m}")) }
}

/// The `members` aligned target models saved in `dir`, with their representations of `pair`.
pub fn load_targets<B: Backend>(be: &B, pair: &PreparedPair, dir: &Path, members: usize) -> Result<Vec<Member<B>>> {
    require_model(&member_stem(dir, 0), "target model")?;
    let data = TrainData::of(&pair.target);
    let mut v = Vec::with_capacity(members);
    for m in 0..members {
        let stem = member_stem(dir, m);
        if m > 0 && !stem.with_extension("json").is_file() {
            return Err(Error::Config(format!(
                "--members {members} but {} holds {m} aligned target model(s) (no {}): use the --members of the alignment",
                dir.display(),
                stem.with_extension("json").display()
            )));
        }
        let (mut model, meta) = crate::model::io::load(be, &stem)?;
        model.release_training_state(be);
        check_model_genes(&meta, &pair.target, &stem)?;
        let repr = crate::train::represent(be, &model, &data, crate::method::REPRESENT_BATCH);
        let seed = meta.training.get("config").and_then(|c| c.get("seed")).and_then(|s| s.as_u64()).unwrap_or(0);
        v.push(Member { seed, model, meta, history: Vec::new(), repr });
    }
    Ok(v)
}

/// The data-level kNN on homologous genes and what it decides: each target cell's kNN label and
/// agreement, and the cells selected for alignment.
pub struct DataKnn {
    /// `stored` context neighbours per target cell, row-major.
    pub knn: Vec<u32>,
    pub stored: usize,
    /// Genes the search compared on.
    pub genes: usize,
    /// Data-level kNN label (context label index) and agreement count per target cell.
    pub knn_label: Vec<u32>,
    pub agreement: Vec<u32>,
    pub top_percent: Vec<f64>,
    pub aligned: Vec<bool>,
    pub seconds: f64,
}

impl DataKnn {
    pub fn n_aligned(&self) -> usize {
        self.aligned.iter().filter(|&&a| a).count()
    }
}

/// Context label codes (sorted categories) of the prepared context.
pub fn context_label_codes(p: &Prepared) -> Result<(Vec<u32>, Vec<String>)> {
    let l = p.labels.as_ref().ok_or_else(|| Error::Input("the context needs cell-type labels".into()))?;
    Ok((l.codes.iter().map(|c| c.unwrap()).collect(), l.categories.clone()))
}

/// The data-level kNN (spec §6.3): each target cell's nearest context cells on homologous genes, their
/// label vote, and the top `acfg.top_percent` % of each voted label selected for alignment.
pub fn data_knn<B: Backend>(be: &B, pair: &PreparedPair, acfg: &AlignConfig, obs: &dyn Observer) -> Result<DataKnn> {
    let (ctx, tgt) = (&pair.context, &pair.target);
    let (ctx_labels, label_names) = context_label_codes(ctx)?;
    if tgt.n_cells() < acfg.k {
        obs.warn(&format!("the target has only {} cells, fewer than k = {}", tgt.n_cells(), acfg.k));
    }
    obs.phase("data-level kNN", 0);
    let t = Instant::now();
    let stored = crate::method::KNN_STORED.min(ctx.n_cells());
    let (knn, _, genes) = crate::knn::data_level_knn(be, ctx, tgt, &pair.homology, stored, acfg.knn_space);
    let (knn_label, agreement) = agreement::predict(&knn, stored, crate::method::KNN_LABEL_VOTERS, &ctx_labels, label_names.len());
    let top_percent = agreement::top_percent(&knn_label, &agreement, label_names.len());
    let aligned = agreement::aligned(&top_percent, acfg.top_percent);
    obs.phase_done();
    crate::train::device_ok(be, "the data-level kNN")?;
    let d = DataKnn { knn, stored, genes, knn_label, agreement, top_percent, aligned, seconds: t.elapsed().as_secs_f64() };
    obs.log(&format!(
        "data-level kNN: {} neighbours per target cell on {} genes ({:?}); {} of {} target cells selected for alignment (top {} %)",
        stored,
        genes,
        acfg.knn_space,
        d.n_aligned(),
        tgt.n_cells(),
        acfg.top_percent
    ));
    Ok(d)
}

/// One aligned target model of a consensus, with its eval-mode representations.
pub struct Member<B: Backend> {
    pub seed: u64,
    pub model: Model<B>,
    pub meta: ModelFile,
    /// Empty for a loaded model.
    pub history: Vec<AlignEpoch>,
    pub repr: Representation,
}

/// The checkpoint file of consensus member `m` (member 0 keeps the phase's own file).
fn member_guard(guard: &Guard, m: usize) -> Guard {
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

/// Fine-tune `acfg.members` target models against the context model (spec §6.4; seeds from
/// [`member_seed`]), each starting from the context's inner encoder.
pub fn align<B: Backend>(
    be: &B,
    pair: &PreparedPair,
    context: &ContextRun<B>,
    knn: &DataKnn,
    acfg: &AlignConfig,
    guard: &Guard,
    obs: &dyn Observer,
) -> Result<Vec<Member<B>>> {
    let tgt = &pair.target;
    let (ctx_labels, label_names) = context_label_codes(&pair.context)?;
    if acfg.members == 0 {
        return Err(Error::Config("the consensus needs at least one member".into()));
    }
    let ctx_model = &context.model;
    let mut hom = pair.homology.target.clone();
    hom.sort_unstable();
    let mut cfg = ModelConfig::scspecies(tgt.data.n_genes(), tgt.n_batches(), hom, tgt.lib_mu_add);
    cfg.inner_dims = ctx_model.cfg.inner_dims.clone();
    cfg.outer_dims = ctx_model.cfg.outer_dims.clone();
    cfg.latent = ctx_model.cfg.latent;
    let data = TrainData::of(tgt);
    let n = tgt.n_cells();
    let steps = (n / acfg.batch_size.min(n)).max(1);
    obs.phase(&format!("align {}", tgt.name), (acfg.epochs * steps * acfg.members) as u64);
    let mut members = Vec::with_capacity(acfg.members);
    for m in 0..acfg.members {
        let mcfg = AlignConfig { seed: member_seed(acfg.seed, m), ..acfg.clone() };
        if acfg.members > 1 {
            obs.log(&format!("consensus member {} of {} (seed {})", m + 1, acfg.members, mcfg.seed));
        }
        let mut rng = crate::train::stream(mcfg.seed, 0, 1, 0);
        let mut model = Model::new(be, cfg.clone(), &mut rng);
        if mcfg.space == crate::align::AlignSpace::Inter {
            model.copy_params_from(be, ctx_model, "inner.");
        }
        if mcfg.decoder_init == crate::align::DecoderInit::Context {
            let pairs: Vec<(usize, usize)> = pair.homology.context.iter().copied().zip(pair.homology.target.iter().copied()).collect();
            model.init_decoder_from(be, ctx_model, &pairs);
        }
        let mut guard = member_guard(guard, m);
        if let Some(c) = guard.checkpoint.as_mut() {
            let mut fp = fingerprint("target", &mcfg, &model.cfg, tgt);
            let h = |v: &mut dyn Iterator<Item = u64>| crate::train::checkpoint::Fnv::default().u64s(v).hex();
            fp["context_inter"] = h(&mut context.repr.inter.iter().map(|x| x.to_bits() as u64)).into();
            fp["data_knn"] = h(&mut knn.knn.iter().map(|&x| x as u64)).into();
            fp["aligned"] = h(&mut knn.aligned.iter().map(|&x| x as u64)).into();
            c.fingerprint = fp;
        }
        let sel = Selection {
            knn: &knn.knn,
            knn_stored: knn.stored,
            aligned: &knn.aligned,
            context_labels: &ctx_labels,
            knn_label: &knn.knn_label,
        };
        let history =
            train_target_guarded(be, &mut model, &data, &context.repr, &sel, &mcfg, &guard, &mut |p| obs.step(p), &mut |l| obs.log(l));
        let history = match history {
            Ok(h) => h,
            Err(e) => {
                obs.phase_done();
                return Err(e);
            }
        };
        let repr = crate::train::represent(be, &model, &data, crate::method::REPRESENT_BATCH);
        model.release_training_state(be);
        let training =
            serde_json::json!({ "config": mcfg, "history": history, "backend": be.name(), "member": m, "members": acfg.members });
        let meta = model_file(cfg.clone(), tgt, pair, label_names.clone(), training);
        members.push(Member { seed: mcfg.seed, model, meta, history, repr });
    }
    obs.phase_done();
    crate::train::device_ok(be, "alignment")?;
    Ok(members)
}

/// Latent label transfer (spec §7) with every member, and their consensus.
pub fn transfer<B: Backend>(
    be: &B,
    pair: &PreparedPair,
    context: &ContextRun<B>,
    members: &[Member<B>],
    tcfg: &TransferConfig,
    obs: &dyn Observer,
) -> Result<Transfer> {
    let (ctx_labels, label_names) = context_label_codes(&pair.context)?;
    if members.is_empty() {
        return Err(Error::Config("label transfer needs at least one aligned target model".into()));
    }
    obs.phase("label transfer", 0);
    let data = TrainData::of(&pair.target);
    let hom_counts = crate::transfer::HomologousCounts::of(pair);
    let each: Vec<Transfer> = members
        .iter()
        .map(|m| crate::transfer::transfer(be, &m.model, &data, &m.repr, &context.repr, &ctx_labels, label_names.len(), &hom_counts, tcfg))
        .collect();
    obs.phase_done();
    crate::train::device_ok(be, "label transfer")?;
    let t = crate::transfer::consensus(each, label_names.len(), tcfg.unassigned_threshold);
    let flagged = t.unassigned.iter().filter(|&&u| u).count();
    obs.log(&format!("label transfer: {} of {} target cells flagged unassigned", flagged, pair.target.n_cells()));
    Ok(t)
}

/// Everything after pre-training, for one target: the data-level kNN, the aligned target models and
/// the (consensus) transferred labels.
pub struct AlignRun<B: Backend> {
    pub knn: DataKnn,
    /// The consensus members: member 0 (the run's seed) first. Its model, history and representation
    /// are the run's target model, history and latent space.
    pub members: Vec<Member<B>>,
    pub transfer: Transfer,
    /// (phase, seconds)
    pub timings: Vec<(String, f64)>,
}

impl<B: Backend> AlignRun<B> {
    pub fn model(&self) -> &Model<B> {
        &self.members[0].model
    }
    pub fn meta(&self) -> &ModelFile {
        &self.members[0].meta
    }
    pub fn history(&self) -> &[AlignEpoch] {
        &self.members[0].history
    }
    pub fn repr(&self) -> &Representation {
        &self.members[0].repr
    }
}

/// [`data_knn`], [`align`] and [`transfer`] in a row, without checkpoints.
pub fn align_and_transfer<B: Backend>(
    be: &B,
    pair: &PreparedPair,
    context: &ContextRun<B>,
    acfg: &AlignConfig,
    tcfg: &TransferConfig,
    obs: &dyn Observer,
) -> Result<AlignRun<B>> {
    let knn = data_knn(be, pair, acfg, obs)?;
    let t = Instant::now();
    let members = align(be, pair, context, &knn, acfg, &Guard::default(), obs)?;
    let t_align = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let transfer = transfer(be, pair, context, &members, tcfg, obs)?;
    let timings = vec![("data_knn".into(), knn.seconds), ("align".into(), t_align), ("transfer".into(), t.elapsed().as_secs_f64())];
    Ok(AlignRun { knn, members, transfer, timings })
}

impl<B: Backend> ContextRun<B> {
    /// The same model and representations, for another run (the history stays with the run that
    /// trained it).
    pub fn duplicate(&self, be: &B) -> Self {
        let mut model = Model::new(be, self.model.cfg.clone(), &mut crate::train::stream(0, 0, 0, 0));
        model.copy_params_from(be, &self.model, "");
        model.release_training_state(be);
        ContextRun { model, history: Vec::new(), repr: self.repr.clone(), meta: self.meta.clone(), train_seconds: 0.0 }
    }

    /// This model, if it was trained on the genes and batches of `pair`'s context.
    pub(crate) fn check_genes(self, pair: &PreparedPair) -> Result<Self> {
        if let Some(m) = gene_mismatch(&self.meta, &pair.context) {
            return Err(Error::Input(format!("{m} (the context prepared with target '{}')", pair.target.name)));
        }
        Ok(self)
    }
}
