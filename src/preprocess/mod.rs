//! Per-dataset preprocessing, in the reference's order (spec §1.2) with our decisions:
//!
//! 1. cells without any count are removed (they have no library size; the user is told);
//! 2. batches: fewer than `min_batch_size` cells is an error, or with `drop_small_batches` those cells
//!    go (the reference drops them silently); the one-hot encoding uses the sorted batch names;
//! 3. library prior: per batch, mean and standard deviation (ddof 0) of log total counts over **all**
//!    genes, before gene selection and cell filtering;
//! 4. optional highly variable genes (Seurat v3 on counts, batch-aware), after the prior;
//! 5. cell filter: keep cells with at least `min_non_zero_genes · n_genes` expressed genes;
//! 6. with labels: keep cell types with **more than** `min_cell_type_size` cells.

pub mod hvg;

use crate::data::{Categorical, Dataset};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreprocessConfig {
    pub min_batch_size: usize,
    /// Drop the cells of too-small batches instead of stopping (the reference's behaviour).
    pub drop_small_batches: bool,
    /// Fraction of the genes a cell must express (scanpy `filter_cells(min_genes = n_vars · f)`).
    pub min_non_zero_genes: f64,
    /// Cell types need strictly more cells than this to be kept.
    pub min_cell_type_size: usize,
    /// Keep this many highly variable genes (None: all genes).
    pub n_top_genes: Option<usize>,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        PreprocessConfig {
            min_batch_size: 20,
            drop_small_batches: false,
            min_non_zero_genes: 0.025,
            min_cell_type_size: 20,
            n_top_genes: None,
        }
    }
}

/// What preprocessing removed, for the log and `metrics.json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PreprocessReport {
    pub cells_in: usize,
    pub genes_in: usize,
    pub zero_count_cells_removed: usize,
    /// Up to 10 of their names.
    pub zero_count_cells_examples: Vec<String>,
    pub small_batches_dropped: Vec<(String, usize)>,
    pub cells_in_small_batches: usize,
    pub hvg_selected: Option<usize>,
    pub min_genes_threshold: f64,
    pub cells_below_min_genes: usize,
    pub rare_cell_types_removed: Vec<(String, usize)>,
    pub cells_in_rare_types: usize,
    pub cells_out: usize,
    pub genes_out: usize,
}

impl PreprocessReport {
    /// One line per step that changed something.
    pub fn messages(&self, name: &str) -> Vec<String> {
        let mut m = Vec::new();
        if self.zero_count_cells_removed > 0 {
            m.push(format!(
                "{name}: removed {} cells with zero total counts (e.g. {})",
                self.zero_count_cells_removed,
                self.zero_count_cells_examples.join(", ")
            ));
        }
        for (b, n) in &self.small_batches_dropped {
            m.push(format!("{name}: dropped batch '{b}' with {n} cells (below min_batch_size)"));
        }
        if let Some(h) = self.hvg_selected {
            m.push(format!("{name}: kept {h} highly variable genes of {}", self.genes_in));
        }
        if self.cells_below_min_genes > 0 {
            m.push(format!(
                "{name}: removed {} cells expressing fewer than {:.3} genes",
                self.cells_below_min_genes, self.min_genes_threshold
            ));
        }
        for (t, n) in &self.rare_cell_types_removed {
            m.push(format!("{name}: removed cell type '{t}' with {n} cells (not more than min_cell_type_size)"));
        }
        m
    }
}

/// The batch name of a dataset given without a batch column: all its cells form one batch.
pub const ONE_BATCH: &str = "all";

/// A dataset ready for the model.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Short dataset name (e.g. `mouse`), used as a suffix and in outputs.
    pub name: String,
    pub data: Dataset,
    /// Batch index of every cell into `batch_names` (sorted; the one-hot column order).
    pub batch: Vec<u32>,
    pub batch_names: Vec<String>,
    /// Labels with sorted categories, or None for an unlabelled target.
    pub labels: Option<Categorical>,
    /// Per-batch prior of the log library size: (mean, std), over all genes before filtering.
    pub batch_prior: Vec<(f64, f64)>,
    /// Per cell, the prior of its batch (f32 like the reference's obs columns).
    pub library_log_mean: Vec<f32>,
    pub library_log_std: Vec<f32>,
    /// Expressed genes per cell after gene selection (scanpy's `n_genes`).
    pub n_genes: Vec<usize>,
    /// `round(mean over cells of library_log_mean, 5)`: the library encoder's constant offset.
    pub lib_mu_add: f64,
    pub report: PreprocessReport,
    /// Row in the input dataset of every kept cell.
    pub input_rows: Vec<usize>,
    /// Per input cell, why preprocessing removed it (None: kept).
    pub removed: Vec<Option<String>>,
}

impl Prepared {
    pub fn n_cells(&self) -> usize {
        self.data.n_cells()
    }
    pub fn n_batches(&self) -> usize {
        self.batch_names.len()
    }

