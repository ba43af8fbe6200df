//! Helpers shared by the integration tests: locating the real data, writing small inputs.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

/// The bundled demo data (always present in a clone). A test binary carried to another machine
/// (scripts/gpu-check.sh) finds it under the working directory instead.
pub fn bundled() -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/baron-pancreas");
    if built.is_dir() { built } else { PathBuf::from("data/baron-pancreas") }
}

/// `../shared/data/baron-pancreas` (or `$SCSPECIES_SHARED/data/baron-pancreas`). In CI (`CI` set) it
/// must exist; elsewhere a test that needs it is skipped with a message saying so.
pub fn shared_data(test: &str) -> Option<PathBuf> {
    let root =
        std::env::var_os("SCSPECIES_SHARED").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let p = root.join("data/baron-pancreas");
    if p.is_dir() {
        return Some(p);
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {} is missing, and CI must run this test on the real data", p.display());
    }
    eprintln!("SKIPPED {test}: {} not found (set SCSPECIES_SHARED)", p.display());
    None
}

/// Decompress a shared `.h5ad.gz` once per test process into a temp folder.
pub fn gunzip_to(src: &Path, dir: &Path) -> PathBuf {
    let name = src.file_name().unwrap().to_string_lossy().trim_end_matches(".gz").to_string();
    let dst = dir.join(name);
    let mut d = flate2::read::GzDecoder::new(std::fs::File::open(src).unwrap());
    let mut out = std::fs::File::create(&dst).unwrap();
    std::io::copy(&mut d, &mut out).unwrap();
    dst
}

/// A small cells x genes dataset in our folder format. `obs` columns are (name, values).
pub fn write_folder(dir: &Path, dense: &[Vec<f64>], genes: &[&str], cells: &[&str], obs: &[(&str, Vec<&str>)]) {
    std::fs::create_dir_all(dir).unwrap();
    let nnz: usize = dense.iter().map(|r| r.iter().filter(|&&v| v != 0.0).count()).sum();
    let mut m = String::from("%%MatrixMarket matrix coordinate real general\n");
    m += &format!("{} {} {}\n", dense.len(), genes.len(), nnz);
    for (i, r) in dense.iter().enumerate() {
        for (j, &v) in r.iter().enumerate() {
            if v != 0.0 {
                m += &format!("{} {} {}\n", i + 1, j + 1, v);
            }
        }
    }
    std::fs::write(dir.join("counts.mtx"), m).unwrap();
    std::fs::write(dir.join("genes.tsv"), format!("gene\n{}\n", genes.join("\n"))).unwrap();
    let mut c = String::from("barcode");
    for (k, _) in obs {
        c += &format!("\t{k}");
    }
    c += "\n";
    for (i, cell) in cells.iter().enumerate() {
        c += cell;
        for (_, v) in obs {
            c += &format!("\t{}", v[i]);
        }
        c += "\n";
    }
    std::fs::write(dir.join("cells.tsv"), c).unwrap();
}

pub fn gzip_file(src: &Path, dst: &Path) {
    let data = std::fs::read(src).unwrap();
    let mut e = flate2::write::GzEncoder::new(std::fs::File::create(dst).unwrap(), flate2::Compression::default());
    e.write_all(&data).unwrap();
    e.finish().unwrap();
}

/// Dense counts, gene names, cell names, batches and labels.
pub type Synthetic = (Vec<Vec<f64>>, Vec<String>, Vec<String>, Vec<String>, Vec<String>);

/// `n` cells in batches of `per_batch`, with labels cycling through `types`; counts from a simple formula.
pub fn synthetic(n: usize, genes: usize, per_batch: usize, types: &[&str]) -> Synthetic {
    let mut dense = Vec::new();
    for i in 0..n {
        dense.push((0..genes).map(|j| (((i * 7 + j * 13) % 11) as f64 - 5.0).max(0.0)).collect());
    }
    let g = (0..genes).map(|j| format!("G{j}")).collect();
    let c = (0..n).map(|i| format!("cell{i}")).collect();
    let b = (0..n).map(|i| format!("b{}", i / per_batch)).collect();
    let t = (0..n).map(|i| types[i % types.len()].to_string()).collect();
    (dense, g, c, b, t)
}

/// Exit code and stderr of one run of the binary.
pub struct Outcome {
    pub code: i32,
    pub stderr: String,
}

/// Run the `scspecies` binary with `args`.
pub fn scspecies(args: &[&str]) -> Outcome {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_scspecies")).args(args).output().unwrap();
    Outcome { code: o.status.code().unwrap_or(-1), stderr: String::from_utf8_lossy(&o.stderr).to_string() }
}

/// The arguments every pipeline command of the tests shares: context and target folders whose obs
/// columns are `batch` and `type`, and the output folder. Callers append epochs, seed and the rest.
pub fn pipeline_args<'a>(cmd: &'a str, ctx: &'a str, tgt: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        cmd,
        "--context",
        ctx,
        "--target",
        tgt,
        "--context-batch-key",
        "batch",
        "--context-label-key",
        "type",
        "--target-batch-key",
        "batch",
        "--out",
        out,
    ]
}

/// A folder dataset with obs columns `batch` and `type`.
pub fn write_labelled<S: AsRef<str>>(dir: &Path, dense: &[Vec<f64>], genes: &[S], cells: &[S], batch: &[S], types: &[S]) {
    fn v<S: AsRef<str>>(x: &[S]) -> Vec<&str> {
        x.iter().map(|s| s.as_ref()).collect()
    }
    write_folder(dir, dense, &v(genes), &v(cells), &[("batch", v(batch)), ("type", v(types))]);
}
