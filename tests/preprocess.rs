//! Preprocessing against values computed by hand, and the Seurat v3 HVG pieces.

mod common;
use common::*;
use scspecies::data::read_dataset;
use scspecies::preprocess::hvg::{batch_normalized_variance, loess_quadratic, seurat_v3};
use scspecies::preprocess::{PreprocessConfig, preprocess};

const LN2: f64 = std::f64::consts::LN_2;

/// Seven cells, four genes, two batches; one cell without counts.
fn toy(dir: &std::path::Path) -> scspecies::data::Dataset {
    let dense = vec![
        vec![1., 0., 0., 0.], // c0 b0 A total 1
        vec![2., 0., 0., 0.], // c1 b0 A total 2
        vec![0., 4., 0., 0.], // c2 b0 B total 4
        vec![0., 0., 3., 0.], // c3 b1 A total 3
        vec![0., 0., 0., 3.], // c4 b1 B total 3
        vec![3., 3., 3., 0.], // c5 b1 A total 9
        vec![0., 0., 0., 0.], // z  b1 A total 0
    ];
    write_folder(
        dir,
        &dense,
        &["G0", "G1", "G2", "G3"],
        &["c0", "c1", "c2", "c3", "c4", "c5", "z"],
        &[("batch", vec!["b0", "b0", "b0", "b1", "b1", "b1", "b1"]), ("type", vec!["A", "A", "B", "A", "B", "A", "A"])],
    );
    read_dataset(dir).unwrap()
}

fn cfg(min_batch: usize, min_genes: f64, min_type: usize) -> PreprocessConfig {
    PreprocessConfig {
        min_batch_size: min_batch,
        drop_small_batches: false,
        min_non_zero_genes: min_genes,
        min_cell_type_size: min_type,
        n_top_genes: None,
    }
}

#[test]
fn library_prior_per_batch_on_all_genes_before_filtering() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = toy(tmp.path());
    let p = preprocess(&ds, "toy", Some("batch"), Some("type"), &cfg(3, 0.25, 0)).unwrap();
    // The zero-count cell is removed and reported.
    assert_eq!(p.report.zero_count_cells_removed, 1);
    assert_eq!(p.report.zero_count_cells_examples, vec!["z"]);
    assert_eq!(p.data.cells, vec!["c0", "c1", "c2", "c3", "c4", "c5"]);
    assert_eq!(p.batch_names, vec!["b0", "b1"]);
    // b0: ln 1, ln 2, ln 4 -> mean ln2, std ln2·sqrt(2/3); b1: ln3, ln3, ln9 -> mean 4/3 ln3, std ln3·sqrt(2)/3.
    let ln3 = 3f64.ln();
    let (m0, s0) = p.batch_prior[0];
    let (m1, s1) = p.batch_prior[1];
    assert!((m0 - LN2).abs() < 1e-12 && (s0 - LN2 * (2.0f64 / 3.0).sqrt()).abs() < 1e-12);
    assert!((m1 - 4.0 / 3.0 * ln3).abs() < 1e-12 && (s1 - ln3 * 2f64.sqrt() / 3.0).abs() < 1e-12);
    assert_eq!(p.library_log_mean[4], (4.0 / 3.0 * ln3) as f32);
    assert_eq!(p.library_log_std[0], (LN2 * (2.0f64 / 3.0).sqrt()) as f32);
    assert_eq!(p.batch_one_hot()[..4], [1.0, 0.0, 1.0, 0.0]);
    assert_eq!(p.n_genes, vec![1, 1, 1, 1, 1, 3]);
}

#[test]
fn cell_filter_uses_fraction_of_genes_and_keeps_prior_from_before() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = toy(tmp.path());
    // 4 genes x 0.3 = 1.2 expressed genes needed: only c5 (3 genes) stays.
    let p = preprocess(&ds, "toy", Some("batch"), None, &cfg(3, 0.3, 0)).unwrap();
    assert_eq!(p.data.cells, vec!["c5"]);
    assert!((p.report.min_genes_threshold - 1.2).abs() < 1e-12);
    assert_eq!(p.report.cells_below_min_genes, 5);
    // Its prior is still the one of all three b1 cells.
    assert_eq!(p.library_log_mean, vec![(4.0 / 3.0 * 3f64.ln()) as f32]);
    // One-hot keeps both batches although b0 has no cell left (the encoder was fit before filtering).
    assert_eq!(p.batch_names.len(), 2);
    assert!(p.labels.is_none());
}

