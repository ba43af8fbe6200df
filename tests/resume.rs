//! Checkpoints and resume through the real binary: a `run` killed with SIGKILL during pre-training and
//! again during alignment, then resumed each time, ends with exactly the outputs of an uninterrupted
//! run; a checkpoint of other settings is refused; `--on-nan` stops or rolls back.

mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn lcg(s: &mut u64) -> f64 {
    *s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (*s >> 11) as f64 / (1u64 << 53) as f64
}

/// A species with `n` cells of 3 types (each with its own gene program) in 2 batches, `genes` genes.
fn species(dir: &Path, n: usize, genes: usize, seed: u64) {
    let mut s = seed;
    let types = ["alpha", "beta", "gamma"];
    let mut dense = Vec::with_capacity(n);
    for i in 0..n {
        let t = i % 3;
        let lib = 0.5 + lcg(&mut s);
        dense.push(
            (0..genes)
                .map(|j| {
                    let program = if j % 3 == t { 6.0 } else { 1.0 };
                    let mean = lib * program * (0.2 + (j % 7) as f64 * 0.15);
                    (mean * 2.0 * lcg(&mut s)).floor()
                })
                .collect::<Vec<f64>>(),
        );
        dense[i][t] += 1.0;
    }
    let g: Vec<String> = (0..genes).map(|j| format!("G{j}")).collect();
    let c: Vec<String> = (0..n).map(|i| format!("c{seed}_{i}")).collect();
    let b: Vec<String> = (0..n).map(|i| format!("b{}", i % 2)).collect();
    let l: Vec<String> = (0..n).map(|i| types[i % 3].to_string()).collect();
    write_labelled(dir, &dense, &g, &c, &b, &l);
}

fn args(root: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let (c, t) = (root.join("ctx"), root.join("tgt"));
    let mut a: Vec<String> =
        pipeline_args("run", c.to_str().unwrap(), t.to_str().unwrap(), out.to_str().unwrap()).iter().map(|s| s.to_string()).collect();
    // A checkpoint after every epoch (the default spaces them two minutes apart).
    let rest = [
        "--target-label-key",
        "type",
        "--quiet",
        "--epochs-context",
        "8",
        "--epochs-target",
        "5",
        "--seed",
        "7",
        "--checkpoint-every",
        "1",
    ];
    a.extend(rest.iter().map(|s| s.to_string()));
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn run_to_end(a: &[String]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_scspecies")).args(a).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{err}");
    err
}

/// Start a run, wait until the checkpoint `file` records at least `epochs` finished epochs, then
/// SIGKILL the run at once (somewhere in the next epoch). Returns whether it was still going.
fn kill_when(a: &[String], file: &Path, epochs: usize) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_scspecies")).args(a).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let t = Instant::now();
    loop {
        // The file is renamed into place whole, so a read sees a complete checkpoint or none.
        if file.exists() && scspecies::train::checkpoint::read_state(file).is_ok_and(|s| s.epochs_done >= epochs) {
            break;
        }
        if child.try_wait().unwrap().is_some() {
            panic!("the run ended before {} recorded {epochs} epochs", file.display());
        }
        assert!(t.elapsed() < Duration::from_secs(300), "{} never recorded {epochs} epochs", file.display());
        std::thread::sleep(Duration::from_millis(2));
    }
    let running = child.try_wait().unwrap().is_none();
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    running
}

fn epochs_done(path: &Path) -> usize {
    scspecies::train::checkpoint::read_state(path).unwrap().epochs_done
}

fn same_file(a: &Path, b: &Path, name: &str) {
    let (x, y) = (std::fs::read(a.join(name)).unwrap(), std::fs::read(b.join(name)).unwrap());
    assert!(x == y, "{name} differs between the uninterrupted and the resumed run");
}