    /// Row-major one-hot batch encoding (cells x batches).
    pub fn batch_one_hot(&self) -> Vec<f32> {
        let s = self.n_batches();
        let mut out = vec![0f32; self.n_cells() * s];
        for (i, &b) in self.batch.iter().enumerate() {
            out[i * s + b as usize] = 1.0;
        }
        out
    }

    /// For every label, the batches in which it has more than 3 cells (the reference's `batch_dict`).
    pub fn batches_per_label(&self) -> Vec<(String, Vec<String>)> {
        let Some(l) = &self.labels else {
            return Vec::new();
        };
        let mut n = vec![vec![0usize; self.n_batches()]; l.categories.len()];
        for (c, &b) in l.codes.iter().zip(&self.batch) {
            n[c.unwrap() as usize][b as usize] += 1;
        }
        l.categories
            .iter()
            .enumerate()
            .map(|(k, name)| {
                let bs = (0..self.n_batches()).filter(|&b| n[k][b] > 3).map(|b| self.batch_names[b].clone()).collect();
                (name.clone(), bs)
            })
            .collect()
    }
}

/// Sorted categories, codes remapped (labels must have no missing values here).
fn sorted_categorical(c: &Categorical) -> Categorical {
    let mut order: Vec<usize> = (0..c.categories.len()).collect();
    order.sort_by(|&a, &b| c.categories[a].cmp(&c.categories[b]));
    let mut remap = vec![0u32; c.categories.len()];
    for (new, &old) in order.iter().enumerate() {
        remap[old] = new as u32;
    }
    Categorical {
        codes: c.codes.iter().map(|x| x.map(|v| remap[v as usize])).collect(),
        categories: order.iter().map(|&o| c.categories[o].clone()).collect(),
    }
}

/// Drop categories no cell uses any more.
fn compact(c: &Categorical) -> Categorical {
    let used = c.counts();
    let keep: Vec<usize> = (0..c.categories.len()).filter(|&k| used[k] > 0).collect();
    let mut remap = vec![u32::MAX; c.categories.len()];
    for (new, &old) in keep.iter().enumerate() {
        remap[old] = new as u32;
    }
    Categorical {
        codes: c.codes.iter().map(|x| x.map(|v| remap[v as usize])).collect(),
        categories: keep.iter().map(|&k| c.categories[k].clone()).collect(),
    }
}