#[test]
fn rare_cell_types_need_strictly_more_than_the_minimum() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = toy(tmp.path());
    // Type B has 2 cells (c2, c4): removed at min 2; type A has 4: kept.
    let p = preprocess(&ds, "toy", Some("batch"), Some("type"), &cfg(3, 0.25, 2)).unwrap();
    assert_eq!(p.data.cells, vec!["c0", "c1", "c3", "c5"]);
    assert_eq!(p.report.rare_cell_types_removed, vec![("B".to_string(), 2)]);
    assert_eq!(p.labels.as_ref().unwrap().categories, vec!["A"]);
    let ln3 = 3f64.ln();
    let want = ((LN2 as f32 as f64 * 2.0 + (4.0 / 3.0 * ln3) as f32 as f64 * 2.0) / 4.0 * 1e5).round_ties_even() / 1e5;
    assert_eq!(p.lib_mu_add, want);
    // At min 1, B (2 cells) is kept.
    let p = preprocess(&ds, "toy", Some("batch"), Some("type"), &cfg(3, 0.25, 1)).unwrap();
    assert_eq!(p.labels.unwrap().categories, vec!["A", "B"]);
}

#[test]
fn small_batch_is_an_error_or_dropped_on_request() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = toy(tmp.path());
    let e = preprocess(&ds, "toy", Some("batch"), Some("type"), &cfg(4, 0.25, 0)).unwrap_err().to_string();
    assert!(e.contains("'b0' (3 cells)") && e.contains("'b1' (3 cells)") && e.contains("min_batch_size = 4"), "{e}");
    assert!(e.contains(&ds.source.display().to_string()), "{e}");
    let mut c = cfg(4, 0.25, 0);
    c.drop_small_batches = true;
    let e = preprocess(&ds, "toy", Some("batch"), Some("type"), &c).unwrap_err().to_string();
    assert!(e.contains("no cells left"), "{e}");
    let mut c = cfg(3, 0.25, 0);
    c.drop_small_batches = true;
    assert!(preprocess(&ds, "toy", Some("batch"), Some("type"), &c).unwrap().report.small_batches_dropped.is_empty());
}

#[test]
fn batch_with_constant_library_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    write_folder(
        tmp.path(),
        &[vec![1., 2.], vec![2., 1.], vec![1., 1.], vec![5., 1.]],
        &["G0", "G1"],
        &["a", "b", "c", "d"],
        &[("batch", vec!["x", "x", "y", "y"])],
    );
    let ds = read_dataset(tmp.path()).unwrap();
    let e = preprocess(&ds, "t", Some("batch"), None, &cfg(2, 0.0, 0)).unwrap_err().to_string();
    assert!(e.contains("batch 'x'") && e.contains("std 0"), "{e}");
}

#[test]
fn missing_keys_and_missing_values_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = toy(tmp.path());
    let e = preprocess(&ds, "toy", Some("donor"), None, &cfg(3, 0.25, 0)).unwrap_err().to_string();
    assert!(e.contains("'donor'") && e.contains("batch, type"), "{e}");
    write_folder(tmp.path(), &[vec![1.0], vec![2.0]], &["G"], &["a", "b"], &[("batch", vec!["x", "NA"])]);
    let ds = read_dataset(tmp.path()).unwrap();
    let e = preprocess(&ds, "t", Some("batch"), None, &cfg(1, 0.0, 0)).unwrap_err().to_string();
    assert!(e.contains("no value for 1 cells") && e.contains("'b'"), "{e}");
}