#[test]
fn killed_twice_and_resumed_equals_uninterrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    species(&root.join("ctx"), 900, 600, 1);
    species(&root.join("tgt"), 700, 500, 2);

    let full = root.join("full");
    run_to_end(&args(root, &full, &[]));
    assert!(!full.join("checkpoints").exists(), "checkpoints are removed after a finished run");

    let cut = root.join("cut");
    let ctx_ck = cut.join("checkpoints/context.safetensors");
    let tgt_ck = cut.join("checkpoints/target.safetensors");
    // Killed during pre-training, after at least one epoch's checkpoint.
    assert!(kill_when(&args(root, &cut, &[]), &ctx_ck, 2), "the run finished before the kill");
    let e1 = epochs_done(&ctx_ck);
    assert!((2..8).contains(&e1), "killed after {e1} context epochs");
    assert!(!cut.join("metrics.json").exists());
    // Resumed, then killed again during alignment.
    let resume = ["--resume", cut.to_str().unwrap()];
    assert!(kill_when(&args(root, &cut, &resume), &tgt_ck, 1), "the resumed run finished before the kill");
    assert_eq!(epochs_done(&ctx_ck), 8);
    let e2 = epochs_done(&tgt_ck);
    assert!((1..5).contains(&e2), "killed after {e2} target epochs");
    // Resumed to the end.
    eprintln!("killed after {e1} of 8 context epochs, then after {e2} of 5 target epochs");
    let err = run_to_end(&args(root, &cut, &resume));
    assert!(!err.contains("panicked"), "{err}");

    for f in ["context_model.safetensors", "target_model.safetensors", "target_predictions.tsv", "latent.tsv"] {
        same_file(&full, &cut, f);
    }
    // The training log, but for its timing column.
    let log = |d: &Path| -> Vec<String> {
        let s = std::fs::read_to_string(d.join("context_training.tsv")).unwrap();
        s.lines().map(|l| l.rsplit_once('\t').unwrap().0.to_string()).collect()
    };
    assert_eq!(log(&full), log(&cut));
    assert_eq!(log(&full).len(), 9);
    let m = |d: &Path| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(d.join("metrics.json")).unwrap()).unwrap() };
    assert_eq!(m(&full)["evaluation"], m(&cut)["evaluation"]);
    assert_eq!(m(&full)["align"]["history"].as_array().unwrap().len(), 5);
    assert_eq!(m(&cut)["align"]["history"].as_array().unwrap().len(), 5);
}

#[test]
fn a_checkpoint_of_other_settings_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    species(&root.join("ctx"), 300, 120, 3);
    species(&root.join("tgt"), 300, 100, 4);
    let out = root.join("out");
    let mut a = args(root, &out, &["--keep-checkpoints"]);
    a[0] = "pretrain".into();
    run_to_end(&a);
    assert_eq!(epochs_done(&out.join("checkpoints/context.safetensors")), 8);
    // Same folder, another seed: refused, naming the file and what differs.
    let mut b = args(root, &out, &["--resume", out.to_str().unwrap()]);
    b[0] = "pretrain".into();
    let i = b.iter().position(|x| x == "--seed").unwrap();
    b[i + 1] = "8".into();
    let o = Command::new(env!("CARGO_BIN_EXE_scspecies")).args(&b).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("context.safetensors") && err.contains("other settings") && err.contains("config"), "{err}");
    // A damaged checkpoint is an error naming it, not a panic.
    std::fs::write(out.join("checkpoints/context.safetensors"), b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":").unwrap();
    let mut c = args(root, &out, &["--resume", out.to_str().unwrap()]);
    c[0] = "pretrain".into();
    let o = Command::new(env!("CARGO_BIN_EXE_scspecies")).args(&c).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && !err.contains("panicked"));
    assert!(err.contains("context.safetensors") && err.contains("not a scspecies checkpoint"), "{err}");
    // --resume with a folder that does not exist.
    let mut d = args(root, &out, &["--resume", root.join("nope").to_str().unwrap()]);
    d[0] = "pretrain".into();
    let o = Command::new(env!("CARGO_BIN_EXE_scspecies")).args(&d).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("--resume: no such folder"));
}

