//! Every bad input named by the foundation issue, through the real binary: a clear error naming the
//! file and the problem, a non-zero exit, no panic, and no output left behind.

mod common;
use common::*;
use std::path::{Path, PathBuf};

/// A valid labelled dataset: 3 batches x 25 cells, 6 genes.
fn good(dir: &Path) {
    let (dense, g, c, b, t) = synthetic(75, 6, 25, &["alpha", "beta"]);
    let mut dense = dense;
    for r in dense.iter_mut() {
        r[0] += 1.0; // every cell has counts
    }
    write_labelled(dir, &dense, &g, &c, &b, &t);
}

fn run_args<'a>(ctx: &'a str, tgt: &'a str, out: &'a str) -> Vec<&'a str> {
    let mut a = pipeline_args("run", ctx, tgt, out);
    a.extend(["--quiet", "--epochs-context", "1", "--epochs-target", "1"]);
    a
}

/// Run the pipeline with `ctx` as the context and a good target; expect failure mentioning `needles`.
fn expect_failure(ctx: &Path, needles: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let tgt = tmp.path().join("target");
    good(&tgt);
    let out = tmp.path().join("out");
    let o = scspecies(&run_args(ctx.to_str().unwrap(), tgt.to_str().unwrap(), out.to_str().unwrap()));
    assert_ne!(o.code, 0, "expected a failure, stderr: {}", o.stderr);
    assert!(!o.stderr.contains("panicked"), "panic: {}", o.stderr);
    assert!(o.stderr.starts_with("error: "), "{}", o.stderr);
    for n in needles {
        assert!(o.stderr.contains(n), "stderr lacks '{n}': {}", o.stderr);
    }
    let left = out.is_dir() && std::fs::read_dir(&out).unwrap().next().is_some();
    assert!(!left, "output left behind in {}", out.display());
}

fn ctx_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("ctx");
    good(&d);
    (tmp, d)
}

fn replace_in(path: &Path, from: &str, to: &str) {
    let s = std::fs::read_to_string(path).unwrap();
    assert!(s.contains(from), "{from} not in {}", path.display());
    std::fs::write(path, s.replacen(from, to, 1)).unwrap();
}

#[test]
fn the_good_input_works() {
    let (_t, d) = ctx_dir();
    let tmp = tempfile::tempdir().unwrap();
    let tgt = tmp.path().join("t");
    good(&tgt);
    let out = tmp.path().join("out");
    let o = scspecies(&run_args(d.to_str().unwrap(), tgt.to_str().unwrap(), out.to_str().unwrap()));
    assert_eq!(o.code, 0, "{}", o.stderr);
    for f in ["metrics.json", "homologous_genes.tsv", "cells_preprocessed.tsv"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
}

#[test]
fn missing_file() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("nope.h5ad");
    expect_failure(&p, &["nope.h5ad", "no such"]);
    let (_t, d) = ctx_dir();
    std::fs::remove_file(d.join("genes.tsv")).unwrap();
    expect_failure(&d, &["ctx", "no genes.tsv"]);
}

#[test]
fn truncated_or_corrupted_h5ad() {
    use scspecies::out::h5ad::{AnnData, Values};
    let tmp = tempfile::tempdir().unwrap();
    let ds = {
        let (_t, d) = ctx_dir();
        scspecies::data::read_dataset(&d).unwrap()
    };
    let a = AnnData {
        x: Some(ds.counts.clone()),
        obs_names: ds.cells.clone(),
        obs: vec![
            ("batch".into(), Values::Categorical(ds.labels("batch").unwrap())),
            ("type".into(), Values::Categorical(ds.labels("type").unwrap())),
        ],
        var_names: ds.genes.clone(),
        ..Default::default()
    };
    let p = tmp.path().join("ok.h5ad");
    a.write(&p).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    for (name, cut) in [("half.h5ad", bytes.len() / 2), ("head.h5ad", 100), ("tiny.h5ad", 3)] {
        let q = tmp.path().join(name);
        std::fs::write(&q, &bytes[..cut]).unwrap();
        expect_failure(&q, &[name]);
    }
    let mut garbled = bytes.clone();
    for b in garbled.iter_mut().skip(600).step_by(97) {
        *b ^= 0x5a;
    }
    let q = tmp.path().join("garbled.h5ad");
    std::fs::write(&q, &garbled).unwrap();
    expect_failure(&q, &["garbled.h5ad"]);
    let q = tmp.path().join("text.h5ad");
    std::fs::write(&q, "not hdf5 at all").unwrap();
    expect_failure(&q, &["text.h5ad", "not a readable HDF5"]);
}