#[test]
fn real_baron_preprocessing_counts() {
    let d = bundled();
    let m = read_dataset(&d.join("mouse")).unwrap();
    let p = preprocess(&m, "mouse", Some("batch"), Some("cell_type"), &PreprocessConfig::default()).unwrap();
    // Four mouse types have <= 20 cells: Schwann (6), T (7), leukocyte (8), B (10); no cell fails min_genes.
    assert_eq!(p.report.cells_in_rare_types, 31);
    assert_eq!(p.report.cells_below_min_genes, 0);
    assert_eq!(p.n_cells(), 1855);
    assert_eq!(p.labels.as_ref().unwrap().categories.len(), 8);
    // Library prior from all 1,886 cells, recomputed here independently.
    let lib = m.counts.row_sums();
    let b = m.labels("batch").unwrap();
    for (k, name) in p.batch_names.iter().enumerate() {
        let v: Vec<f64> = (0..m.n_cells()).filter(|&i| b.value(i) == Some(name)).map(|i| lib[i].ln()).collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        assert!((p.batch_prior[k].0 - mean).abs() < 1e-12 && (p.batch_prior[k].1 - sd).abs() < 1e-12);
    }
}

#[test]
fn loess_reproduces_a_quadratic_exactly() {
    let x: Vec<f64> = (0..200).map(|i| (i as f64 * 0.37).sin() * 3.0 + i as f64 * 0.01).collect();
    let y: Vec<f64> = x.iter().map(|&v| 1.0 - 2.0 * v + 0.5 * v * v).collect();
    let fit = loess_quadratic(&x, &y, 0.3);
    for (f, t) in fit.iter().zip(&y) {
        assert!((f - t).abs() < 1e-8, "{f} vs {t}");
    }
    // Degenerate: all x equal -> the weighted mean.
    let fit = loess_quadratic(&[1.0; 5], &[1.0, 2.0, 3.0, 4.0, 5.0], 1.0);
    assert!(fit.iter().all(|&f| (f - 3.0).abs() < 1e-12));
}

/// A deterministic pseudo-random count generator (no RNG crate needed in tests).
fn lcg(state: &mut u64) -> f64 {
    *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ((*state >> 11) as f64) / ((1u64 << 53) as f64)
}

#[test]
fn normalized_variance_matches_a_dense_reimplementation() {
    let (n, g) = (60, 40);
    let mut s = 1u64;
    let mut dense = vec![0f32; n * g];
    for i in 0..n {
        for j in 0..g {
            let mean = 0.2 + j as f64 * 0.3;
            let u = lcg(&mut s);
            dense[i * g + j] = (-(1.0 - u).ln() * mean).floor() as f32; // geometric-like counts
        }
    }
    dense[5 * g + 7] = 500.0; // an outlier that must be clipped
    let csr = scspecies::data::Csr::from_dense(n, g, &dense);
    let rows: Vec<usize> = (0..n).collect();
    let got = batch_normalized_variance(&csr, &rows);
    // Dense: same loess input, then sum of squared standardised clipped deviations.
    let col = |j: usize| (0..n).map(|i| dense[i * g + j] as f64).collect::<Vec<_>>();
    let mean: Vec<f64> = (0..g).map(|j| col(j).iter().sum::<f64>() / n as f64).collect();
    let var: Vec<f64> = (0..g).map(|j| col(j).iter().map(|x| (x - mean[j]).powi(2)).sum::<f64>() / (n as f64 - 1.0)).collect();
    let nc: Vec<usize> = (0..g).filter(|&j| var[j] > 0.0).collect();
    let fit = loess_quadratic(
        &nc.iter().map(|&j| mean[j].log10()).collect::<Vec<_>>(),
        &nc.iter().map(|&j| var[j].log10()).collect::<Vec<_>>(),
        0.3,
    );
    let mut sd = vec![1f64; g];
    for (k, &j) in nc.iter().enumerate() {
        sd[j] = 10f64.powf(fit[k]).sqrt();
    }
    for j in 0..g {
        let clip = sd[j] * (n as f64).sqrt() + mean[j];
        let want = col(j).iter().map(|&x| (x.min(clip) - mean[j]).powi(2)).sum::<f64>() / ((n as f64 - 1.0) * sd[j] * sd[j]);
        assert!((got[j] - want).abs() <= 1e-9 * want.abs().max(1.0), "gene {j}: {} vs {want}", got[j]);
    }
}

