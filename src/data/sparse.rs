//! Compressed sparse row storage for raw counts (cells x genes). Datasets are never densified:
//! every operation here works on the non-zeros only.

/// A CSR matrix of `f32` values with sorted, duplicate-free column indices in each row.
#[derive(Debug, Clone, PartialEq)]
pub struct Csr {
    pub n_rows: usize,
    pub n_cols: usize,
    /// `indptr[r]..indptr[r+1]` is the range of row `r` in `indices`/`data`; length `n_rows + 1`.
    pub indptr: Vec<usize>,
    pub indices: Vec<u32>,
    pub data: Vec<f32>,
}

impl Csr {
    pub fn empty(n_rows: usize, n_cols: usize) -> Self {
        Csr { n_rows, n_cols, indptr: vec![0; n_rows + 1], indices: Vec::new(), data: Vec::new() }
    }

    /// Build from parts, checking the invariants (used by readers; the error names what is wrong).
    pub fn from_parts(n_rows: usize, n_cols: usize, indptr: Vec<usize>, indices: Vec<u32>, data: Vec<f32>) -> Result<Self, String> {
        if indptr.len() != n_rows + 1 {
            return Err(format!("indptr has {} entries, expected {} (rows + 1)", indptr.len(), n_rows + 1));
        }
        if indptr[0] != 0 {
            return Err(format!("indptr starts at {}, expected 0", indptr[0]));
        }
        if indices.len() != data.len() {
            return Err(format!("indices ({}) and data ({}) differ in length", indices.len(), data.len()));
        }
        if indptr[n_rows] != data.len() {
            return Err(format!("indptr ends at {}, but there are {} stored values", indptr[n_rows], data.len()));
        }
        for r in 0..n_rows {
            if indptr[r + 1] < indptr[r] {
                return Err(format!("indptr decreases at row {r}"));
            }
        }
        let mut m = Csr { n_rows, n_cols, indptr, indices, data };
        m.sort_rows_check(n_cols)?;
        Ok(m)
    }

    /// Sort each row by column and reject out-of-range or repeated column indices.
    fn sort_rows_check(&mut self, n_cols: usize) -> Result<(), String> {
        for r in 0..self.n_rows {
            let (s, e) = (self.indptr[r], self.indptr[r + 1]);
            let idx = &mut self.indices[s..e];
            if !idx.windows(2).all(|w| w[0] < w[1]) {
                let mut pairs: Vec<(u32, f32)> = idx.iter().copied().zip(self.data[s..e].iter().copied()).collect();
                pairs.sort_by_key(|p| p.0);
                for (k, (c, v)) in pairs.into_iter().enumerate() {
                    self.indices[s + k] = c;
                    self.data[s + k] = v;
                }
            }
            let idx = &self.indices[s..e];
            if let Some(w) = idx.windows(2).find(|w| w[0] == w[1]) {
                return Err(format!("row {} stores column {} twice", r + 1, w[0] as u64 + 1));
            }
            if let Some(&c) = idx.last()
                && c as usize >= n_cols
            {
                return Err(format!("row {} has column index {} but there are {} columns", r + 1, c as u64 + 1, n_cols));
            }
        }
        Ok(())
    }

    pub fn nnz(&self) -> usize {
        self.data.len()
    }

    /// Column indices and values of row `r`.
    #[inline]
    pub fn row(&self, r: usize) -> (&[u32], &[f32]) {
        let (s, e) = (self.indptr[r], self.indptr[r + 1]);
        (&self.indices[s..e], &self.data[s..e])
    }

    /// Total counts per row (the library size), accumulated in f64.
    pub fn row_sums(&self) -> Vec<f64> {
        (0..self.n_rows).map(|r| self.row(r).1.iter().map(|&v| v as f64).sum()).collect()
    }

    /// Number of strictly positive entries per row (scanpy's `n_genes`).
    pub fn row_nnz_positive(&self) -> Vec<usize> {
        (0..self.n_rows).map(|r| self.row(r).1.iter().filter(|&&v| v > 0.0).count()).collect()
    }

    /// Number of strictly positive entries per column.
    pub fn col_nnz_positive(&self) -> Vec<usize> {
        let mut n = vec![0usize; self.n_cols];
        for (&c, &v) in self.indices.iter().zip(&self.data) {
            if v > 0.0 {
                n[c as usize] += 1;
            }
        }
        n
    }

