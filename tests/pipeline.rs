//! The whole pipeline through the binary on small synthetic data: `run` writes every output, a seeded
//! run is reproducible, `pretrain` → `align` → `transfer` work from saved models, and the alignment's
//! bad inputs give clear errors or warnings.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

fn bin(args: &[&str]) -> (i32, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_scspecies")).args(args).output().unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stderr).to_string())
}

/// Two species of 90 cells, 3 batches, 3 cell types with type-specific genes; the target's genes are the
/// context's upper-cased (symbol matching) plus two of its own.
fn species(dir: &Path, upper: bool, type_names: [&str; 3], seed: u64) {
    let genes = 12;
    let mut s = seed;
    let mut next = || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    let n = 90;
    let mut dense = vec![vec![0.0; genes + if upper { 2 } else { 0 }]; n];
    for (i, row) in dense.iter_mut().enumerate() {
        let t = i % 3;
        for (g, v) in row.iter_mut().enumerate() {
            let rate = if g < 12 && g / 4 == t { 12.0 } else { 1.0 };
            *v = (next() * 2.0 * rate).floor();
        }
        row[0] += 1.0;
    }
    let gn: Vec<String> = (0..dense[0].len())
        .map(|g| if g < genes { if upper { format!("GENE{g}") } else { format!("Gene{g}") } } else { format!("OWN{g}") })
        .collect();
    let cells: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    let batch: Vec<String> = (0..n).map(|i| format!("b{}", i / 30)).collect();
    let types: Vec<String> = (0..n).map(|i| type_names[i % 3].to_string()).collect();
    write_labelled(dir, &dense, &gn, &cells, &batch, &types);
}

fn args<'a>(cmd: &'a str, ctx: &'a str, tgt: &'a str, out: &'a str, seed: &'a str) -> Vec<&'a str> {
    let mut a = pipeline_args(cmd, ctx, tgt, out);
    a.extend(["--target-label-key", "type", "--epochs-context", "3", "--epochs-target", "2", "--seed", seed, "--quiet"]);
    a.extend(["--min-cell-type-size", "5"]);
    a
}

