//! Data in: readers for the two input formats, the in-memory dataset, and sparse counts.

pub mod dataset;
#[cfg(feature = "h5ad")]
pub mod h5ad;
pub mod mtx;
pub mod sparse;
pub mod tenx;
pub mod text;

pub use dataset::{Categorical, Column, Dataset};
pub use sparse::Csr;

use crate::error::{Error, Result};
use std::path::Path;

/// Read a dataset from a folder (10x-style or ours) or an `.h5ad` file, chosen by what the path is.
pub fn read_dataset(path: &Path) -> Result<Dataset> {
    read_dataset_layer(path, None)
}

/// Like [`read_dataset`], taking the counts of an `.h5ad` from another matrix: `None` or `"X"` for `X`,
/// `"raw"` for `raw/X` (with `raw/var` names), any other name for `layers/<name>`.
pub fn read_dataset_layer(path: &Path, layer: Option<&str>) -> Result<Dataset> {
    if path.is_dir() {
        if let Some(l) = layer.filter(|l| *l != "X") {
            return Err(Error::format(
                path,
                format!("a layer ('{l}') can only be chosen for an .h5ad input; a folder has one count matrix"),
            ));
        }
        return tenx::read_folder(path);
    }
    if !path.exists() {
        return Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder")));
    }
    let name = path.file_name().map(|s| s.to_string_lossy().to_lowercase()).unwrap_or_default();
    if name.ends_with(".h5ad.gz") {
        return Err(Error::format(path, "gzip-compressed .h5ad is not read directly: run `gunzip -k` on it first"));
    }
    if name.ends_with(".h5ad") || name.ends_with(".h5") {
        #[cfg(feature = "h5ad")]
        return match layer {
            None | Some("X") => h5ad::read_h5ad(path),
            Some("raw") => h5ad::read_h5ad_matrix(path, "raw/X"),
            Some(l) => h5ad::read_h5ad_matrix(path, &format!("layers/{l}")),
        };
        #[cfg(not(feature = "h5ad"))]
        return Err(Error::format(path, "this build has no .h5ad support (enable the `h5ad` feature)"));
    }
    if name.ends_with(".mtx") || name.ends_with(".mtx.gz") {
        return Err(Error::format(path, "give the folder that holds the .mtx file (with genes.tsv and cells.tsv), not the .mtx itself"));
    }
    Err(Error::format(path, "unknown input: expected an .h5ad file or a folder with counts.mtx[.gz], genes.tsv and cells.tsv"))
}
