//! A streaming Matrix Market reader for count matrices (`coordinate integer|real|pattern general`,
//! plain or gzip). Values are checked as they are read, so a bad count is reported with its line number.

use super::sparse::{Csr, check_count};
use super::text;
use crate::error::{Error, Result};
use std::path::Path;

/// What the header and size line of a Matrix Market file say.
pub struct MtxHeader {
    pub n_rows: usize,
    pub n_cols: usize,
    pub nnz: u64,
    pattern: bool,
}

/// Read the header and the size line only (cheap; for checking the shape before reading the entries).
pub fn read_shape(path: &Path) -> Result<(usize, usize)> {
    let mut lines = text::open(path)?;
    let h = read_header(path, &mut lines)?;
    Ok((h.n_rows, h.n_cols))
}

fn read_header(path: &Path, lines: &mut text::Lines) -> Result<MtxHeader> {
    let header = match lines.next_line()? {
        Some(h) => h.to_string(),
        None => {
            return Err(Error::format(path, "empty file (expected a %%MatrixMarket header)"));
        }
    };
    let h: Vec<String> = header.split_whitespace().map(|s| s.to_ascii_lowercase()).collect();
    if h.len() < 5 || h[0] != "%%matrixmarket" || h[1] != "matrix" {
        return Err(lines.err(format!("not a Matrix Market header: '{header}'")));
    }
    if h[2] != "coordinate" {
        return Err(lines.err(format!("format '{}' is not supported: only sparse 'coordinate' files", h[2])));
    }
    let pattern = match h[3].as_str() {
        "integer" | "real" | "double" => false,
        "pattern" => true,
        other => {
            return Err(lines.err(format!("field type '{other}' is not supported (integer, real or pattern)")));
        }
    };
    if h[4] != "general" {
        return Err(lines.err(format!("symmetry '{}' is not supported: a count matrix is 'general'", h[4])));
    }
    // Size line: first non-comment line.
    let (n_rows, n_cols, nnz) = loop {
        let (ln, line) = match lines.next_numbered()? {
            Some(l) => l,
            None => {
                return Err(Error::format(path, "file ends before the size line (truncated?)"));
            }
        };
        let t = line.trim();
        if t.is_empty() || t.starts_with('%') {
            continue;
        }
        let parts: Vec<&str> = t.split_whitespace().collect();
        let parsed: Vec<Option<u64>> = parts.iter().map(|p| p.parse::<u64>().ok()).collect();
        if parts.len() != 3 || parsed.iter().any(|p| p.is_none()) {
            return Err(Error::parse(path, ln, format!("expected 'rows cols entries', found '{t}'")));
        }
        break (parsed[0].unwrap(), parsed[1].unwrap(), parsed[2].unwrap());
    };
    if n_rows > u32::MAX as u64 || n_cols > u32::MAX as u64 {
        return Err(lines.err(format!("matrix of {n_rows} x {n_cols} is too large")));
    }
    if nnz > n_rows.saturating_mul(n_cols) {
        return Err(lines.err(format!("{nnz} entries do not fit in a {n_rows} x {n_cols} matrix")));
    }
    Ok(MtxHeader { n_rows: n_rows as usize, n_cols: n_cols as usize, nnz, pattern })
}

/// Read a Matrix Market file into CSR with the file's rows as rows.
///
/// Allocation follows the entries really present, never the size line alone: the row pointer array
/// (one slot per row) is only built once the entries are read, and only if the number of rows is
/// plausible for the bytes read (at most 64 rows per byte of text). Callers that know the shape from
/// other files (the folder reader) check it with [`read_shape`] first.
pub fn read_mtx(path: &Path) -> Result<Csr> {
    let mut lines = text::open(path)?;
    let MtxHeader { n_rows, n_cols, nnz, pattern } = read_header(path, &mut lines)?;
    // Never trust the header for the allocation size: grow as entries really arrive.
    let file_len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let cap = nnz.min(file_len / 2).min(1 << 22) as usize;
    let mut rows: Vec<u32> = Vec::with_capacity(cap);
    let mut cols: Vec<u32> = Vec::with_capacity(cap);
    let mut vals: Vec<f32> = Vec::with_capacity(cap);
    while let Some((ln, line)) = lines.next_numbered()? {
        let perr = |m: String| Error::parse(path, ln, m);
        let t = line.trim();
        if t.is_empty() || t.starts_with('%') {
            continue;
        }
        if rows.len() as u64 == nnz {
            return Err(perr(format!("more entries than the {nnz} the size line announces")));
        }
        let mut it = t.split_ascii_whitespace();
        let r = it.next().and_then(|s| s.parse::<u64>().ok());
        let c = it.next().and_then(|s| s.parse::<u64>().ok());
        let (r, c) = match (r, c) {
            (Some(r), Some(c)) => (r, c),
            _ => return Err(perr(format!("expected 'row col value', found '{t}'"))),
        };
        if r == 0 || c == 0 || r > n_rows as u64 || c > n_cols as u64 {
            return Err(perr(format!("entry ({r}, {c}) is outside the {n_rows} x {n_cols} matrix (indices are 1-based)")));
        }
        let v = if pattern {
            1.0
        } else {
            let s = it.next().ok_or_else(|| perr(format!("missing value in '{t}'")))?;
            let v: f64 = s.parse().map_err(|_| perr(format!("value '{s}' is not a number")))?;
            check_count(v, || format!("the count at row {r}, column {c}")).map_err(perr)?
        };
        if it.next().is_some() {
            return Err(perr(format!("too many fields in '{t}'")));
        }
        rows.push((r - 1) as u32);
        cols.push((c - 1) as u32);
        vals.push(v);
    }
    if (n_rows as u64) > 64 * lines.bytes_read.max(1) {
        return Err(Error::format(
            path,
            format!("the size line announces {n_rows} rows, implausible for a file of {} bytes", lines.bytes_read),
        ));
    }
    if (rows.len() as u64) < nnz {
        return Err(Error::format(
            path,
            format!("the size line announces {nnz} entries but the file holds {} (truncated file?)", rows.len()),
        ));
    }
    coo_to_csr(n_rows, n_cols, &rows, &cols, &vals).map_err(|m| Error::format(path, m))
}

/// Counting sort of triplets into CSR; duplicates are an error (a count matrix has one value per cell and gene).
pub fn coo_to_csr(n_rows: usize, n_cols: usize, rows: &[u32], cols: &[u32], vals: &[f32]) -> Result<Csr, String> {
    let mut indptr = vec![0usize; n_rows + 1];
    for &r in rows {
        indptr[r as usize + 1] += 1;
    }
    for r in 0..n_rows {
        indptr[r + 1] += indptr[r];
    }
    let mut next = indptr.clone();
    let mut indices = vec![0u32; rows.len()];
    let mut data = vec![0f32; rows.len()];
    for k in 0..rows.len() {
        let r = rows[k] as usize;
        let p = next[r];
        indices[p] = cols[k];
        data[p] = vals[k];
        next[r] += 1;
    }
    Csr::from_parts(n_rows, n_cols, indptr, indices, data)
}
