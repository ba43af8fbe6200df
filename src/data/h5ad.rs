//! AnnData `.h5ad` reader: `X` (or a layer) as CSR, CSC or dense, float or integer; obs columns as
//! categoricals (current `codes`/`categories` groups and the legacy pre-0.8 `__categories` layout),
//! strings or numbers; var names from the `_index` attribute or the usual fallbacks.
//! Pure-Rust HDF5 (`hdf5-pure`): nothing to install.

use super::dataset::{Categorical, Column, Dataset, ObsColumns};
use super::sparse::{Csr, check_count};
use crate::error::{Error, Result};
use hdf5_pure::{AttrValue, DType, File, Group};
use std::collections::HashMap;
use std::path::Path;

/// Elements read per window from a large 1-D dataset, so memory follows the window and not the file.
const WINDOW: u64 = 1 << 22;

/// Read the counts in `X`.
pub fn read_h5ad(path: &Path) -> Result<Dataset> {
    read_h5ad_matrix(path, "X")
}

/// Read the counts from another matrix: `"X"`, `"raw/X"` (var names then come from `raw/var`) or
/// `"layers/<name>"`.
pub fn read_h5ad_matrix(path: &Path, matrix: &str) -> Result<Dataset> {
    if !path.is_file() {
        return Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")));
    }
    // hdf5-pure returns errors for malformed files; a panic deep inside it must still not take the
    // program down without naming the file.
    let res = std::panic::catch_unwind(|| read_inner(path, matrix));
    match res {
        Ok(r) => r,
        Err(_) => Err(Error::format(path, "the HDF5 reader failed on this file (corrupted or unsupported .h5ad)")),
    }
}

/// Elements a dataset may declare before it is read: a file cannot hold more than this (even compressed),
/// so a corrupted shape is an error instead of a giant allocation.
fn element_limit(path: &Path) -> u64 {
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    len.saturating_mul(1024).max(1 << 20)
}

/// The number of elements `d` declares, if plausible for the file.
fn checked_len(d: &hdf5_pure::Dataset, path: &Path) -> std::result::Result<u64, String> {
    let shape = d.shape().map_err(|e| e.to_string())?;
    let n = shape.iter().try_fold(1u64, |a, &b| a.checked_mul(b)).ok_or("its shape overflows")?;
    let limit = element_limit(path);
    if n > limit {
        return Err(format!("declares {n} elements (shape {shape:?}), impossible in a file of this size: corrupted"));
    }
    Ok(n)
}

fn h5err(path: &Path, what: &str, e: hdf5_pure::Error) -> Error {
    Error::format(path, format!("{what}: {e}"))
}

fn read_inner(path: &Path, matrix: &str) -> Result<Dataset> {
    let f = File::open(path).map_err(|e| h5err(path, "not a readable HDF5 (.h5ad) file (truncated or corrupted?)", e))?;
    let counts = read_matrix(&f, path, matrix).map_err(|e| match e {
        // Log-normalised X with the counts kept elsewhere is common: say where to look.
        Error::Format { path, msg } if msg.contains("not a whole number") => {
            let mut others: Vec<String> = f.group("layers").and_then(|g| g.groups()).unwrap_or_default();
            others.extend(f.group("layers").and_then(|g| g.datasets()).unwrap_or_default());
            if f.group("raw").is_ok() {
                others.push("raw".into());
            }
            let hint = if others.is_empty() {
                String::new()
            } else {
                format!(" (this file also has: {}; choose one with --context-layer / --target-layer)", others.join(", "))
            };
            Error::Format { path, msg: format!("{msg}{hint}") }
        }
        other => other,
    })?;
    let var = if matrix.starts_with("raw/") { "raw/var" } else { "var" };
    let genes = read_index(&f, path, var)?;
    let obs_group = f.group("obs").map_err(|e| h5err(path, "no obs group", e))?;
    let cells = read_index(&f, path, "obs")?;
    let obs = read_obs_columns(&obs_group, path)?;
    let ds = Dataset { source: path.to_path_buf(), counts, cells, genes, obs };
    ds.validate()?;
    Ok(ds)
}

fn attr_str(attrs: &HashMap<String, AttrValue>, key: &str) -> Option<String> {
    attrs.get(key).and_then(|v| v.as_strings()).and_then(|s| s.first().cloned())
}

fn attr_strs(attrs: &HashMap<String, AttrValue>, key: &str) -> Option<Vec<String>> {
    attrs.get(key).and_then(|v| v.as_strings()).map(|s| s.to_vec())
}

