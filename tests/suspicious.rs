//! Inputs that look right but are not, and runs that cannot fit: each is caught before any training,
//! through the real binary, with an explanation of what to do, a non-zero exit and nothing written.

mod common;
use common::*;
use std::path::Path;

/// 60 cells in 2 batches, 3 types, `genes` named by `gene`.
fn dataset(dir: &Path, gene: &dyn Fn(usize) -> String, labels: &dyn Fn(usize) -> String, value: &dyn Fn(f64) -> f64) {
    let (dense, _, c, b, _) = synthetic(60, 8, 30, &["x"]);
    let dense: Vec<Vec<f64>> =
        dense.into_iter().map(|r| r.into_iter().enumerate().map(|(j, v)| value(v + (j == 0) as u8 as f64)).collect()).collect();
    let g: Vec<String> = (0..8).map(gene).collect();
    let t: Vec<String> = (0..60).map(labels).collect();
    write_labelled(dir, &dense, &g, &c, &b, &t);
}

fn types(i: usize) -> String {
    ["alpha", "beta", "gamma"][i % 3].to_string()
}

fn genes(j: usize) -> String {
    format!("G{j}")
}

fn run(ctx: &Path, tgt: &Path, out: &Path, extra: &[&str]) -> Outcome {
    let (c, t, o) = (ctx.to_str().unwrap(), tgt.to_str().unwrap(), out.to_str().unwrap());
    let mut a = pipeline_args("run", c, t, o);
    a.extend(["--quiet", "--epochs-context", "1", "--epochs-target", "1", "--min-cell-type-size", "5"]);
    a.extend_from_slice(extra);
    scspecies(&a)
}

fn expect_error(o: &Outcome, out: &Path, needles: &[&str]) {
    assert_ne!(o.code, 0, "expected a failure, stderr: {}", o.stderr);
    assert!(!o.stderr.contains("panicked"), "panic: {}", o.stderr);
    for n in needles {
        assert!(o.stderr.contains(n), "stderr lacks '{n}': {}", o.stderr);
    }
    assert!(!out.exists() || std::fs::read_dir(out).unwrap().next().is_none(), "output left behind");
}

fn pair(tmp: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (c, t) = (tmp.join("ctx"), tmp.join("tgt"));
    dataset(&c, &genes, &types, &|v| v);
    dataset(&t, &genes, &types, &|v| v);
    (c, t)
}

#[test]
fn the_plain_pair_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let (c, t) = pair(tmp.path());
    let o = run(&c, &t, &tmp.path().join("out"), &[]);
    assert_eq!(o.code, 0, "{}", o.stderr);
}

#[test]
fn log_normalised_values() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, t) = pair(tmp.path());
    let c = tmp.path().join("lognorm");
    dataset(&c, &genes, &types, &|v: f64| v.ln_1p());
    let out = tmp.path().join("out");
    expect_error(&run(&c, &t, &out, &[]), &out, &["counts.mtx", "not a whole number", "raw UMI counts"]);
}

#[test]
fn genes_as_rows_in_a_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let (c, t) = pair(tmp.path());
    // Rewrite counts.mtx genes x cells.
    let m = std::fs::read_to_string(c.join("counts.mtx")).unwrap();
    let mut lines = m.lines();
    let mut out = format!("{}\n", lines.next().unwrap());
    let size: Vec<&str> = lines.next().unwrap().split(' ').collect();
    out += &format!("{} {} {}\n", size[1], size[0], size[2]);
    for l in lines {
        let f: Vec<&str> = l.split(' ').collect();
        out += &format!("{} {} {}\n", f[1], f[0], f[2]);
    }
    std::fs::write(c.join("counts.mtx"), out).unwrap();
    let o = tmp.path().join("out");
    expect_error(&run(&c, &t, &o, &[]), &o, &["counts.mtx", "8 x 60", "genes as rows", "must be cells x genes"]);
}

