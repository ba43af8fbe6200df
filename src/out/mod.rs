//! Out: everything we write. Each file is written under a temporary name in the same folder and
//! renamed when complete, so an interrupted run never leaves a half-written output behind.

pub mod figures;
#[cfg(feature = "h5ad")]
pub mod h5ad;
pub mod plot;
pub mod report;
#[cfg(feature = "h5ad")]
pub mod run;
#[cfg(feature = "h5ad")]
pub use run::{WriteOptions, write_run};

use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The temporary sibling of `path` used while it is written.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Write a file atomically: `fill` writes into a buffered temporary file, which is renamed onto `path`
/// only if everything succeeded; on error the temporary file is removed.
pub fn write_atomic(path: &Path, fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    let tmp = temp_path(path);
    let res = (|| {
        let f = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::new(f);
        fill(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::write(path, e));
    }
    Ok(())
}

/// Write bytes atomically.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |w| w.write_all(bytes))
}

/// Write a JSON value atomically (pretty-printed, newline-terminated).
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut s = serde_json::to_string_pretty(value).map_err(|e| Error::write(path, std::io::Error::other(e)))?;
    s.push('\n');
    write_bytes_atomic(path, s.as_bytes())
}

/// Write a TSV table atomically. Tabs and newlines inside fields are replaced by spaces.
pub fn write_tsv(path: &Path, header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> Result<()> {
    write_atomic(path, |w| {
        writeln!(w, "{}", header.join("\t"))?;
        for r in rows {
            let clean: Vec<String> = r.into_iter().map(|f| f.replace(['\t', '\n', '\r'], " ")).collect();
            writeln!(w, "{}", clean.join("\t"))?;
        }
        Ok(())
    })
}

/// Create the output folder (and parents).
pub fn create_out_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::write(dir, e))
}
