//! The command line: every documented argument parses, `inspect` reports the Baron data, `demo` runs
//! on the bundled data and writes its outputs.

mod common;
use clap::Parser;
use scspecies::cli::{Cli, Command, Device};
use std::process::Command as Proc;

#[test]
fn pipeline_arguments_parse() {
    for cmd in ["run", "pretrain", "align", "transfer"] {
        let cli = Cli::try_parse_from([
            "scspecies",
            cmd,
            "--context",
            "mouse.h5ad",
            "--target",
            "human/",
            "--context-batch-key",
            "donor",
            "--context-label-key",
            "cell_type",
            "--target-batch-key",
            "donor",
            "--target-label-key",
            "cell_type",
            "--homology",
            "orth.tsv",
            "--out",
            "res",
            "--device",
            "cuda",
            "--epochs-context",
            "5",
            "--epochs-target",
            "7",
            "--seed",
            "42",
            "--threads",
            "2",
            "--quiet",
        ])
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
        let a = match cli.command {
            Command::Run(a) | Command::Pretrain(a) | Command::Align(a) | Command::Transfer(a) => a,
            other => panic!("{other:?}"),
        };
        assert_eq!(a.context.to_str(), Some("mouse.h5ad"));
        assert_eq!(a.target_label_key.as_deref(), Some("cell_type"));
        assert_eq!(a.homology.as_ref().and_then(|p| p.to_str()), Some("orth.tsv"));
        assert_eq!(a.opts.device, Device::Cuda);
        assert_eq!((a.opts.epochs_context, a.opts.epochs_target, a.opts.seed, a.opts.threads), (Some(5), Some(7), 42, Some(2)));
        assert!(a.opts.quiet);
    }
    // Optional ones really are optional, required ones required.
    let min = [
        "scspecies",
        "run",
        "--context",
        "a",
        "--target",
        "b",
        "--context-batch-key",
        "k",
        "--context-label-key",
        "l",
        "--target-batch-key",
        "k",
        "--out",
        "o",
    ];
    let cli = Cli::try_parse_from(min).unwrap();
    let Command::Run(a) = cli.command else { panic!() };
    assert_eq!((a.opts.device, a.opts.seed, a.target_label_key), (Device::Cpu, 369963, None));
    let e = Cli::try_parse_from(&min[..min.len() - 2]).unwrap_err().to_string();
    assert!(e.contains("--out"), "{e}");
}

fn bin(args: &[&str]) -> (i32, String, String) {
    let o = Proc::new(env!("CARGO_BIN_EXE_scspecies")).args(args).output().unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into(), String::from_utf8_lossy(&o.stderr).into())
}

#[test]
fn inspect_reports_bundled_data_as_json_and_text() {
    let d = common::bundled();
    let (m, h, t) = (d.join("mouse"), d.join("human"), d.join("homology.tsv"));
    let args = [
        "inspect",
        "--context",
        m.to_str().unwrap(),
        "--target",
        h.to_str().unwrap(),
        "--context-batch-key",
        "batch",
        "--context-label-key",
        "cell_type",
        "--target-batch-key",
        "batch",
        "--homology",
        t.to_str().unwrap(),
    ];
    let (code, out, err) = bin(&[&args[..], &["--json"]].concat());
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["context"]["summary"]["cells"], 1886);
    assert_eq!(v["target"]["summary"]["genes"], 16413);
    assert_eq!(v["context"]["summary"]["batches"][1], serde_json::json!(["mouse2", 1064]));
    // The table's 11,312 pairs plus 1,061 genes it lists on neither side, matched by symbol.
    assert_eq!(v["homology"]["homologous_genes"], 12373);
    assert_eq!(v["homology"]["symbol_matched_gaps"], 1061);
    assert!(v["target"]["summary"]["labels"].is_null());
    let (code, out, _) = bin(&args);
    assert_eq!(code, 0);
    assert!(out.contains("1,886 x 14,860") && out.contains("homologous genes   12,373"), "{out}");
    let (code, out, _) = bin(&[&args[..], &["--homology-fill", "none"]].concat());
    assert_eq!(code, 0);
    assert!(out.contains("homologous genes   11,312"), "{out}");
}

