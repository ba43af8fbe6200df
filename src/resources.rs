//! Resource limits: an estimate of a run's peak memory from the prepared data, checked against what the
//! machine (or its cgroup, or `--max-memory`) allows before any training starts; and the peak resident
//! size actually reached, for the report.

use crate::error::{Error, Result};
use serde::Serialize;

/// Bytes of the parts of a run that scale with its inputs.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MemoryEstimate {
    /// Sparse counts of both species (CSR, with a transient copy while preprocessing).
    pub data: u64,
    /// Parameters, gradients and Adam moments of the context and target models, plus a checkpoint
    /// being serialised.
    pub models: u64,
    /// Dense minibatch buffers and the candidate-scoring chunk of the alignment step.
    pub training: u64,
    /// Eval-mode representations and kNN tables.
    pub representations: u64,
    /// Transient during the data-level kNN: the context's normalised f64 values for the exact
    /// re-scoring, the screened candidates and the f32 blocks.
    pub knn: u64,
    pub total: u64,
}

/// Estimate a run's peak memory. `genes`, `cells` and `nnz` are (context, target).
pub fn estimate(
    genes: (usize, usize),
    cells: (usize, usize),
    nnz: (usize, usize),
    batches: (usize, usize),
    params: (u64, u64),
    batch_size: usize,
) -> MemoryEstimate {
    let csr = |nnz: usize, rows: usize| nnz as u64 * 8 + (rows as u64 + 1) * 8;
    let data = 2 * (csr(nnz.0, cells.0) + csr(nnz.1, cells.1));
    // value, gradient, two Adam moments in f32; a checkpoint adds up to six more copies while written.
    let models = 4 * 4 * (params.0 + params.1) + 6 * 4 * params.0.max(params.1);
    let g = genes.0.max(genes.1) as u64;
    let step = batch_size as u64 * (g + batches.0.max(batches.1) as u64) * 4 * 16;
    let candidates = crate::method::CANDIDATE_CHUNK as u64 * g * 4 * 8;
    let training = step + candidates;
    let n = (cells.0 + cells.1) as u64;
    use crate::method::{INTER_DIM, KNN_STORED, LATENT_DIM};
    let representations = n * (INTER_DIM + 2 * LATENT_DIM + 2) as u64 * 4 + cells.1 as u64 * KNN_STORED as u64 * (4 + 8);
    let h = genes.0.min(genes.1);
    let knn = crate::knn::data_level::transient_bytes(nnz.0, cells.1, h, KNN_STORED);
    let total = data + models + training + representations + knn + (64 << 20);
    MemoryEstimate { data, models, training, representations, knn, total }
}

/// Memory this process may use: the smallest of the machine's available memory and the cgroup limit
/// (minus what the cgroup already uses). None where neither can be read.
pub fn available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("MemAvailable:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok().and_then(|s| s.trim().parse::<u64>().ok()).map(|max| {
        let used = std::fs::read_to_string("/sys/fs/cgroup/memory.current").ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0);
        max.saturating_sub(used)
    });
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The peak resident set size of this process so far (Linux `VmHWM`).
pub fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let l = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    l.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// Parse a size such as `24G`, `512M`, `1.5GiB` or a plain number of bytes.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num.parse().map_err(|_| format!("'{s}' is not a size (e.g. 24G, 512M)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        u => return Err(format!("unknown unit '{u}' in '{s}' (use K, M, G or T)")),
    };
    if !(v > 0.0 && v.is_finite()) {
        return Err(format!("'{s}' must be a positive size"));
    }
    Ok((v * mult) as u64)
}

pub fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

/// Refuse to start a run whose estimate exceeds the limit (`--max-memory`, else what is available).
pub fn check(est: &MemoryEstimate, max_memory: Option<u64>) -> Result<()> {
    let (limit, source) = match max_memory {
        Some(m) => (m, "--max-memory"),
        None => match available() {
            Some(a) => (a, "available on this machine"),
            None => return Ok(()),
        },
    };
    if est.total > limit {
        return Err(Error::Input(format!(
            "this run needs about {} (counts {}, models and optimiser state {}, training buffers {}, representations {}) but {} {} {}. Use fewer genes (--n-top-genes 5000), fewer cells, or a larger machine; if you know better, raise --max-memory",
            gib(est.total),
            gib(est.data),
            gib(est.models),
            gib(est.training),
            gib(est.representations),
            gib(limit),
            if source == "--max-memory" { "is the limit set by" } else { "are" },
            source
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("24G").unwrap(), 24 << 30);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5X").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn estimate_grows_with_nonzeros_and_genes() {
        let a = estimate((1000, 1000), (500, 500), (10_000, 10_000), (1, 1), (1_000_000, 1_000_000), 128);
        let b = estimate((1000, 1000), (500, 500), (20_000, 20_000), (1, 1), (1_000_000, 1_000_000), 128);
        assert_eq!(b.data - a.data, 2 * 2 * 10_000 * 8);
        assert!(b.total > a.total);
        assert!(check(&a, Some(a.total)).is_ok());
        let e = check(&a, Some(a.total - 1)).unwrap_err().to_string();
        assert!(e.contains("--max-memory") && e.contains("GiB"), "{e}");
    }
}