#[test]
fn genes_as_rows_in_an_h5ad() {
    use scspecies::out::h5ad::{AnnData, Values};
    let tmp = tempfile::tempdir().unwrap();
    let (_, t) = pair(tmp.path());
    // A dataset stored transposed: its "cells" are genes (housekeeping symbols among them).
    let obs_names: Vec<String> =
        ["ACTB", "GAPDH", "B2M", "Malat1", "Tpt1"].iter().map(|s| s.to_string()).chain((0..55).map(|i| format!("Gene{i}"))).collect();
    let var_names: Vec<String> = (0..8).map(|i| format!("AAACCTGAGC{i:04}-1")).collect();
    let (dense, _, _, _, _) = synthetic(60, 8, 30, &["x"]);
    let mut trip = (Vec::new(), Vec::new(), Vec::new());
    for (i, r) in dense.iter().enumerate() {
        for (j, &v) in r.iter().enumerate() {
            let v = v + (j == 0) as u8 as f64;
            if v != 0.0 {
                trip.0.push(i as u32);
                trip.1.push(j as u32);
                trip.2.push(v as f32);
            }
        }
    }
    let x = scspecies::data::mtx::coo_to_csr(60, 8, &trip.0, &trip.1, &trip.2).unwrap();
    let cat = |v: Vec<String>| Values::Strings(v);
    let a = AnnData {
        x: Some(x),
        obs_names,
        obs: vec![
            ("batch".into(), cat((0..60).map(|i| format!("b{}", i / 30)).collect())),
            ("type".into(), cat((0..60).map(types).collect())),
        ],
        var_names,
        ..Default::default()
    };
    let p = tmp.path().join("t.h5ad");
    a.write(&p).unwrap();
    let o = tmp.path().join("out");
    expect_error(&run(&p, &t, &o, &[]), &o, &["t.h5ad", "cell names look like genes", "ACTB", "adata.T"]);
}

#[test]
fn species_swapped_against_the_ortholog_table() {
    let tmp = tempfile::tempdir().unwrap();
    let (c, t) = (tmp.path().join("mouse"), tmp.path().join("human"));
    dataset(&c, &|j| format!("Mm{j}"), &types, &|v| v);
    dataset(&t, &|j| format!("HS{j}"), &types, &|v| v);
    // The table is human → mouse, but the run gives mouse as the context; one row happens to match.
    let mut table = String::from("human\tmouse\n");
    for j in 0..8 {
        table += &format!("HS{j}\tMm{j}\n");
    }
    table += "Mm3\tHS3\n";
    let h = tmp.path().join("orthologs.tsv");
    std::fs::write(&h, table).unwrap();
    let o = tmp.path().join("out");
    expect_error(
        &run(&c, &t, &o, &["--homology", h.to_str().unwrap()]),
        &o,
        &["orthologs.tsv", "only 1 homologous gene as given", "swapped"],
    );
}

#[test]
fn a_label_column_with_one_value_or_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, t) = pair(tmp.path());
    let c = tmp.path().join("one");
    dataset(&c, &genes, &|_| "pancreas".to_string(), &|v| v);
    let o = tmp.path().join("out");
    expect_error(&run(&c, &t, &o, &[]), &o, &["'type' has a single value ('pancreas')", "other obs columns: batch", "--context-label-key"]);

    let c = tmp.path().join("ids");
    dataset(&c, &genes, &|i| format!("cell{i}"), &|v| v);
    expect_error(&run(&c, &t, &o, &[]), &o, &["different value in every cell", "ID column"]);

    // On the target (evaluation only) it is a warning, and the run goes on.
    let (c, _) = pair(&tmp.path().join("ok"));
    let t1 = tmp.path().join("t1");
    dataset(&t1, &genes, &|_| "pancreas".to_string(), &|v| v);
    let mut a = vec!["run", "--context", c.to_str().unwrap(), "--target", t1.to_str().unwrap()];
    let out2 = tmp.path().join("out2");
    a.extend(["--context-batch-key", "batch", "--context-label-key", "type", "--target-batch-key", "batch", "--target-label-key", "type"]);
    a.extend(["--out", out2.to_str().unwrap(), "--epochs-context", "1", "--epochs-target", "1", "--min-cell-type-size", "5"]);
    let r = scspecies(&a);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("warning:") && r.stderr.contains("single value"), "{}", r.stderr);
}

#[test]
fn a_run_larger_than_the_memory_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let (c, t) = pair(tmp.path());
    let o = tmp.path().join("out");
    expect_error(&run(&c, &t, &o, &["--max-memory", "1M"]), &o, &["this run needs about", "GiB", "--max-memory"]);
    let r = run(&c, &t, &o, &["--max-memory", "lots"]);
    assert!(r.code != 0 && r.stderr.contains("not a size"), "{}", r.stderr);
    // Within the limit it runs and reports estimate and peak.
    let r = run(&c, &t, &o, &["--max-memory", "64G"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(o.join("metrics.json")).unwrap()).unwrap();
    assert!(m["memory"]["estimate_bytes"]["total"].as_u64().unwrap() > 0);
    assert_eq!(m["memory"]["limit_bytes"].as_u64().unwrap(), 64 << 30);
    if cfg!(target_os = "linux") {
        assert!(m["memory"]["peak_rss_bytes"].as_u64().unwrap() > 1 << 20);
    }
}