#[test]
fn inspect_identical_for_shared_folders_and_h5ad() {
    let Some(s) = common::shared_data("inspect_identical_for_shared_folders_and_h5ad") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let hm = common::gunzip_to(&s.join("h5ad/raw-Baron_mouse.h5ad.gz"), tmp.path());
    let hh = common::gunzip_to(&s.join("h5ad/raw-Baron_human.h5ad.gz"), tmp.path());
    let tab = s.join("homology.tsv");
    let run = |c: &std::path::Path, t: &std::path::Path, bk: &str, lk: &str| {
        let (code, out, err) = bin(&[
            "inspect",
            "--json",
            "--context",
            c.to_str().unwrap(),
            "--target",
            t.to_str().unwrap(),
            "--context-batch-key",
            bk,
            "--context-label-key",
            lk,
            "--target-batch-key",
            bk,
            "--target-label-key",
            lk,
            "--homology",
            tab.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let a = run(&s.join("mouse"), &s.join("human"), "batch", "cell_type");
    let b = run(&hm, &hh, "donor", "cell_ontology_class");
    for role in ["context", "target"] {
        assert_eq!(a[role]["summary"], b[role]["summary"], "{role}");
    }
    assert_eq!(a["homology"], b["homology"]);
    assert_eq!((a["context"]["summary"]["cells"].clone(), a["context"]["summary"]["genes"].clone()), (1886.into(), 14877.into()));
    assert_eq!((a["target"]["summary"]["cells"].clone(), a["target"]["summary"]["genes"].clone()), (2142.into(), 20125.into()));
    // The table's 11,674 pairs on these (unfiltered) genes plus 1,130 matched by symbol.
    assert_eq!((a["homology"]["homologous_genes"].as_u64(), a["homology"]["symbol_matched_gaps"].as_u64()), (Some(12804), Some(1130)));
}

#[test]
fn demo_runs_on_bundled_data() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let (code, _, err) = bin(&[
        "demo",
        "--out",
        out.to_str().unwrap(),
        "--write-h5ad",
        "--epochs-context",
        "2",
        "--epochs-target",
        "1",
        "--seed",
        "5",
        "--device",
        "auto",
        "--precision",
        "auto",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("mouse: 1855 cells"), "{err}");
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    // The precision asked for and the one the ranking GEMMs ran in (`auto`: bf16 on a GPU, and on the
    // CPU only where it has AVX512-BF16).
    assert_eq!(m["precision"]["requested"], "auto");
    let bf16_here = !m["backend"].as_str().unwrap().starts_with("cpu") || scspecies::engine::precision::bf16_available();
    assert_eq!(m["precision"]["ranking_gemms"], if bf16_here { "bf16" } else { "f32" }, "{}", m["precision"]);
    assert_eq!(m["precision"]["training_gemms"], "f32");
    // `auto` takes the GPU where there is one and says why not otherwise.
    let backend = m["backend"].as_str().unwrap();
    if err.contains("device auto:") {
        assert!(backend.starts_with("cpu"), "{backend}");
    } else {
        assert!(backend.starts_with("cuda") && err.contains("device: cuda"), "{backend}\n{err}");
    }
    assert_eq!(m["homology"]["homologous_genes"], 12373);
    // The target's labels are for evaluation: no target cell type is filtered out.
    assert_eq!(m["preprocessing"]["human"]["cells_out"], 2142);
    assert!(m["evaluation"]["balanced_accuracy"]["latent_transfer"].is_f64());
    assert!(err.contains("balanced accuracy on target cells of shared types"), "{err}");
    assert_eq!(m["pretrain"]["epochs"], 2);
    // The per-epoch diagnostic of the candidate choice: a share of the chosen candidates.
    let agree = m["align"]["history"][0]["candidate_label_agreement"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&agree) && agree > 0.3, "{agree}");
    assert_eq!(m["pretrain"]["steps_per_epoch"], 14);
    let p = scspecies::data::read_dataset(&out.join("mouse_preprocessed.h5ad")).unwrap();
    assert_eq!(p.n_cells(), 1855);
    assert_eq!(p.labels("label").unwrap().categories.len(), 8);
    let hom = std::fs::read_to_string(out.join("homologous_genes.tsv")).unwrap();
    assert_eq!(hom.lines().count(), 12373 + 1);
    // The context model, its training log and the latent space.
    let hist = std::fs::read_to_string(out.join("context_training.tsv")).unwrap();
    assert_eq!(hist.lines().count(), 3);
    let latent = std::fs::read_to_string(out.join("latent.tsv")).unwrap();
    assert_eq!(latent.lines().count(), 1855 + 2142 + 1);
    assert_eq!(std::fs::read_to_string(out.join("target_predictions.tsv")).unwrap().lines().count(), 2142 + 1);
    assert!(latent.starts_with("cell\tdataset\tz_1\t"));
    let be = scspecies::engine::Cpu::<f32>::new();
    let (model, meta) = scspecies::model::io::load(&be, &out.join("context_model")).unwrap();
    assert_eq!(meta.genes.len(), 14860);
    assert_eq!(meta.batches, vec!["mouse1", "mouse2"]);
    assert_eq!(model.cfg.homologous.len(), 12373);
}

#[test]
fn device_cuda_without_a_gpu_is_a_clear_error() {
    #[cfg(feature = "cuda")]
    if scspecies::engine::cuda::Cuda::new(0, false).is_ok() {
        eprintln!("a GPU is present: nothing to check here (cuda_parity covers it)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x");
    let (code, _, err) = bin(&["demo", "--out", out.to_str().unwrap(), "--device", "cuda"]);
    assert_ne!(code, 0);
    assert!(err.contains("--device cuda") && (err.contains("no usable CUDA GPU") || err.contains("no CUDA support")), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.exists(), "nothing may be written");
    let (code, _, err) = bin(&["demo", "--out", out.to_str().unwrap(), "--tf32"]);
    assert_ne!(code, 0);
    assert!(err.contains("--tf32 applies to the GPU only"), "{err}");
}

/// `--precision bf16` where the CPU cannot run it (here: capped below AVX-512) is refused, naming why.
#[test]
fn precision_bf16_without_the_instructions_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x");
    let exe = env!("CARGO_BIN_EXE_scspecies");
    let o = std::process::Command::new(exe)
        .args(["demo", "--out", out.to_str().unwrap(), "--precision", "bf16"])
        .env("SCSPECIES_SIMD", "avx2")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("AVX512-BF16"), "{err}");
    assert!(!out.exists(), "nothing may be written");
    // `--device auto` without a GPU falls back to this CPU, which refuses it the same way (with a GPU,
    // bf16 runs there: nothing to refuse).
    #[cfg(feature = "cuda")]
    if scspecies::engine::cuda::Cuda::new(0, false).is_err() {
        let o = std::process::Command::new(exe)
            .args(["demo", "--out", out.to_str().unwrap(), "--device", "auto", "--precision", "bf16"])
            .env("SCSPECIES_SIMD", "avx2")
            .env_remove("SCSPECIES_CUDA_EMULATE")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("AVX512-BF16") && !err.contains("panicked"), "{err}");
        assert!(!out.exists(), "nothing may be written");
    }
}