fn attr_ints(attrs: &HashMap<String, AttrValue>, key: &str) -> Option<Vec<i64>> {
    Some(match attrs.get(key)? {
        AttrValue::I64Array(v) => v.clone(),
        AttrValue::I32Array(v) => v.iter().map(|&x| x as i64).collect(),
        AttrValue::U64Array(v) => v.iter().map(|&x| x as i64).collect(),
        AttrValue::U32Array(v) => v.iter().map(|&x| x as i64).collect(),
        _ => return None,
    })
}

fn read_matrix(f: &File, path: &Path, name: &str) -> Result<Csr> {
    if let Ok(g) = f.group(name) {
        let attrs = g.attrs().map_err(|e| h5err(path, name, e))?;
        let enc = attr_str(&attrs, "encoding-type").or_else(|| attr_str(&attrs, "h5sparse_format").map(|s| format!("{s}_matrix")));
        let shape = attr_ints(&attrs, "shape").or_else(|| attr_ints(&attrs, "h5sparse_shape"));
        let shape = match shape.as_deref() {
            Some([r, c]) if *r >= 0 && *c >= 0 => (*r as usize, *c as usize),
            _ => {
                return Err(Error::format(path, format!("{name} is a group without a 2-d 'shape' attribute")));
            }
        };
        return match enc.as_deref() {
            Some("csr_matrix") => read_compressed(&g, path, name, shape.0, shape.1),
            Some("csc_matrix") => Ok(read_compressed(&g, path, name, shape.1, shape.0)?.transpose()),
            other => {
                Err(Error::format(path, format!("{name} has encoding '{}': expected csr_matrix or csc_matrix", other.unwrap_or("none"))))
            }
        };
    }
    let d = f.dataset(name).map_err(|e| h5err(path, &format!("no matrix '{name}'"), e))?;
    let shape = d.shape().map_err(|e| h5err(path, name, e))?;
    let (n, g) = match shape.as_slice() {
        [n, g] => (*n as usize, *g as usize),
        s => {
            return Err(Error::format(path, format!("{name} has shape {s:?}, expected a 2-d matrix")));
        }
    };
    checked_len(&d, path).map_err(|m| Error::format(path, format!("{name} {m}")))?;
    // Dense X: read a band of rows at a time and keep only the non-zeros.
    let rows_per = ((WINDOW as usize) / g.max(1)).max(1);
    let mut indptr = vec![0usize];
    let mut indices = Vec::new();
    let mut data = Vec::new();
    let mut r0 = 0;
    while r0 < n {
        let k = rows_per.min(n - r0);
        let block = d.read_f64_rows(r0 as u64, k as u64).map_err(|e| h5err(path, name, e))?;
        if block.len() != k * g {
            return Err(Error::format(path, format!("{name}: short read at row {r0} (truncated file?)")));
        }
        for r in 0..k {
            for c in 0..g {
                let v = block[r * g + c];
                if v != 0.0 {
                    let v = check_count(v, || format!("{name}[{}, {}]", r0 + r, c)).map_err(|m| Error::format(path, m))?;
                    indices.push(c as u32);
                    data.push(v);
                }
            }
            indptr.push(indices.len());
        }
        r0 += k;
    }
    Csr::from_parts(n, g, indptr, indices, data).map_err(|m| Error::format(path, format!("{name}: {m}")))
}

