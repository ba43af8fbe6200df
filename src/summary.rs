//! What `inspect` prints: a format-independent summary of a dataset and of the homology between two.

use crate::data::Dataset;
use crate::error::Result;
use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DatasetSummary {
    pub cells: usize,
    pub genes: usize,
    pub nonzeros: usize,
    pub sparsity: f64,
    pub total_counts_min: f64,
    pub total_counts_median: f64,
    pub total_counts_max: f64,
    pub max_count: f64,
    pub genes_per_cell_median: f64,
    /// Cells with no count at all (they will be removed by preprocessing).
    pub zero_count_cells: usize,
    /// Genes no cell expresses.
    pub unexpressed_genes: usize,
    /// (batch, cells), sorted by name, when a batch key was given.
    pub batches: Option<Vec<(String, usize)>>,
    /// (label, cells), sorted by name, when a label key was given.
    pub labels: Option<Vec<(String, usize)>>,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) }
}

fn tally(ds: &Dataset, key: &str) -> Result<Vec<(String, usize)>> {
    let c = ds.labels(key)?;
    let n = c.counts();
    let mut v: Vec<(String, usize)> = c.categories.iter().cloned().zip(n).filter(|x| x.1 > 0).collect();
    v.sort();
    Ok(v)
}

pub fn summarize(ds: &Dataset, batch_key: Option<&str>, label_key: Option<&str>) -> Result<DatasetSummary> {
    let lib = ds.counts.row_sums();
    let genes_per_cell: Vec<f64> = ds.counts.row_nnz_positive().iter().map(|&x| x as f64).collect();
    let expressed = ds.counts.col_nnz_positive();
    Ok(DatasetSummary {
        cells: ds.n_cells(),
        genes: ds.n_genes(),
        nonzeros: ds.counts.nnz(),
        sparsity: ds.counts.sparsity(),
        total_counts_min: lib.iter().cloned().fold(f64::INFINITY, f64::min),
        total_counts_max: lib.iter().cloned().fold(0.0, f64::max),
        total_counts_median: median(lib.clone()),
        max_count: ds.counts.data.iter().fold(0f32, |a, &b| a.max(b)) as f64,
        genes_per_cell_median: median(genes_per_cell),
        zero_count_cells: lib.iter().filter(|&&x| x <= 0.0).count(),
        unexpressed_genes: expressed.iter().filter(|&&x| x == 0).count(),
        batches: batch_key.map(|k| tally(ds, k)).transpose()?,
        labels: label_key.map(|k| tally(ds, k)).transpose()?,
    })
}

/// Thousands separators for the human-readable report.
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

impl DatasetSummary {
    pub fn render(&self, title: &str, batch_key: Option<&str>, label_key: Option<&str>, obs_keys: &[&str]) -> String {
        let mut s = String::new();
        s += &format!("{title}\n");
        s += &format!("  cells x genes      {} x {}\n", thousands(self.cells), thousands(self.genes));
        s += &format!("  non-zeros          {} (sparsity {:.2} %)\n", thousands(self.nonzeros), 100.0 * self.sparsity);
        s += &format!(
            "  counts per cell    min {} / median {} / max {} (largest single count {})\n",
            self.total_counts_min, self.total_counts_median, self.total_counts_max, self.max_count
        );
        s += &format!("  genes per cell     median {}\n", self.genes_per_cell_median);
        if self.zero_count_cells > 0 {
            s += &format!("  zero-count cells   {} (removed by preprocessing)\n", self.zero_count_cells);
        }
        s += &format!("  unexpressed genes  {}\n", thousands(self.unexpressed_genes));
        s += &format!("  obs columns        {}\n", if obs_keys.is_empty() { "none".into() } else { obs_keys.join(", ") });
        let list = |v: &Vec<(String, usize)>| v.iter().map(|(k, n)| format!("{k} ({n})")).collect::<Vec<_>>().join(", ");
        if let (Some(b), Some(k)) = (&self.batches, batch_key) {
            s += &format!("  batches [{k}]  {}: {}\n", b.len(), list(b));
        }
        if let (Some(l), Some(k)) = (&self.labels, label_key) {
            s += &format!("  labels [{k}]  {}: {}\n", l.len(), list(l));
        }
        s
    }
}