    /// Keep the given rows, in the given order.
    pub fn select_rows(&self, rows: &[usize]) -> Csr {
        let nnz: usize = rows.iter().map(|&r| self.indptr[r + 1] - self.indptr[r]).sum();
        let mut indptr = Vec::with_capacity(rows.len() + 1);
        let mut indices = Vec::with_capacity(nnz);
        let mut data = Vec::with_capacity(nnz);
        indptr.push(0);
        for &r in rows {
            let (i, d) = self.row(r);
            indices.extend_from_slice(i);
            data.extend_from_slice(d);
            indptr.push(indices.len());
        }
        Csr { n_rows: rows.len(), n_cols: self.n_cols, indptr, indices, data }
    }

    /// Keep the given columns (strictly increasing), renumbered 0..cols.len().
    pub fn select_cols(&self, cols: &[usize]) -> Csr {
        debug_assert!(cols.windows(2).all(|w| w[0] < w[1]));
        let mut map = vec![u32::MAX; self.n_cols];
        for (new, &old) in cols.iter().enumerate() {
            map[old] = new as u32;
        }
        let mut indptr = Vec::with_capacity(self.n_rows + 1);
        let mut indices = Vec::new();
        let mut data = Vec::new();
        indptr.push(0);
        for r in 0..self.n_rows {
            let (i, d) = self.row(r);
            for (&c, &v) in i.iter().zip(d) {
                let m = map[c as usize];
                if m != u32::MAX {
                    indices.push(m);
                    data.push(v);
                }
            }
            indptr.push(indices.len());
        }
        Csr { n_rows: self.n_rows, n_cols: cols.len(), indptr, indices, data }
    }

    /// The transpose, as CSR (equivalently: this matrix in CSC). Rows of the result come out sorted.
    pub fn transpose(&self) -> Csr {
        let mut counts = vec![0usize; self.n_cols + 1];
        for &c in &self.indices {
            counts[c as usize + 1] += 1;
        }
        for c in 0..self.n_cols {
            counts[c + 1] += counts[c];
        }
        let indptr = counts.clone();
        let mut next = counts;
        let mut indices = vec![0u32; self.nnz()];
        let mut data = vec![0f32; self.nnz()];
        for r in 0..self.n_rows {
            let (i, d) = self.row(r);
            for (&c, &v) in i.iter().zip(d) {
                let p = next[c as usize];
                indices[p] = r as u32;
                data[p] = v;
                next[c as usize] += 1;
            }
        }
        Csr { n_rows: self.n_cols, n_cols: self.n_rows, indptr, indices, data }
    }

    /// Dense copy of a few rows (for tests and small blocks only).
    pub fn rows_dense(&self, rows: std::ops::Range<usize>) -> Vec<f32> {
        let mut out = vec![0f32; rows.len() * self.n_cols];
        for (k, r) in rows.enumerate() {
            let (i, d) = self.row(r);
            for (&c, &v) in i.iter().zip(d) {
                out[k * self.n_cols + c as usize] = v;
            }
        }
        out
    }

    /// Build from a dense row-major block (tests, dense h5ad chunks).
    pub fn from_dense(n_rows: usize, n_cols: usize, dense: &[f32]) -> Csr {
        assert_eq!(dense.len(), n_rows * n_cols);
        let mut indptr = vec![0usize];
        let mut indices = Vec::new();
        let mut data = Vec::new();
        for r in 0..n_rows {
            for c in 0..n_cols {
                let v = dense[r * n_cols + c];
                if v != 0.0 {
                    indices.push(c as u32);
                    data.push(v);
                }
            }
            indptr.push(indices.len());
        }
        Csr { n_rows, n_cols, indptr, indices, data }
    }

    /// Fraction of entries that are zero.
    pub fn sparsity(&self) -> f64 {
        let total = self.n_rows as f64 * self.n_cols as f64;
        if total == 0.0 { 0.0 } else { 1.0 - self.nnz() as f64 / total }
    }
}

/// Check one stored count: finite, non-negative, whole. `what` says where it sits, for the message.
pub fn check_count(v: f64, what: impl FnOnce() -> String) -> Result<f32, String> {
    if !v.is_finite() {
        return Err(format!("{} is {} (counts must be finite)", what(), v));
    }
    if v < 0.0 {
        return Err(format!("{} is negative ({}); raw counts must be >= 0", what(), v));
    }
    if v.fract() != 0.0 {
        return Err(format!(
            "{} is {} which is not a whole number: scSpecies needs raw UMI counts, not normalised or log-transformed values",
            what(),
            v
        ));
    }
    if v > 16_777_216.0 {
        return Err(format!("{} is {} which is too large to store exactly as f32", what(), v));
    }
    Ok(v as f32)
}
