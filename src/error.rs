//! One error type for the whole crate. Every variant names the file (or key, or value) at fault,
//! because the person reading it has a 2 GB input and no debugger.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened or read at all.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A text file has a bad line.
    #[error("{path}, line {line}: {msg}")]
    Parse { path: PathBuf, line: u64, msg: String },
    /// A file is readable but its content is wrong (structure, shapes, values).
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// An obs column the user asked for does not exist.
    #[error("{path}: obs has no column '{key}' (columns present: {available})")]
    MissingKey { path: PathBuf, key: String, available: String },
    /// The data are readable but unusable for the analysis (too few cells, no homologous genes, ...).
    #[error("{0}")]
    Input(String),
    /// The compute device failed (allocation, copy, kernel launch), named with the operation.
    #[error("{0}")]
    Device(String),
    /// An option value is out of range or inconsistent with others.
    #[error("invalid option: {0}")]
    Config(String),
    /// A stop was requested ([`crate::interrupt`]); nothing was written.
    #[error("interrupted")]
    Interrupted,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }
    pub fn write(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Write { path: path.as_ref().to_path_buf(), source }
    }
    pub fn parse(path: impl AsRef<Path>, line: u64, msg: impl Into<String>) -> Self {
        Error::Parse { path: path.as_ref().to_path_buf(), line, msg: msg.into() }
    }
    pub fn format(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Format { path: path.as_ref().to_path_buf(), msg: msg.into() }
    }
}