/// A CSR-layout group (`data`, `indices`, `indptr`) with `major` rows and `minor` columns.
fn read_compressed(g: &Group, path: &Path, name: &str, major: usize, minor: usize) -> Result<Csr> {
    let ds = |k: &str| g.dataset(k).map_err(|e| h5err(path, &format!("{name}/{k} is missing"), e));
    let (dd, di, dp) = (ds("data")?, ds("indices")?, ds("indptr")?);
    let len = |d: &hdf5_pure::Dataset, k: &str| -> Result<u64> {
        let s = d.shape().map_err(|e| h5err(path, &format!("{name}/{k}"), e))?;
        match s.as_slice() {
            [n] => Ok(*n),
            s => Err(Error::format(path, format!("{name}/{k} has shape {s:?}, expected 1-d"))),
        }
    };
    for (d, k) in [(&dd, "data"), (&di, "indices"), (&dp, "indptr")] {
        checked_len(d, path).map_err(|m| Error::format(path, format!("{name}/{k} {m}")))?;
    }
    let nnz = len(&dd, "data")?;
    if len(&di, "indices")? != nnz {
        return Err(Error::format(path, format!("{name}: indices and data differ in length")));
    }
    if len(&dp, "indptr")? != major as u64 + 1 {
        return Err(Error::format(path, format!("{name}/indptr has {} entries for {} rows", len(&dp, "indptr")?, major)));
    }
    let indptr_raw = dp.read_i64().map_err(|e| h5err(path, &format!("{name}/indptr"), e))?;
    let mut indptr = Vec::with_capacity(indptr_raw.len());
    for (k, &p) in indptr_raw.iter().enumerate() {
        if p < 0 || p as u64 > nnz {
            return Err(Error::format(path, format!("{name}/indptr[{k}] = {p} is outside 0..={nnz}")));
        }
        indptr.push(p as usize);
    }
    // Capacity from the file's real size, not from the declared length alone.
    let cap = nnz.min(std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)) as usize;
    let mut indices = Vec::with_capacity(cap);
    let mut data = Vec::with_capacity(cap);
    let mut s = 0u64;
    while s < nnz {
        let k = WINDOW.min(nnz - s);
        let iw = di.read_i64_rows(s, k).map_err(|e| h5err(path, &format!("{name}/indices"), e))?;
        let vw = dd.read_f64_rows(s, k).map_err(|e| h5err(path, &format!("{name}/data"), e))?;
        if iw.len() as u64 != k || vw.len() as u64 != k {
            return Err(Error::format(path, format!("{name}: short read at element {s} (truncated file?)")));
        }
        for (j, (&i, &v)) in iw.iter().zip(&vw).enumerate() {
            if i < 0 || i as usize >= minor {
                return Err(Error::format(path, format!("{name}/indices[{}] = {i} is outside 0..{minor}", s + j as u64)));
            }
            indices.push(i as u32);
            data.push(check_count(v, || format!("{name}/data[{}]", s + j as u64)).map_err(|m| Error::format(path, m))?);
        }
        s += k;
    }
    Csr::from_parts(major, minor, indptr, indices, data).map_err(|m| Error::format(path, format!("{name}: {m}")))
}

/// The index (row names) of a dataframe group: the `_index` attribute names the dataset.
fn read_index(f: &File, path: &Path, group: &str) -> Result<Vec<String>> {
    let g = f.group(group).map_err(|e| h5err(path, &format!("no '{group}' group"), e))?;
    let attrs = g.attrs().map_err(|e| h5err(path, group, e))?;
    let names = g.datasets().map_err(|e| h5err(path, group, e))?;
    let chosen = attr_str(&attrs, "_index")
        .filter(|n| names.contains(n))
        .or_else(|| {
            ["_index", "index", "var_names", "obs_names", "gene_symbols", "gene_ids"]
                .iter()
                .map(|s| s.to_string())
                .find(|n| names.contains(n))
        })
        .ok_or_else(|| {
            Error::format(
                path,
                format!("{group} has no index dataset (looked for the '_index' attribute, '_index', 'index', '{group}_names')"),
            )
        })?;
    let d = g.dataset(&chosen).map_err(|e| h5err(path, &format!("{group}/{chosen}"), e))?;
    read_strings(&d, path).map_err(|m| Error::format(path, format!("{group}/{chosen}: {m}")))
}

fn read_strings(d: &hdf5_pure::Dataset, path: &Path) -> std::result::Result<Vec<String>, String> {
    checked_len(d, path)?;
    match d.dtype().map_err(|e| e.to_string())? {
        DType::String | DType::VariableLengthString => d.read_string().map_err(|e| e.to_string()),
        DType::F32 | DType::F64 => Ok(d.read_f64().map_err(|e| e.to_string())?.iter().map(|x| x.to_string()).collect()),
        DType::I8 | DType::I16 | DType::I32 | DType::I64 | DType::U8 | DType::U16 | DType::U32 | DType::U64 => {
            Ok(d.read_i64().map_err(|e| e.to_string())?.iter().map(|x| x.to_string()).collect())
        }
        other => Err(format!("cannot read values of type {other} as names")),
    }
}