#[test]
fn truncated_or_corrupted_mtx() {
    let (_t, d) = ctx_dir();
    let m = std::fs::read_to_string(d.join("counts.mtx")).unwrap();
    let lines: Vec<&str> = m.lines().collect();
    std::fs::write(d.join("counts.mtx"), lines[..lines.len() - 10].join("\n")).unwrap();
    expect_failure(&d, &["counts.mtx", "truncated"]);

    let (_t, d) = ctx_dir();
    gzip_file(&d.join("counts.mtx"), &d.join("counts.mtx.gz"));
    std::fs::remove_file(d.join("counts.mtx")).unwrap();
    let gz = std::fs::read(d.join("counts.mtx.gz")).unwrap();
    std::fs::write(d.join("counts.mtx.gz"), &gz[..gz.len() / 2]).unwrap();
    expect_failure(&d, &["counts.mtx.gz"]);

    let (_t, d) = ctx_dir();
    std::fs::write(d.join("counts.mtx"), "this is not a matrix\n").unwrap();
    expect_failure(&d, &["counts.mtx", "line 1", "Matrix Market header"]);
}

#[test]
fn bad_count_values() {
    for (bad, needle) in [("2.5", "not a whole number"), ("-3", "negative"), ("nan", "finite"), ("inf", "finite"), ("abc", "not a number")]
    {
        let (_t, d) = ctx_dir();
        let m = std::fs::read_to_string(d.join("counts.mtx")).unwrap();
        // Replace the value of the third entry (line 5 of the file).
        let mut lines: Vec<String> = m.lines().map(|s| s.to_string()).collect();
        let f: Vec<&str> = lines[4].split(' ').collect();
        lines[4] = format!("{} {} {}", f[0], f[1], bad);
        std::fs::write(d.join("counts.mtx"), lines.join("\n") + "\n").unwrap();
        expect_failure(&d, &["counts.mtx", "line 5", needle]);
    }
    // The same check in an .h5ad (dense X with a fractional value).
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("lognorm.h5ad");
    let mut b = hdf5_pure::FileBuilder::new();
    b.create_dataset("X").with_f32_data(&[0.69, 0.0, 1.1, 0.0]).with_shape(&[2, 2]);
    for g in ["obs", "var"] {
        let mut grp = b.create_group(g);
        grp.set_attr("_index", hdf5_pure::AttrValue::String("_index".into()));
        grp.create_dataset("_index").with_vlen_strings(&["a", "b"]);
        b.add_group(grp.finish());
    }
    b.write(&p).unwrap();
    expect_failure(&p, &["lognorm.h5ad", "not a whole number", "raw UMI counts"]);
}

#[test]
fn missing_obs_key_lists_the_keys() {
    let (_t, d) = ctx_dir();
    let tmp = tempfile::tempdir().unwrap();
    let tgt = tmp.path().join("t");
    good(&tgt);
    let out = tmp.path().join("out");
    let mut args = run_args(d.to_str().unwrap(), tgt.to_str().unwrap(), out.to_str().unwrap());
    args[8] = "cell_type"; // --context-label-key
    let o = scspecies(&args);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("'cell_type'") && o.stderr.contains("columns present: batch, type"), "{}", o.stderr);
    assert!(!out.exists());
}

