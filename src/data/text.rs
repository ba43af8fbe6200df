//! Opening text inputs that may be gzip-compressed, and reading them line by line with line numbers.

use crate::error::{Error, Result};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// A buffered line reader over a plain or `.gz` file that keeps the path and line number for errors.
pub struct Lines {
    path: PathBuf,
    inner: Box<dyn BufRead>,
    pub line_no: u64,
    /// Bytes read so far (after decompression).
    pub bytes_read: u64,
    buf: String,
}

/// No line of any text input may be longer (a file without line breaks, or a gzip bomb, must not be
/// read into memory whole).
pub const MAX_LINE_BYTES: u64 = 64 << 20;

pub fn open(path: &Path) -> Result<Lines> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = BufReader::with_capacity(1 << 16, f);
    // Sniff the gzip magic instead of trusting the extension.
    let magic = reader.fill_buf().map_err(|e| Error::io(path, e))?;
    let inner: Box<dyn BufRead> = if magic.len() >= 2 && magic[0] == 0x1f && magic[1] == 0x8b {
        Box::new(BufReader::with_capacity(1 << 16, flate2::read::MultiGzDecoder::new(reader)))
    } else {
        Box::new(reader)
    };
    Ok(Lines { path: path.to_path_buf(), inner, line_no: 0, bytes_read: 0, buf: String::new() })
}

impl Lines {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next line without its line ending, or `None` at the end of the file.
    pub fn next_line(&mut self) -> Result<Option<&str>> {
        Ok(self.next_numbered()?.map(|(_, s)| s))
    }

    /// Like [`Lines::next_line`], with the 1-based line number.
    pub fn next_numbered(&mut self) -> Result<Option<(u64, &str)>> {
        self.buf.clear();
        let n = (&mut self.inner).take(MAX_LINE_BYTES).read_line(&mut self.buf).map_err(|e| {
            let what = match e.kind() {
                std::io::ErrorKind::InvalidData => {
                    format!("invalid data after line {} (not UTF-8 text?)", self.line_no)
                }
                _ => format!("read failed after line {}: {e} (truncated or corrupted file?)", self.line_no),
            };
            Error::format(&self.path, what)
        })?;
        if n == 0 {
            return Ok(None);
        }
        self.bytes_read += n as u64;
        if n as u64 == MAX_LINE_BYTES && !self.buf.ends_with('\n') {
            return Err(Error::format(
                &self.path,
                format!("line {} is longer than {} MiB: not a text table", self.line_no + 1, MAX_LINE_BYTES >> 20),
            ));
        }
        self.line_no += 1;
        let s = self.buf.trim_end_matches(['\n', '\r']);
        Ok(Some((self.line_no, s)))
    }

    pub fn err(&self, msg: impl Into<String>) -> Error {
        Error::parse(&self.path, self.line_no, msg)
    }
}

/// Read a whole small file to memory (decompressing gzip).
pub fn read_to_string(path: &Path) -> Result<String> {
    let l = open(path)?;
    let mut s = String::new();
    l.inner.take(MAX_LINE_BYTES).read_to_string(&mut s).map_err(|e| Error::format(path, format!("read failed: {e}")))?;
    if s.len() as u64 == MAX_LINE_BYTES {
        return Err(Error::format(path, format!("larger than {} MiB: not the small text file expected here", MAX_LINE_BYTES >> 20)));
    }
    Ok(s)
}

/// A table of strings: a header row and the data rows, all split on tabs.
#[derive(Debug, Clone)]
pub struct Table {
    pub path: PathBuf,
    pub header: Option<Vec<String>>,
    pub rows: Vec<Vec<String>>,
}

/// Read a TSV file. With `header = true` the first line names the columns. Every row must have the same
/// number of fields as the first one. Blank trailing lines are ignored.
pub fn read_tsv(path: &Path, header: bool) -> Result<Table> {
    let mut lines = open(path)?;
    let mut head = None;
    let mut rows = Vec::new();
    let mut width = None;
    while let Some(line) = lines.next_line()? {
        if line.is_empty() {
            continue;
        }
        let fields: Vec<String> = line.split('\t').map(|s| s.to_string()).collect();
        match width {
            None => width = Some(fields.len()),
            Some(w) if w != fields.len() => {
                return Err(lines.err(format!("{} tab-separated fields, expected {} like the first line", fields.len(), w)));
            }
            _ => {}
        }
        if header && head.is_none() {
            head = Some(fields);
        } else {
            rows.push(fields);
        }
    }
    Ok(Table { path: path.to_path_buf(), header: head, rows })
}

/// Find a file among candidates (first that exists).
pub fn first_existing(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    names.iter().map(|n| dir.join(n)).find(|p| p.is_file())
}