#[test]
fn seurat_v3_finds_overdispersed_genes_in_every_batch() {
    let (n, g) = (200, 60);
    let mut s = 7u64;
    let mut dense = vec![0f32; n * g];
    for i in 0..n {
        for j in 0..g {
            let mean = 0.5 + (j % 10) as f64 * 0.5;
            // Genes 13 and 41: same mean, but all counts in a fifth of the cells (a marker).
            let v = if j == 13 || j == 41 {
                if i % 5 == 0 { (mean * 5.0 * (0.5 + lcg(&mut s))).round() } else { 0.0 }
            } else {
                (mean * 2.0 * lcg(&mut s)).round()
            };
            dense[i * g + j] = v as f32;
        }
    }
    let csr = scspecies::data::Csr::from_dense(n, g, &dense);
    let batch: Vec<u32> = (0..n).map(|i| (i % 2) as u32).collect();
    assert_eq!(seurat_v3(&csr, &batch, 2, 2), vec![13, 41]);
    assert_eq!(seurat_v3(&csr, &batch, 2, 60).len(), 60);
    // Through preprocess: genes are subset after the prior, which still uses all genes.
    let tmp = tempfile::tempdir().unwrap();
    let rows: Vec<Vec<f64>> = (0..n).map(|i| (0..g).map(|j| dense[i * g + j] as f64).collect()).collect();
    let genes: Vec<String> = (0..g).map(|j| format!("G{j}")).collect();
    let cells: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    let b: Vec<&str> = (0..n).map(|i| if i % 2 == 0 { "even" } else { "odd" }).collect();
    write_folder(
        tmp.path(),
        &rows,
        &genes.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        &cells.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        &[("batch", b)],
    );
    let ds = read_dataset(tmp.path()).unwrap();
    let mut c = PreprocessConfig { n_top_genes: Some(2), min_non_zero_genes: 0.0, ..Default::default() };
    let p = preprocess(&ds, "t", Some("batch"), None, &c).unwrap();
    assert_eq!(p.data.genes, vec!["G13", "G41"]);
    c.n_top_genes = None;
    let full = preprocess(&ds, "t", Some("batch"), None, &c).unwrap();
    assert_eq!(p.batch_prior, full.batch_prior);
}

#[test]
fn every_input_cell_is_kept_or_has_a_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = toy(tmp.path());
    // Type B (c2, c4) is rare at min 2; z has no counts.
    let p = preprocess(&ds, "toy", Some("batch"), Some("type"), &cfg(3, 0.25, 2)).unwrap();
    assert_eq!(p.input_rows, vec![0, 1, 3, 5]);
    assert_eq!(p.removed.len(), 7);
    assert_eq!(p.removed[6].as_deref(), Some("zero total counts"));
    assert!(p.removed[2].as_deref().unwrap().contains("cell type 'B'"), "{:?}", p.removed[2]);
    assert!(p.removed[4].as_deref().unwrap().contains("cell type 'B'"));
    for i in [0, 1, 3, 5] {
        assert!(p.removed[i].is_none());
    }
    // The gene filter: only c5 expresses enough genes.
    let p = preprocess(&ds, "toy", Some("batch"), None, &cfg(3, 0.3, 0)).unwrap();
    assert_eq!(p.input_rows, vec![5]);
    assert!(p.removed[0].as_deref().unwrap().contains("expressed genes"), "{:?}", p.removed[0]);
}

#[test]
fn without_a_batch_key_all_cells_form_one_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = toy(tmp.path());
    let p = preprocess(&ds, "toy", None, Some("type"), &cfg(3, 0.25, 0)).unwrap();
    assert_eq!(p.batch_names, vec![scspecies::preprocess::ONE_BATCH]);
    assert!(p.batch.iter().all(|&b| b == 0));
    // One prior over the six cells with counts: ln 1, 2, 4, 3, 3, 9.
    let logs: Vec<f64> = [1.0f64, 2.0, 4.0, 3.0, 3.0, 9.0].iter().map(|x| x.ln()).collect();
    let mean = logs.iter().sum::<f64>() / 6.0;
    assert!((p.batch_prior[0].0 - mean).abs() < 1e-12);
}