/// Every option `bench` accepts takes effect (the alignment options reach the timed alignment and the
/// report says so) or is refused with the flag's name before any work.
#[test]
fn bench_applies_or_refuses_every_option() {
    for (flag, value) in
        [("--epochs-target", Some("3")), ("--epochs-context", Some("2")), ("--max-memory", Some("8G")), ("--keep-checkpoints", None)]
    {
        let mut args = vec!["bench", flag];
        args.extend(value);
        let (code, _, err) = bin(&args);
        assert_ne!(code, 0, "{flag} must be refused");
        assert!(err.contains("bench does not use") && err.contains(flag), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let report = tmp.path().join("bench.json");
    // A reference in run_ref.py's format, at a different thread count than this bench.
    let reference = tmp.path().join("reference.json");
    std::fs::write(
        &reference,
        r#"{"args": {"threads": 64}, "data": {"target_cells": 2000},
            "context_training": {"ms_per_iteration": 400.0}, "target_training": {"ms_per_iteration": 2000.0},
            "phases_s": {"label transfer (transfer_labels_data)": 1000.0}}"#,
    )
    .unwrap();
    let (code, _, err) = bin(&[
        "bench",
        "--reference",
        reference.to_str().unwrap(),
        "--repeat",
        "1",
        "--quiet",
        "--top-percent",
        "35",
        "--members",
        "1",
        "--knn-space",
        "log1p-counts",
        "--k-neighbours",
        "10",
        "--out",
        report.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let t = &r["target_training"];
    assert_eq!((t["top_percent"].as_f64(), t["members"].as_u64(), t["k"].as_u64()), (Some(35.0), Some(1), Some(10)), "{t}");
    assert_eq!(t["knn_space"], "log1p-counts");
    // Speed-ups from the reference's own figures; the thread mismatch is called out.
    let c = &r["context_training"];
    let want = 400.0 / c["ms_per_step"].as_f64().unwrap();
    assert!((c["speedup_vs_reference"].as_f64().unwrap() - want).abs() < 1e-9 * want, "{c}");
    let lt = &r["label_transfer"];
    let want = 1000.0 / 2000.0 * lt["cells_per_s"].as_f64().unwrap();
    assert!((lt["speedup_vs_reference"].as_f64().unwrap() - want).abs() < 1e-9 * want, "{lt}");
    assert!(r["note"].as_str().unwrap().contains("WARNING") && r["note"].as_str().unwrap().contains("64"), "{}", r["note"]);
    // The report names the kernels that ran.
    assert!(r["paths"]["f32_gemm"].is_string() && r["paths"]["bf16_gemm"].is_string(), "{}", r["paths"]);
    // bf16 against f32 on the ranking paths, where the CPU has bf16.
    if scspecies::engine::precision::bf16_available() {
        let a = r["ranking_precision"]["candidate_choice_agreement"].as_f64().unwrap();
        assert!((0.5..=1.0).contains(&a), "{}", r["ranking_precision"]);
    } else {
        assert!(r["ranking_precision"].is_null());
    }
    // A reference file that is not run_ref.py's JSON is refused, naming the file and the key.
    let bad = tmp.path().join("ref.json");
    std::fs::write(&bad, r#"{"context_training": {}}"#).unwrap();
    let (code, _, err) = bin(&["bench", "--quiet", "--reference", bad.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("ref.json") && err.contains("/context_training/ms_per_iteration"), "{err}");
}