fn read_obs_columns(g: &Group, path: &Path) -> Result<ObsColumns> {
    let dataset = |d: hdf5_pure::Dataset| -> std::result::Result<hdf5_pure::Dataset, String> {
        checked_len(&d, path)?;
        Ok(d)
    };
    let attrs = g.attrs().map_err(|e| h5err(path, "obs", e))?;
    let index = attr_str(&attrs, "_index").unwrap_or_else(|| "_index".into());
    let datasets = g.datasets().map_err(|e| h5err(path, "obs", e))?;
    let groups = g.groups().map_err(|e| h5err(path, "obs", e))?;
    let mut order = attr_strs(&attrs, "column-order").unwrap_or_default();
    // Columns present but not listed (older writers) are appended in storage order.
    for n in datasets.iter().chain(groups.iter()) {
        if n != &index && n != "__categories" && !order.contains(n) {
            order.push(n.clone());
        }
    }
    let legacy: Option<Group> = if groups.iter().any(|n| n == "__categories") { g.group("__categories").ok() } else { None };
    let mut out = Vec::new();
    for name in order {
        let col = if groups.contains(&name) {
            g.group(&name).map_err(|e| e.to_string()).and_then(|cg| read_group_column(&cg, path))
        } else if datasets.contains(&name) {
            g.dataset(&name)
                .map_err(|e| e.to_string())
                .and_then(dataset)
                .and_then(|d| read_dataset_column(&d, &name, legacy.as_ref(), path))
        } else {
            Err("listed in column-order but not stored".into())
        };
        out.push((name, col));
    }
    Ok(out)
}

/// Integer codes with -1 for missing, mapped onto `categories`.
fn codes_to_categorical(codes: &[i64], categories: Vec<String>) -> std::result::Result<Categorical, String> {
    let n = categories.len() as i64;
    let mut out = Vec::with_capacity(codes.len());
    for (k, &c) in codes.iter().enumerate() {
        if c < -1 || c >= n {
            return Err(format!("code {c} at cell {k} is outside the {n} categories"));
        }
        out.push(if c < 0 { None } else { Some(c as u32) });
    }
    Ok(Categorical { codes: out, categories })
}

fn read_group_column(cg: &Group, path: &Path) -> std::result::Result<Column, String> {
    let attrs = cg.attrs().map_err(|e| e.to_string())?;
    let ds = |k: &str| -> std::result::Result<hdf5_pure::Dataset, String> {
        let d = cg.dataset(k).map_err(|e| format!("{k}: {e}"))?;
        checked_len(&d, path).map_err(|m| format!("{k} {m}"))?;
        Ok(d)
    };
    match attr_str(&attrs, "encoding-type").as_deref() {
        Some("categorical") => {
            let codes = ds("codes")?.read_i64().map_err(|e| format!("codes: {e}"))?;
            let cats = read_strings(&ds("categories")?, path)?;
            Ok(Column::Categorical(codes_to_categorical(&codes, cats)?))
        }
        Some(enc @ ("nullable-integer" | "nullable-boolean")) => {
            let v = ds("values")?.read_f64().map_err(|e| format!("{enc} values: {e}"))?;
            let mask = ds("mask")?.read_i64().map_err(|e| format!("{enc} mask: {e}"))?;
            Ok(Column::Numeric(v.iter().zip(&mask).map(|(&x, &m)| if m != 0 { f64::NAN } else { x }).collect()))
        }
        other => Err(format!("group column with encoding '{}' is not supported", other.unwrap_or("none"))),
    }
}

fn read_dataset_column(d: &hdf5_pure::Dataset, name: &str, legacy: Option<&Group>, path: &Path) -> std::result::Result<Column, String> {
    let dt = d.dtype().map_err(|e| e.to_string())?;
    match dt {
        DType::String | DType::VariableLengthString => {
            let s = d.read_string().map_err(|e| e.to_string())?;
            Ok(Column::Categorical(Categorical::from_strings(&s)))
        }
        DType::F32 | DType::F64 => Ok(Column::Numeric(d.read_f64().map_err(|e| e.to_string())?)),
        DType::I8 | DType::I16 | DType::I32 | DType::I64 | DType::U8 | DType::U16 | DType::U32 | DType::U64 | DType::Enum(_) => {
            let v = d.read_i64().map_err(|e| e.to_string())?;
            // Legacy AnnData (< 0.8): codes here, categories in obs/__categories/<name>.
            // (The `categories` attribute is an object reference; its partner dataset is found by name.)
            if let Some(cats) = legacy.and_then(|lg| lg.dataset(name).ok()) {
                let cats = read_strings(&cats, path)?;
                return Ok(Column::Categorical(codes_to_categorical(&v, cats)?));
            }
            Ok(Column::Numeric(v.into_iter().map(|x| x as f64).collect()))
        }
        other => Err(format!("values of type {other} are not supported")),
    }
}
