//! A bounded fuzz harness (proptest) over every reader of untrusted bytes: the Matrix Market and TSV
//! files of a folder dataset, the ortholog table, `.h5ad`, model files and checkpoints. Valid seed
//! files are mutated (bit flips, byte runs, truncation, duplicated ranges, number tokens swapped for
//! extreme values) and each reader must return `Ok` or an error: no panic, no hang (each case runs
//! under a time limit) and no allocation out of proportion to the input (a counting allocator records
//! the largest single request).
//!
//! CI runs `SCSPECIES_FUZZ_CASES` cases per target (default 150); raise it for a longer hunt, e.g.
//! `SCSPECIES_FUZZ_CASES=20000 cargo test --release --test fuzz`. Inputs that once broke a reader
//! are kept in `tests/fuzz-regressions/<target>/` and replayed by `regressions_stay_fixed`.

mod common;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Records the largest single allocation request.
struct Counting;
static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LARGEST.fetch_max(l.size(), Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LARGEST.fetch_max(l.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LARGEST.fetch_max(new, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// No single allocation may exceed this for the small inputs used here (the readers' own windows are
/// at most 4 M elements: 32 MiB).
const MAX_SINGLE_ALLOC: usize = 96 << 20;
const CASE_TIME_LIMIT: Duration = Duration::from_secs(20);

fn cases() -> u32 {
    std::env::var("SCSPECIES_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(150)
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Set { at: usize, byte: u8 },
    Insert { at: usize, bytes: Vec<u8> },
    Truncate { at: usize },
    Duplicate { at: usize, len: usize },
    Delete { at: usize, len: usize },
    Token { nth: usize, with: usize },
}

const TOKENS: &[&str] = &[
    "0",
    "-1",
    "1",
    "4294967295",
    "4294967296",
    "18446744073709551615",
    "99999999999999999999999",
    "1e308",
    "-1e308",
    "nan",
    "inf",
    "2.5",
    "",
    "%%MatrixMarket matrix coordinate integer general",
    "\t",
    "\n",
    "\"",
    "{}",
    "[]",
    "null",
    "\u{feff}",
    "é",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16)).prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (any::<usize>(), 1usize..64).prop_map(|(at, len)| Mutation::Duplicate { at, len }),
        (any::<usize>(), 1usize..64).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(nth, with)| Mutation::Token { nth, with }),
    ]
}

fn apply(mut b: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
    for m in ms {
        let n = b.len();
        match m {
            Mutation::Flip { at, bit } if n > 0 => b[at % n] ^= 1 << bit,
            Mutation::Set { at, byte } if n > 0 => b[at % n] = *byte,
            Mutation::Insert { at, bytes } => {
                let at = at % (n + 1);
                b.splice(at..at, bytes.iter().copied());
            }
            Mutation::Truncate { at } => b.truncate(at % (n + 1)),
            Mutation::Duplicate { at, len } if n > 0 => {
                let s = at % n;
                let e = (s + len).min(n);
                let piece = b[s..e].to_vec();
                b.splice(e..e, piece);
            }
            Mutation::Delete { at, len } if n > 0 => {
                let s = at % n;
                b.drain(s..(s + len).min(n));
            }
            Mutation::Token { nth, with } => {
                // Replace the nth whitespace/tab/comma-separated token.
                let starts: Vec<usize> = (0..n).filter(|&i| !is_sep(b[i]) && (i == 0 || is_sep(b[i - 1]))).collect();
                if !starts.is_empty() {
                    let s = starts[nth % starts.len()];
                    let e = (s..n).find(|&i| is_sep(b[i])).unwrap_or(n);
                    b.splice(s..e, TOKENS[*with].bytes());
                }
            }
            _ => {}
        }
    }
    b
}

fn is_sep(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b',' | b'"' | b':')
}