/// Run the steps above on one dataset. `label_key` is required for the context and optional for the target.
pub fn preprocess(ds: &Dataset, name: &str, batch_key: Option<&str>, label_key: Option<&str>, cfg: &PreprocessConfig) -> Result<Prepared> {
    if !(0.0..1.0).contains(&cfg.min_non_zero_genes) {
        return Err(Error::Config(format!("min_non_zero_genes must be in [0, 1), got {}", cfg.min_non_zero_genes)));
    }
    let src = ds.source.display().to_string();
    let mut report = PreprocessReport { cells_in: ds.n_cells(), genes_in: ds.n_genes(), ..Default::default() };
    // Resolve the keys first, so a typo fails before any work.
    let batch_col = match batch_key {
        Some(k) => ds.labels(k)?,
        None => Categorical { codes: vec![Some(0); ds.n_cells()], categories: vec![ONE_BATCH.to_string()] },
    };
    // Why each input cell was removed (None: kept).
    let mut removed: Vec<Option<String>> = vec![None; ds.n_cells()];
    let label_col = match label_key {
        Some(k) => Some(ds.labels(k)?),
        None => None,
    };

    // 1. cells with zero counts
    let lib = ds.counts.row_sums();
    let mut keep: Vec<usize> = (0..ds.n_cells()).filter(|&i| lib[i] > 0.0).collect();
    report.zero_count_cells_removed = ds.n_cells() - keep.len();
    report.zero_count_cells_examples = (0..ds.n_cells()).filter(|&i| lib[i] <= 0.0).take(10).map(|i| ds.cells[i].clone()).collect();
    for i in (0..ds.n_cells()).filter(|&i| lib[i] <= 0.0) {
        removed[i] = Some("zero total counts".into());
    }

    // 2. batches
    let mut size = vec![0usize; batch_col.categories.len()];
    for &i in &keep {
        size[batch_col.codes[i].unwrap() as usize] += 1;
    }
    let small: Vec<usize> = (0..size.len()).filter(|&b| size[b] > 0 && size[b] < cfg.min_batch_size).collect();
    if !small.is_empty() {
        let list: Vec<String> = small.iter().map(|&b| format!("'{}' ({} cells)", batch_col.categories[b], size[b])).collect();
        if !cfg.drop_small_batches {
            return Err(Error::Input(format!(
                "{src}: batch {} in obs column '{}' has fewer than min_batch_size = {} cells; its library prior would be unreliable. Merge it with another batch, lower --min-batch-size, or pass --drop-small-batches to drop its cells",
                list.join(", "),
                batch_key.unwrap_or_default(),
                cfg.min_batch_size
            )));
        }
        for &b in &small {
            report.small_batches_dropped.push((batch_col.categories[b].clone(), size[b]));
            report.cells_in_small_batches += size[b];
        }
        keep.retain(|&i| {
            let b = batch_col.codes[i].unwrap() as usize;
            if small.contains(&b) {
                removed[i] = Some(format!("batch '{}' below --min-batch-size", batch_col.categories[b]));
            }
            !small.contains(&b)
        });
    }
    if keep.is_empty() {
        return Err(Error::Input(format!("{src}: no cells left after removing zero-count cells and small batches")));
    }
    let mut data = ds.select_cells(&keep);
    let batch_cat = sorted_categorical(&compact(&batch_col.select(&keep)));
    let mut batch: Vec<u32> = batch_cat.codes.iter().map(|c| c.unwrap()).collect();
    let batch_names = batch_cat.categories.clone();
    let mut labels = label_col.map(|l| l.select(&keep));

    // 3. library prior on all genes
    let log_lib: Vec<f64> = data.counts.row_sums().iter().map(|s| s.ln()).collect();
    let mut batch_prior = Vec::with_capacity(batch_names.len());
    for (b, bname) in batch_names.iter().enumerate() {
        let v: Vec<f64> = (0..log_lib.len()).filter(|&i| batch[i] as usize == b).map(|i| log_lib[i]).collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / v.len() as f64;
        let std = var.sqrt();
        if std <= 0.0 || !std.is_finite() {
            return Err(Error::Input(format!(
                "{src}: batch '{bname}' has the same library size in all its {} cells (log-library std 0), so its library prior is undefined",
                v.len()
            )));
        }
        batch_prior.push((mean, std));
    }
    let mut library_log_mean: Vec<f32> = batch.iter().map(|&b| batch_prior[b as usize].0 as f32).collect();
    let mut library_log_std: Vec<f32> = batch.iter().map(|&b| batch_prior[b as usize].1 as f32).collect();

    // 4. highly variable genes
    if let Some(n_top) = cfg.n_top_genes {
        if n_top == 0 {
            return Err(Error::Config("n_top_genes must be positive".into()));
        }
        let genes = hvg::seurat_v3(&data.counts, &batch, batch_names.len(), n_top);
        report.hvg_selected = Some(genes.len());
        data = data.select_genes(&genes);
    }

    // 5. cell filter on expressed genes
    let min_genes = data.n_genes() as f64 * cfg.min_non_zero_genes;
    report.min_genes_threshold = min_genes;
    let n_expr = data.counts.row_nnz_positive();
    let mut keep2: Vec<usize> = (0..data.n_cells()).filter(|&i| n_expr[i] as f64 >= min_genes).collect();
    for i in (0..data.n_cells()).filter(|&i| (n_expr[i] as f64) < min_genes) {
        removed[keep[i]] = Some(format!("fewer than {min_genes:.1} expressed genes"));
    }
    report.cells_below_min_genes = data.n_cells() - keep2.len();

    // 6. rare cell types (counted after the cell filter)
    if let Some(l) = &labels {
        let mut n = vec![0usize; l.categories.len()];
        for &i in &keep2 {
            n[l.codes[i].unwrap() as usize] += 1;
        }
        let rare: Vec<usize> = (0..n.len()).filter(|&k| n[k] > 0 && n[k] <= cfg.min_cell_type_size).collect();
        for &k in &rare {
            report.rare_cell_types_removed.push((l.categories[k].clone(), n[k]));
            report.cells_in_rare_types += n[k];
        }
        keep2.retain(|&i| {
            let k = l.codes[i].unwrap() as usize;
            if rare.contains(&k) {
                removed[keep[i]] = Some(format!("cell type '{}' not above --min-cell-type-size", l.categories[k]));
            }
            !rare.contains(&k)
        });
    }
    if keep2.is_empty() {
        return Err(Error::Input(format!("{src}: no cells left after filtering (see the filters above)")));
    }
    if keep2.len() < data.n_cells() {
        data = data.select_cells(&keep2);
        batch = keep2.iter().map(|&i| batch[i]).collect();
        library_log_mean = keep2.iter().map(|&i| library_log_mean[i]).collect();
        library_log_std = keep2.iter().map(|&i| library_log_std[i]).collect();
        labels = labels.map(|l| l.select(&keep2));
    }
    let n_genes = keep2.iter().map(|&i| n_expr[i]).collect();
    let labels = labels.map(|l| sorted_categorical(&compact(&l)));
    let mean_prior = library_log_mean.iter().map(|&x| x as f64).sum::<f64>() / library_log_mean.len() as f64;
    // numpy rounds half to even.
    let lib_mu_add = (mean_prior * 1e5).round_ties_even() / 1e5;
    report.cells_out = data.n_cells();
    let input_rows = keep2.iter().map(|&i| keep[i]).collect();
    report.genes_out = data.n_genes();
    Ok(Prepared {
        name: name.to_string(),
        data,
        batch,
        batch_names,
        labels,
        batch_prior,
        library_log_mean,
        library_log_std,
        n_genes,
        lib_mu_add,
        report,
        input_rows,
        removed,
    })
}