#[test]
fn batch_below_min_batch_size() {
    let (_t, d) = ctx_dir();
    // Move 20 cells of batch b2 into b0, leaving b2 with 5.
    let c = std::fs::read_to_string(d.join("cells.tsv")).unwrap();
    let mut n = 0;
    let fixed: Vec<String> = c
        .lines()
        .map(|l| {
            if l.contains("\tb2\t") && n < 20 {
                n += 1;
                l.replace("\tb2\t", "\tb0\t")
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(d.join("cells.tsv"), fixed.join("\n") + "\n").unwrap();
    expect_failure(&d, &["'b2' (5 cells)", "min_batch_size = 20", "--drop-small-batches"]);
}

#[test]
fn zero_homologous_genes() {
    let (_t, d) = ctx_dir();
    let tmp = tempfile::tempdir().unwrap();
    let tgt = tmp.path().join("t");
    good(&tgt);
    replace_in(&tgt.join("genes.tsv"), "gene\nG0\nG1\nG2\nG3\nG4\nG5", "gene\nX0\nX1\nX2\nX3\nX4\nX5");
    let out = tmp.path().join("out");
    let o = scspecies(&run_args(d.to_str().unwrap(), tgt.to_str().unwrap(), out.to_str().unwrap()));
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("zero homologous genes"), "{}", o.stderr);
    assert!(!out.exists());
    // With a table that matches nothing, the table is named.
    let tab = tmp.path().join("orth.tsv");
    std::fs::write(&tab, "context_gene\ttarget_gene\nQ1\tQ2\n").unwrap();
    let mut args = run_args(d.to_str().unwrap(), tgt.to_str().unwrap(), out.to_str().unwrap());
    args.extend(["--homology", tab.to_str().unwrap()]);
    let o = scspecies(&args);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("orth.tsv") && o.stderr.contains("zero homologous genes"), "{}", o.stderr);
}

#[test]
fn zero_count_cell_is_filtered_and_reported() {
    let (_t, d) = ctx_dir();
    // Remove every entry of cell 3 from the matrix.
    let m = std::fs::read_to_string(d.join("counts.mtx")).unwrap();
    let lines: Vec<&str> = m.lines().collect();
    let body: Vec<&str> = lines[2..].iter().copied().filter(|l| !l.starts_with("3 ")).collect();
    let dims: Vec<&str> = lines[1].split(' ').collect();
    let out = format!("{}\n{} {} {}\n{}\n", lines[0], dims[0], dims[1], body.len(), body.join("\n"));
    std::fs::write(d.join("counts.mtx"), out).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let tgt = tmp.path().join("t");
    good(&tgt);
    let outd = tmp.path().join("out");
    let mut args = run_args(d.to_str().unwrap(), tgt.to_str().unwrap(), outd.to_str().unwrap());
    args.retain(|a| *a != "--quiet"); // the message must be shown
    let o = scspecies(&args);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stderr.contains("removed 1 cells with zero total counts (e.g. cell2)"), "{}", o.stderr);
    let cells = std::fs::read_to_string(outd.join("cells_preprocessed.tsv")).unwrap();
    assert!(!cells.contains("cell2\tcontext\t") && cells.contains("cell2\ttarget\t"));
}

#[test]
fn mismatched_row_counts() {
    let (_t, d) = ctx_dir();
    let c = std::fs::read_to_string(d.join("cells.tsv")).unwrap();
    let lines: Vec<&str> = c.lines().collect();
    std::fs::write(d.join("cells.tsv"), lines[..lines.len() - 1].join("\n") + "\n").unwrap();
    expect_failure(&d, &["cells.tsv", "74 cells listed", "75 rows"]);
    let (_t, d) = ctx_dir();
    replace_in(&d.join("genes.tsv"), "G5\n", "");
    expect_failure(&d, &["genes.tsv", "header line ('gene') and 5 genes", "6 genes"]);
    let (_t, d) = ctx_dir();
    replace_in(&d.join("genes.tsv"), "G4\nG5\n", "");
    expect_failure(&d, &["genes.tsv", "5 lines for 6 genes"]);
}

#[test]
fn duplicate_barcodes() {
    let (_t, d) = ctx_dir();
    replace_in(&d.join("cells.tsv"), "cell1\t", "cell0\t");
    expect_failure(&d, &["ctx", "duplicate cell barcode 'cell0'"]);
}

#[test]
fn empty_dataset() {
    let (_t, d) = ctx_dir();
    std::fs::write(d.join("counts.mtx"), "%%MatrixMarket matrix coordinate integer general\n0 6 0\n").unwrap();
    std::fs::write(d.join("cells.tsv"), "barcode\tbatch\ttype\n").unwrap();
    expect_failure(&d, &["ctx", "no cells"]);
    let (_t, d) = ctx_dir();
    std::fs::write(d.join("counts.mtx"), "").unwrap();
    expect_failure(&d, &["counts.mtx", "empty file"]);
}

#[test]
fn bad_option_values() {
    let (_t, d) = ctx_dir();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut args = run_args(d.to_str().unwrap(), d.to_str().unwrap(), out.to_str().unwrap());
    args.extend(["--device", "gpu"]);
    let o = scspecies(&args);
    assert_eq!(o.code, 2, "clap rejects unknown values with exit 2");
    assert!(o.stderr.contains("gpu"), "{}", o.stderr);
    let mut args = run_args(d.to_str().unwrap(), d.to_str().unwrap(), out.to_str().unwrap());
    args.extend(["--min-genes-fraction", "1.5"]);
    let o = scspecies(&args);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("min_non_zero_genes") && o.stderr.contains("1.5"), "{}", o.stderr);
}