/// Run `read` on a fresh copy of `files` with `mutated` replacing `name`, on its own thread under a
/// time limit, and check that it neither panics nor allocates out of proportion.
fn one_case(target: &str, seed: &Path, name: &str, mutated: Vec<u8>, read: fn(&Path) -> bool) -> Result<(), TestCaseError> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("in");
    copy_dir(seed, &dir);
    std::fs::write(dir.join(name), &mutated).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let d = dir.clone();
    LARGEST.store(0, Ordering::Relaxed);
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(|| read(&d));
        let _ = tx.send(r.is_ok());
    });
    let outcome = rx.recv_timeout(CASE_TIME_LIMIT);
    let largest = LARGEST.load(Ordering::Relaxed);
    let verdict = match outcome {
        Ok(true) if largest <= MAX_SINGLE_ALLOC => return Ok(()),
        Ok(true) => format!("allocated {largest} bytes at once"),
        Ok(false) => "panicked".to_string(),
        Err(_) => format!("ran longer than {CASE_TIME_LIMIT:?}"),
    };
    let keep = save_regression(target, name, &mutated);
    Err(TestCaseError::fail(format!("{target}: the reader {verdict} on a mutated {name}; input kept in {}", keep.display())))
}

fn regressions_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions")
}

fn save_regression(target: &str, name: &str, bytes: &[u8]) -> PathBuf {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    let dir = regressions_dir().join(target);
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{h:016x}.{name}"));
    std::fs::write(&p, bytes).unwrap();
    p
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// A valid folder dataset (also holding an ortholog table).
fn folder_seed(dir: &Path) {
    let (dense, g, c, b, t) = common::synthetic(30, 8, 15, &["alpha", "beta"]);
    common::write_labelled(dir, &dense, &g, &c, &b, &t);
    std::fs::write(dir.join("homology.tsv"), "mouse\thuman\nG0\tg0\nG1\tG1\nG2\tgx\n").unwrap();
}

fn read_folder(d: &Path) -> bool {
    scspecies::data::read_dataset(d).is_ok()
}

fn read_homology(d: &Path) -> bool {
    scspecies::homology::OrthologTable::read(&d.join("homology.tsv")).is_ok()
}

fn read_h5ad(d: &Path) -> bool {
    scspecies::data::read_dataset(&d.join("x.h5ad")).is_ok()
}

fn h5ad_seed(dir: &Path) {
    use scspecies::out::h5ad::{AnnData, Values};
    let tmp = tempfile::tempdir().unwrap();
    folder_seed(tmp.path());
    let ds = scspecies::data::read_dataset(tmp.path()).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    AnnData {
        x: Some(ds.counts.clone()),
        obs_names: ds.cells.clone(),
        obs: vec![
            ("batch".into(), Values::Categorical(ds.labels("batch").unwrap())),
            ("type".into(), Values::Categorical(ds.labels("type").unwrap())),
            ("depth".into(), Values::F64((0..ds.n_cells()).map(|i| i as f64).collect())),
        ],
        var_names: ds.genes.clone(),
        ..Default::default()
    }
    .write(&dir.join("x.h5ad"))
    .unwrap();
}

fn model_seed(dir: &Path) {
    use scspecies::engine::Cpu;
    use scspecies::model::{Model, ModelConfig, io};
    std::fs::create_dir_all(dir).unwrap();
    let be = Cpu::<f32>::new();
    let cfg = ModelConfig::scspecies(12, 2, (0..6).collect(), 0.0);
    let mut rng = scspecies::train::stream(1, 0, 0, 0);
    let model = Model::new(&be, cfg.clone(), &mut rng);
    let meta = io::ModelFile {
        format: "scspecies".into(),
        format_version: io::FORMAT_VERSION,
        scspecies_version: "test".into(),
        model: cfg,
        genes: (0..12).map(|g| format!("G{g}")).collect(),
        batches: vec!["a".into(), "b".into()],
        homologous_names: (0..6).map(|g| format!("G{g}")).collect(),
        labels: vec!["alpha".into()],
        training: serde_json::json!({}),
    };
    io::save(&model, &be, &meta, &dir.join("m")).unwrap();
    let st = scspecies::train::checkpoint::State {
        format: scspecies::train::checkpoint::CHECKPOINT_FORMAT.into(),
        version: scspecies::train::checkpoint::CHECKPOINT_VERSION,
        phase: "context".into(),
        fingerprint: serde_json::json!({"a": 1}),
        epochs_done: 1,
        adam_step: 3,
        lr: 1e-3,
        rollbacks: 0,
        history: serde_json::json!([{}]),
    };
    scspecies::train::checkpoint::save(&be, &model, &st, &dir.join("ck.safetensors")).unwrap();
}

fn read_model(d: &Path) -> bool {
    let be = scspecies::engine::Cpu::<f32>::new();
    scspecies::model::io::load(&be, &d.join("m")).is_ok()
}

fn read_checkpoint(d: &Path) -> bool {
    let be = scspecies::engine::Cpu::<f32>::new();
    let p = d.join("ck.safetensors");
    let _ = scspecies::train::checkpoint::read_state(&p);
    let cfg = scspecies::model::ModelConfig::scspecies(12, 2, (0..6).collect(), 0.0);
    let mut rng = scspecies::train::stream(1, 0, 0, 0);
    let mut model = scspecies::model::Model::new(&be, cfg, &mut rng);
    scspecies::train::checkpoint::load(&be, &mut model, &p).is_ok()
}

fn fuzz(target: &str, seed: fn(&Path), files: &[&'static str], read: fn(&Path) -> bool) {
    let tmp = tempfile::tempdir().unwrap();
    let s = tmp.path().join("seed");
    seed(&s);
    assert!(read(&s), "{target}: the unmutated seed must read");
    let originals: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(s.join(f)).unwrap()).collect();
    let mut runner = TestRunner::new(Config { cases: cases(), failure_persistence: None, ..Config::default() });
    let strategy = (0..files.len(), proptest::collection::vec(mutation(), 1..6));
    runner
        .run(&strategy, |(which, ms)| {
            let mutated = apply(originals[which].clone(), &ms);
            one_case(target, &s, files[which], mutated, read)
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn fuzz_folder_reader() {
    fuzz("folder", folder_seed, &["counts.mtx", "genes.tsv", "cells.tsv"], read_folder);
}

#[test]
fn fuzz_gzip_matrix() {
    // The same reader behind gzip: mutate the compressed bytes.
    fn seed(d: &Path) {
        folder_seed(d);
        common::gzip_file(&d.join("counts.mtx"), &d.join("counts.mtx.gz"));
        std::fs::remove_file(d.join("counts.mtx")).unwrap();
    }
    fuzz("gzip", seed, &["counts.mtx.gz"], read_folder);
}

#[test]
fn fuzz_homology_table() {
    fuzz("homology", folder_seed, &["homology.tsv"], read_homology);
}

#[test]
fn fuzz_h5ad_reader() {
    fuzz("h5ad", h5ad_seed, &["x.h5ad"], read_h5ad);
}

#[test]
fn fuzz_model_file() {
    fuzz("model", model_seed, &["m.json", "m.safetensors"], read_model);
}

#[test]
fn fuzz_checkpoint() {
    fuzz("checkpoint", model_seed, &["ck.safetensors"], read_checkpoint);
}

type Seed = fn(&Path);
type Reader = fn(&Path) -> bool;

/// Every input that once broke a reader still gives `Ok` or an error.
#[test]
fn regressions_stay_fixed() {
    let root = regressions_dir();
    let Ok(targets) = std::fs::read_dir(&root) else { return };
    let mut n = 0;
    for t in targets {
        let t = t.unwrap();
        let target = t.file_name().to_string_lossy().to_string();
        let (seed, read): (Seed, Reader) = match target.as_str() {
            "folder" | "gzip" => (folder_seed, read_folder),
            "homology" => (folder_seed, read_homology),
            "h5ad" => (h5ad_seed, read_h5ad),
            "model" => (model_seed, read_model),
            "checkpoint" => (model_seed, read_checkpoint),
            other => panic!("unknown fuzz target folder {other}"),
        };
        let tmp = tempfile::tempdir().unwrap();
        let s = tmp.path().join("seed");
        seed(&s);
        if target == "gzip" {
            std::fs::remove_file(s.join("counts.mtx")).unwrap();
        }
        for f in std::fs::read_dir(t.path()).unwrap() {
            let f = f.unwrap();
            let fname = f.file_name().to_string_lossy().to_string();
            let name = fname.split_once('.').map(|x| x.1).unwrap_or(&fname).to_string();
            let bytes = std::fs::read(f.path()).unwrap();
            let tmp2 = tempfile::tempdir().unwrap();
            let dir = tmp2.path().join("in");
            copy_dir(&s, &dir);
            std::fs::write(dir.join(&name), &bytes).unwrap();
            LARGEST.store(0, Ordering::Relaxed);
            let ok = std::panic::catch_unwind(|| read(&dir)).is_ok();
            assert!(ok, "{target}/{fname} panics again");
            n += 1;
        }
    }
    eprintln!("{n} fuzz regression inputs replayed");
}