#[test]
fn divergence_stops_or_rolls_back() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    species(&root.join("ctx"), 300, 120, 5);
    species(&root.join("tgt"), 300, 100, 6);
    let out = root.join("out");
    let mut a = args(root, &out, &["--learning-rate", "1e12"]);
    a[0] = "pretrain".into();
    a.retain(|x| x != "--quiet");
    let o = Command::new(env!("CARGO_BIN_EXE_scspecies")).args(&a).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && !err.contains("panicked"), "{err}");
    assert!(err.contains("context training diverged") && err.contains("epoch 1 step 2"), "{err}");
    assert!(err.contains("no checkpoint was written"), "{err}");
    assert!(!out.join("context_model.safetensors").exists());

    // Rollback: the learning rate falls by 1e-7 per rollback, so 1e12 → 1e5 → 1e-2 … the run recovers
    // from the epoch-0 checkpoint and finishes, saying what it did.
    let mut b = args(root, &out, &["--learning-rate", "1e12", "--on-nan", "rollback", "--rollback-lr-factor", "1e-7"]);
    b[0] = "pretrain".into();
    b.retain(|x| x != "--quiet");
    let o = Command::new(env!("CARGO_BIN_EXE_scspecies")).args(&b).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("rolled back to") && err.contains("after epoch 0"), "{err}");
    assert!(out.join("context_model.safetensors").exists());
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("context_model.json")).unwrap()).unwrap();
    assert_eq!(meta["training"]["history"].as_array().unwrap().len(), 8);

    // Rollback that cannot help gives up after the allowed retries.
    let mut c =
        args(root, &out, &["--learning-rate", "1e12", "--on-nan", "rollback", "--rollback-lr-factor", "0.9", "--rollback-retries", "2"]);
    c[0] = "pretrain".into();
    let o = Command::new(env!("CARGO_BIN_EXE_scspecies")).args(&c).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("gave up after 2 of 2 rollbacks"), "{err}");
}

/// A checkpoint of the f64 backend (the gradient checks' precision) keeps values that f32 cannot hold:
/// those tensors are written as F64 and read back exactly; f32-exact ones as F32.
#[test]
fn checkpoints_keep_f64_values_exactly() {
    use rand::SeedableRng;
    use scspecies::engine::{Backend, Cpu};
    use scspecies::model::{Model, ModelConfig};
    use scspecies::train::checkpoint::{self, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, State};
    let be = Cpu::<f64>::new();
    let cfg = ModelConfig::scspecies(40, 2, (0..30).collect(), 7.0);
    let mut a = Model::new(&be, cfg.clone(), &mut rand::rngs::ChaCha8Rng::seed_from_u64(1));
    let n = be.len(&a.params[0].value);
    a.params[0].value = be.upload(&(0..n).map(|i| 0.1 * i as f64).collect::<Vec<_>>()); // not exact in f32
    let state = State {
        format: CHECKPOINT_FORMAT.into(),
        version: CHECKPOINT_VERSION,
        phase: "context".into(),
        fingerprint: serde_json::json!({}),
        epochs_done: 3,
        adam_step: 42,
        lr: 1e-3,
        rollbacks: 0,
        history: serde_json::json!([]),
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ck.safetensors");
    checkpoint::save(&be, &a, &state, &path).unwrap();
    let mut b = Model::new(&be, cfg, &mut rand::rngs::ChaCha8Rng::seed_from_u64(2));
    let st = checkpoint::load(&be, &mut b, &path).unwrap();
    assert_eq!((st.epochs_done, st.adam_step), (3, 42));
    for (p, q) in a.params.iter().zip(&b.params) {
        assert_eq!(be.download(&p.value), be.download(&q.value), "{}", p.name);
        assert_eq!(be.download(&p.m), be.download(&q.m), "{}", p.name);
    }
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor(&format!("value.{}", a.params[0].name)).unwrap().dtype(), safetensors::Dtype::F64);
    // Fresh Adam moments are zeros: exact in f32.
    assert_eq!(st.tensor(&format!("adam_m.{}", a.params[1].name)).unwrap().dtype(), safetensors::Dtype::F32);
}

#[test]
fn checkpoints_are_due_by_count_by_time_and_after_the_last_epoch() {
    use scspecies::train::checkpoint::Checkpointing;
    let c = |every, min_seconds| Checkpointing {
        path: "x".into(),
        resume_from: None,
        fingerprint: serde_json::Value::Null,
        every,
        min_seconds,
    };
    // Every 3 epochs: after 3 and 6, not 4, and after the last (10) whatever the count.
    assert!(c(3, 0.0).due(3, 10, 0.0) && c(3, 0.0).due(6, 10, 0.0) && !c(3, 0.0).due(4, 10, 1e9) && c(3, 0.0).due(10, 10, 0.0));
    // By time: only once the interval has passed, and after the last epoch.
    assert!(!c(0, 120.0).due(4, 10, 119.9) && c(0, 120.0).due(4, 10, 120.0) && c(0, 120.0).due(10, 10, 1.0));
    // Neither: never, not even after the last epoch (a resume-only run reads, never writes).
    assert!(!c(0, 0.0).due(10, 10, 1e9));
}