#[test]
fn run_writes_every_output_and_is_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    let (c, t) = (tmp.path().join("ctx"), tmp.path().join("tgt"));
    species(&c, false, ["alpha", "beta", "gamma"], 1);
    species(&t, true, ["alpha", "beta", "delta"], 2);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for out in [&a, &b] {
        // A consensus of three target models, through the command line.
        let mut a = args("run", c.to_str().unwrap(), t.to_str().unwrap(), out.to_str().unwrap(), "4");
        a.extend(["--members", "3"]);
        let (code, err) = bin(&a);
        assert_eq!(code, 0, "{err}");
    }
    for f in [
        "target_predictions.tsv",
        "latent.tsv",
        "results.h5ad",
        "metrics.json",
        "context_model.json",
        "context_model.safetensors",
        "target_model.json",
        "target_model.safetensors",
        // A consensus saves every member.
        "target_model_member1.json",
        "target_model_member2.safetensors",
    ] {
        assert!(a.join(f).is_file(), "{f} missing");
    }
    for f in ["target_predictions.tsv", "latent.tsv"] {
        assert_eq!(std::fs::read(a.join(f)).unwrap(), std::fs::read(b.join(f)).unwrap(), "{f} differs between two runs with the same seed");
    }
    let pred = std::fs::read_to_string(a.join("target_predictions.tsv")).unwrap();
    assert!(pred.starts_with("cell\tpredicted_label\tconfidence\tmember_agreement\tvote_share\tbest_similarity\tbest_similarity_per_count\tnovelty\tunassigned\tknn_label\tagreement\ttop_percent\taligned\ttrue_label\n"));
    assert_eq!(pred.lines().count(), 91);
    assert_eq!(std::fs::read_to_string(a.join("latent.tsv")).unwrap().lines().count(), 181);
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(a.join("metrics.json")).unwrap()).unwrap();
    let e = &m["evaluation"];
    assert!(e["balanced_accuracy"]["latent_transfer"].is_f64() && e["balanced_accuracy"]["data_level_knn"].is_f64());
    // Two shared types are scored; "delta" (absent from the context) is reported among the unshared.
    assert_eq!(e["recall_per_type"].as_array().unwrap().len(), 2);
    assert_eq!(e["unassigned"]["types_absent_from_context"]["cells"], 30);
    for k in ["read", "preprocess", "homology", "pretrain", "data_knn", "align", "transfer", "total"] {
        assert!(m["timings_s"][k].is_f64(), "timing {k}");
    }
    // results.h5ad holds both species with the latent space.
    let r = scspecies::data::read_dataset(&a.join("results.h5ad"));
    // (no X: our reader needs counts, so check through HDF5 directly)
    assert!(r.is_err());
    let f = hdf5_pure::File::open(a.join("results.h5ad")).unwrap();
    assert_eq!(f.dataset("obsm/X_scspecies").unwrap().shape().unwrap(), vec![180, 10]);
    // Three members, each scored on its own in metrics.json; confidence in [0, 1] for every target cell.
    assert_eq!(e["members"].as_array().unwrap().len(), 3);
    assert_eq!(m["align"]["members"].as_array().unwrap().len(), 3);
    for line in pred.lines().skip(1) {
        let c: f64 = line.split('\t').nth(2).unwrap().parse().unwrap();
        assert!((0.0..=1.0).contains(&c), "confidence {c} outside [0, 1]");
    }
    let bins: usize = e["calibration"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["shared_cells"].as_u64().unwrap() + b["novel_cells"].as_u64().unwrap())
        .sum::<u64>() as usize;
    assert_eq!(bins, 90, "every target cell in one calibration bin");
    // A different seed gives a different result.
    let c2 = tmp.path().join("c");
    bin(&args("run", c.to_str().unwrap(), t.to_str().unwrap(), c2.to_str().unwrap(), "5"));
    assert_ne!(std::fs::read(a.join("latent.tsv")).unwrap(), std::fs::read(c2.join("latent.tsv")).unwrap());
}

#[test]
fn stages_from_saved_models() {
    let tmp = tempfile::tempdir().unwrap();
    let (c, t) = (tmp.path().join("ctx"), tmp.path().join("tgt"));
    species(&c, false, ["alpha", "beta", "gamma"], 1);
    species(&t, true, ["alpha", "beta", "gamma"], 2);
    let out = tmp.path().join("o");
    let (cs, ts, os) = (c.to_str().unwrap(), t.to_str().unwrap(), out.to_str().unwrap());
    // align before pretrain: a clear error naming the missing model.
    let (code, err) = bin(&args("align", cs, ts, os, "1"));
    assert_eq!(code, 1);
    assert!(err.contains("context_model.json") && err.contains("scspecies pretrain"), "{err}");
    let (code, err) = bin(&args("pretrain", cs, ts, os, "1"));
    assert_eq!(code, 0, "{err}");
    assert!(out.join("context_model.safetensors").is_file() && !out.join("target_model.json").exists());
    let (code, err) = bin(&args("align", cs, ts, os, "1"));
    assert_eq!(code, 0, "{err}");
    assert!(out.join("target_model.safetensors").is_file());
    let before = std::fs::read(out.join("target_predictions.tsv")).unwrap();
    std::fs::remove_file(out.join("target_predictions.tsv")).unwrap();
    let (code, err) = bin(&args("transfer", cs, ts, os, "1"));
    assert_eq!(code, 0, "{err}");
    // transfer from the saved models reproduces the align run's predictions.
    assert_eq!(std::fs::read(out.join("target_predictions.tsv")).unwrap(), before);
    // A model trained on other genes is refused.
    let other = tmp.path().join("other");
    species(&other, true, ["alpha", "beta", "gamma"], 3);
    std::fs::write(other.join("genes.tsv"), std::fs::read_to_string(other.join("genes.tsv")).unwrap().replace("OWN13", "NEWGENE")).unwrap();
    let (code, err) = bin(&args("transfer", cs, other.to_str().unwrap(), os, "1"));
    assert_eq!(code, 1);
    assert!(err.contains("target_model.json") && err.contains("trained on"), "{err}");
}

