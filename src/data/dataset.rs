//! One species' single-cell dataset as read from disk: raw counts (cells x genes, CSR), cell barcodes,
//! gene symbols and the per-cell annotation table (obs).

use super::sparse::Csr;
use crate::error::{Error, Result};
use std::collections::HashSet;
use std::path::PathBuf;

/// A categorical obs column: a code per cell (`None` where the value is missing) into `categories`.
#[derive(Debug, Clone, PartialEq)]
pub struct Categorical {
    pub codes: Vec<Option<u32>>,
    pub categories: Vec<String>,
}

impl Categorical {
    /// Encode strings in order of first appearance. Empty strings and `NA`/`nan` count as missing.
    pub fn from_strings<S: AsRef<str>>(values: &[S]) -> Self {
        let mut categories: Vec<String> = Vec::new();
        let mut lookup = std::collections::HashMap::new();
        let codes = values
            .iter()
            .map(|v| {
                let v = v.as_ref();
                if is_missing(v) {
                    return None;
                }
                Some(*lookup.entry(v.to_string()).or_insert_with(|| {
                    categories.push(v.to_string());
                    (categories.len() - 1) as u32
                }))
            })
            .collect();
        Categorical { codes, categories }
    }

    pub fn value(&self, i: usize) -> Option<&str> {
        self.codes[i].map(|c| self.categories[c as usize].as_str())
    }

    pub fn len(&self) -> usize {
        self.codes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }

    pub fn n_missing(&self) -> usize {
        self.codes.iter().filter(|c| c.is_none()).count()
    }

    /// Keep the given cells.
    pub fn select(&self, rows: &[usize]) -> Self {
        Categorical { codes: rows.iter().map(|&r| self.codes[r]).collect(), categories: self.categories.clone() }
    }

    /// Cells per category, in category order.
    pub fn counts(&self) -> Vec<usize> {
        let mut n = vec![0; self.categories.len()];
        for c in self.codes.iter().flatten() {
            n[*c as usize] += 1;
        }
        n
    }
}

fn is_missing(v: &str) -> bool {
    v.is_empty() || v == "NA" || v == "nan" || v == "NaN"
}

/// An obs column as stored: categories/strings, or numbers.
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    Categorical(Categorical),
    Numeric(Vec<f64>),
}

