//! The first stage: read both species, preprocess each, match homologous genes.

use super::Observer;
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
    /// None: the context is one batch.
    pub context_batch_key: Option<String>,
    pub context_label_key: String,
    /// None: the target is one batch.
    pub target_batch_key: Option<String>,
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

/// Read, preprocess and match. The observer receives one line per notable event (filters, counts).
pub fn prepare(inputs: &Inputs, cfg: &PreprocessConfig, obs: &dyn Observer) -> Result<PreparedPair> {
    let t = Instant::now();
    // Read the ortholog table first: it is small, and a wrong path should fail before the big reads.
    let table = inputs.homology.as_deref().map(OrthologTable::read).transpose()?;
    let ctx = read_dataset_layer(&inputs.context, inputs.context_layer.as_deref())?;
    obs.log(&format!("{}: {} cells x {} genes from {}", inputs.context_name, ctx.n_cells(), ctx.n_genes(), inputs.context.display()));
    let tgt = read_dataset_layer(&inputs.target, inputs.target_layer.as_deref())?;
    obs.log(&format!("{}: {} cells x {} genes from {}", inputs.target_name, tgt.n_cells(), tgt.n_genes(), inputs.target.display()));
    let read = t.elapsed().as_secs_f64();
    let mut pair = prepare_datasets(&ctx, &tgt, table.as_ref(), inputs, cfg, obs)?;
    pair.timings.insert(0, ("read".to_string(), read));
    Ok(pair)
}

/// Preprocess and match datasets already in memory (`inputs` gives their keys and names; its paths
/// only name them in messages).
pub fn prepare_datasets(
    ctx: &Dataset,
    tgt: &Dataset,
    table: Option<&OrthologTable>,
    inputs: &Inputs,
    cfg: &PreprocessConfig,
    obs: &dyn Observer,
) -> Result<PreparedPair> {
    let mut timings = Vec::new();
    let log = |m: &str| obs.log(m);
    let t = Instant::now();
    check_labels(ctx, None, &inputs.context_label_key, &inputs.context, true, obs)?;
    if let Some(k) = &inputs.target_label_key {
        check_labels(tgt, None, k, &inputs.target, false, obs)?;
    }
    let context = preprocess(ctx, &inputs.context_name, inputs.context_batch_key.as_deref(), Some(&inputs.context_label_key), cfg)?;
    // The target's labels are for evaluation only: they must not decide which target cells are kept.
    let target_cfg = PreprocessConfig { min_cell_type_size: 0, ..cfg.clone() };
    let target = preprocess(tgt, &inputs.target_name, inputs.target_batch_key.as_deref(), inputs.target_label_key.as_deref(), &target_cfg)?;
    check_labels(ctx, Some(&context), &inputs.context_label_key, &inputs.context, true, obs)?;
    for p in [&context, &target] {
        for m in p.report.messages(&p.name) {
            log(&m);
        }
        log(&format!("{}: {} cells x {} genes after preprocessing, {} batches", p.name, p.n_cells(), p.data.n_genes(), p.n_batches()));
    }
    timings.push(("preprocess".to_string(), t.elapsed().as_secs_f64()));

    let t = Instant::now();
    let homology = crate::homology::match_genes_with(&context.data.genes, &target.data.genes, table, inputs.homology_fill)?;
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
fn check_labels(raw: &Dataset, p: Option<&Prepared>, key: &str, path: &Path, context: bool, obs: &dyn Observer) -> Result<()> {
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
        obs.warn(&format!("{msg}. The evaluation against it will say little: check --target-label-key"));
        Ok(())
    }
}

/// Inputs for a folder laid out like the bundled demo data (`mouse/`, `human/`, `homology.tsv`, with
/// `batch` and `cell_type` columns).
pub fn demo_like_inputs(dir: &Path) -> Inputs {
    Inputs {
        context: dir.join("mouse"),
        target: dir.join("human"),
        context_batch_key: Some("batch".into()),
        context_label_key: "cell_type".into(),
        target_batch_key: Some("batch".into()),
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

/// The memory a run on these prepared data will need at its peak.
pub fn memory_estimate(pair: &PreparedPair) -> crate::resources::MemoryEstimate {
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

/// Refuse a run whose estimated peak memory exceeds `max_memory` (None: the memory available);
/// returns the estimate and the limit.
pub(crate) fn check_memory(
    pair: &PreparedPair,
    max_memory: Option<u64>,
    obs: &dyn Observer,
) -> Result<(crate::resources::MemoryEstimate, Option<u64>)> {
    let mem = memory_estimate(pair);
    crate::resources::check(&mem, max_memory)?;
    let limit = max_memory.or_else(crate::resources::available);
    obs.log(&format!(
        "estimated peak memory {} (limit {})",
        crate::resources::gib(mem.total),
        limit.map(crate::resources::gib).unwrap_or_else(|| "unknown".into())
    ));
    Ok((mem, limit))
}