#[test]
fn alignment_bad_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let (c, t) = (tmp.path().join("ctx"), tmp.path().join("tgt"));
    species(&c, false, ["alpha", "beta", "gamma"], 1);
    // Target labels that share no type with the context: a warning, no accuracy, still exit 0.
    species(&t, true, ["x", "y", "z"], 2);
    let out = tmp.path().join("o");
    let (code, err) = bin(&args("run", c.to_str().unwrap(), t.to_str().unwrap(), out.to_str().unwrap(), "1"));
    assert_eq!(code, 0, "{err}");
    // --quiet prints nothing but errors; the warning is in metrics.json.
    assert!(err.is_empty(), "{err}");
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    let warnings = m["warnings"].as_array().unwrap();
    assert!(warnings.iter().any(|w| w.as_str().unwrap().contains("no target label")), "{warnings:?}");
    // A missing target label column: an error listing the columns.
    let mut a = args("run", c.to_str().unwrap(), t.to_str().unwrap(), out.to_str().unwrap(), "1");
    let k = a.iter().position(|x| *x == "--target-label-key").unwrap();
    a[k + 1] = "celltype";
    let (code, err) = bin(&a);
    assert_eq!(code, 1);
    assert!(err.contains("'celltype'") && err.contains("batch, type") && !err.contains("panicked"), "{err}");
    // A target with fewer cells than k = 25: a warning, and it still runs.
    let small = tmp.path().join("small");
    write_folder(
        &small,
        &(0..12).map(|i| (0..12).map(|g| ((i + g) % 3) as f64 + if g == 0 { 1.0 + i as f64 } else { 0.0 }).collect()).collect::<Vec<_>>(),
        &(0..12)
            .map(|g| ["GENE0", "GENE1", "GENE2", "GENE3", "GENE4", "GENE5", "GENE6", "GENE7", "GENE8", "GENE9", "GENE10", "GENE11"][g])
            .collect::<Vec<_>>(),
        &(0..12).map(|i| ["s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11"][i]).collect::<Vec<_>>(),
        &[("batch", vec!["b"; 12]), ("type", vec!["alpha"; 12])],
    );
    let mut a = args("run", c.to_str().unwrap(), small.to_str().unwrap(), out.to_str().unwrap(), "1");
    a.extend(["--min-batch-size", "5"]);
    a.retain(|x| *x != "--quiet");
    let (code, err) = bin(&a);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("fewer than k = 25"), "{err}");
}

#[test]
fn batch_keys_are_optional() {
    let tmp = tempfile::tempdir().unwrap();
    let (c, t) = (tmp.path().join("ctx"), tmp.path().join("tgt"));
    species(&c, false, ["alpha", "beta", "gamma"], 1);
    species(&t, true, ["alpha", "beta", "delta"], 2);
    let out = tmp.path().join("o");
    let full = args("run", c.to_str().unwrap(), t.to_str().unwrap(), out.to_str().unwrap(), "3");
    // Drop both batch options: every species is then one batch.
    let mut a: Vec<&str> = Vec::new();
    let mut skip = false;
    for x in &full {
        if skip {
            skip = false;
        } else if x.ends_with("-batch-key") {
            skip = true;
        } else {
            a.push(x);
        }
    }
    assert_eq!(a.len() + 4, full.len(), "both batch keys were given before");
    let (code, err) = bin(&a);
    assert_eq!(code, 0, "{err}");
    let cells = std::fs::read_to_string(out.join("cells_preprocessed.tsv")).unwrap();
    assert!(cells.lines().skip(1).all(|l| l.split('\t').nth(2) == Some("all")), "{cells}");
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert!(m["inputs"]["context_batch_key"].is_null());
    assert_eq!(m["library_prior"]["context"]["batches"].as_array().unwrap().len(), 1);
}