impl Column {
    pub fn len(&self) -> usize {
        match self {
            Column::Categorical(c) => c.len(),
            Column::Numeric(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The column as labels: numbers are written without a trailing `.0` (cluster ids stored as floats).
    pub fn to_categorical(&self) -> Categorical {
        match self {
            Column::Categorical(c) => c.clone(),
            Column::Numeric(v) => {
                let s: Vec<String> = v
                    .iter()
                    .map(|x| {
                        if x.is_nan() {
                            String::new()
                        } else if x.fract() == 0.0 {
                            format!("{}", *x as i64)
                        } else {
                            x.to_string()
                        }
                    })
                    .collect();
                Categorical::from_strings(&s)
            }
        }
    }
    pub fn select(&self, rows: &[usize]) -> Self {
        match self {
            Column::Categorical(c) => Column::Categorical(c.select(rows)),
            Column::Numeric(v) => Column::Numeric(rows.iter().map(|&r| v[r]).collect()),
        }
    }
}

/// Obs columns in file order; a column that could not be decoded holds the reason.
pub type ObsColumns = Vec<(String, std::result::Result<Column, String>)>;

/// One dataset. Rows of `counts` are `cells`, columns are `genes`.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Where it was read from (used in every error message).
    pub source: PathBuf,
    pub counts: Csr,
    pub cells: Vec<String>,
    pub genes: Vec<String>,
    /// Obs columns in file order. A column that exists but could not be decoded is kept as an error
    /// message and only reported if the user asks for it.
    pub obs: ObsColumns,
}

impl Dataset {
    pub fn n_cells(&self) -> usize {
        self.counts.n_rows
    }
    pub fn n_genes(&self) -> usize {
        self.counts.n_cols
    }

    pub fn obs_keys(&self) -> Vec<&str> {
        self.obs.iter().map(|(k, _)| k.as_str()).collect()
    }

    /// Look an obs column up by name; a missing key lists the keys that exist.
    pub fn column(&self, key: &str) -> Result<&Column> {
        match self.obs.iter().find(|(k, _)| k == key) {
            Some((_, Ok(c))) => Ok(c),
            Some((_, Err(m))) => Err(Error::format(&self.source, format!("obs column '{key}' cannot be read: {m}"))),
            None => Err(Error::MissingKey {
                path: self.source.clone(),
                key: key.to_string(),
                available: if self.obs.is_empty() { "none".into() } else { self.obs_keys().join(", ") },
            }),
        }
    }

    /// An obs column as labels, refusing missing values (they would silently become a class of their own).
    pub fn labels(&self, key: &str) -> Result<Categorical> {
        let c = self.column(key)?.to_categorical();
        let missing = c.n_missing();
        if missing > 0 {
            let first = c.codes.iter().position(|c| c.is_none()).unwrap();
            return Err(Error::format(
                &self.source,
                format!("obs column '{key}' has no value for {missing} cells (first: '{}')", self.cells[first]),
            ));
        }
        Ok(c)
    }

    /// Check the invariants every reader must deliver: shapes agree, names unique, not empty.
    /// Genes stored as rows and cells as columns: the cell names are gene symbols or Ensembl IDs while
    /// the gene names are not. Decided on names that no barcode ever has (housekeeping genes present in
    /// every tissue and species), so it never fires on a correctly oriented dataset.
    pub fn looks_transposed(&self) -> Option<String> {
        let gene_like = |names: &[String]| -> (usize, Vec<String>) {
            let mut hits = Vec::new();
            let mut ensembl = 0usize;
            for n in names {
                let u = n.to_ascii_uppercase();
                if HOUSEKEEPING.contains(&u.as_str()) {
                    hits.push(n.clone());
                }
                if u.starts_with("ENS")
                    && u.len() >= 15
                    && u.contains('G')
                    && u.as_bytes()[u.len() - 11..].iter().all(|b| b.is_ascii_digit())
                {
                    ensembl += 1;
                }
            }
            let score = if ensembl * 2 > names.len() { names.len() } else { hits.len() };
            hits.truncate(3);
            (score, hits)
        };
        let (cells_score, examples) = gene_like(&self.cells);
        let (genes_score, _) = gene_like(&self.genes);
        (cells_score >= 3 && genes_score == 0).then(|| {
            format!(
                "the cell names look like genes ({}, ...) and the gene names do not (e.g. '{}'): the matrix seems to be stored genes x cells. Transpose it (in Python: adata = adata.T) so that cells are rows (obs) and genes are columns (var)",
                if examples.is_empty() { "Ensembl IDs".to_string() } else { examples.join(", ") },
                self.genes.first().map(|s| s.as_str()).unwrap_or("")
            )
        })
    }

    /// A dataset held in memory (an AnnData object in Python): CSR parts, names and label columns,
    /// checked like a file that was read (`source` names it in messages).
    #[allow(clippy::too_many_arguments)]
    pub fn from_memory(
        source: &str,
        n_genes: usize,
        indptr: Vec<usize>,
        indices: Vec<u32>,
        data: Vec<f64>,
        cells: Vec<String>,
        genes: Vec<String>,
        obs: Vec<(String, Vec<String>)>,
    ) -> Result<Dataset> {
        let src = PathBuf::from(source);
        let data = data
            .iter()
            .enumerate()
            .map(|(k, &v)| super::sparse::check_count(v, || format!("stored count {}", k + 1)).map_err(|m| Error::format(&src, m)))
            .collect::<Result<Vec<f32>>>()?;
        let n_cells = indptr.len().saturating_sub(1);
        let counts = Csr::from_parts(n_cells, n_genes, indptr, indices, data).map_err(|m| Error::format(&src, format!("counts: {m}")))?;
        let obs = obs.into_iter().map(|(k, v)| (k, Ok(Column::Categorical(Categorical::from_strings(&v))))).collect();
        let ds = Dataset { source: src, counts, cells, genes, obs };
        ds.validate()?;
        Ok(ds)
    }

    pub fn validate(&self) -> Result<()> {
        let p = &self.source;
        if self.cells.len() != self.counts.n_rows {
            return Err(Error::format(
                p,
                format!("the count matrix has {} cells (rows) but there are {} cell names", self.counts.n_rows, self.cells.len()),
            ));
        }
        if self.genes.len() != self.counts.n_cols {
            return Err(Error::format(
                p,
                format!("the count matrix has {} genes (columns) but there are {} gene names", self.counts.n_cols, self.genes.len()),
            ));
        }
        if self.n_cells() == 0 {
            return Err(Error::format(p, "the dataset has no cells"));
        }
        if self.n_genes() == 0 {
            return Err(Error::format(p, "the dataset has no genes"));
        }
        if let Some(msg) = self.looks_transposed() {
            return Err(Error::format(p, msg));
        }
        let mut seen = HashSet::with_capacity(self.cells.len());
        for c in &self.cells {
            if !seen.insert(c.as_str()) {
                return Err(Error::format(p, format!("duplicate cell barcode '{c}': cell names must be unique")));
            }
        }
        for (k, c) in &self.obs {
            if let Ok(c) = c
                && c.len() != self.n_cells()
            {
                return Err(Error::format(p, format!("obs column '{k}' has {} values for {} cells", c.len(), self.n_cells())));
            }
        }
        Ok(())
    }

    /// Keep the given cells (all obs columns follow).
    pub fn select_cells(&self, rows: &[usize]) -> Dataset {
        Dataset {
            source: self.source.clone(),
            counts: self.counts.select_rows(rows),
            cells: rows.iter().map(|&r| self.cells[r].clone()).collect(),
            genes: self.genes.clone(),
            obs: self.obs.iter().map(|(k, c)| (k.clone(), c.as_ref().map(|c| c.select(rows)).map_err(|e| e.clone()))).collect(),
        }
    }

    /// Keep the given genes (strictly increasing indices).
    pub fn select_genes(&self, cols: &[usize]) -> Dataset {
        Dataset {
            source: self.source.clone(),
            counts: self.counts.select_cols(cols),
            cells: self.cells.clone(),
            genes: cols.iter().map(|&c| self.genes[c].clone()).collect(),
            obs: self.obs.clone(),
        }
    }
}

/// Genes expressed in nearly every cell type of mammals (upper-cased symbols); a barcode never reads
/// like one of them.
const HOUSEKEEPING: &[&str] = &[
    "ACTB", "GAPDH", "B2M", "MALAT1", "EEF1A1", "TPT1", "FTL", "FTH1", "RPLP0", "RPL13", "RPL13A", "RPS18", "RPS27A", "UBC", "UBB", "PPIA",
    "TMSB4X", "MT-CO1", "MT-ND1", "MT-CYB", "HSP90AB1", "YWHAZ", "TBP", "HPRT1", "PGK1", "LDHA", "ACTG1", "TUBB", "CFL1", "PFN1", "MYL6",
    "EEF2", "RPL10", "RPS3", "RPS6", "RPS12", "RPL3", "RPL4", "RPL7", "NPM1", "HNRNPA1",
];
