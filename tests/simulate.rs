//! The synthetic pair: seeded and thread-count independent, readable by the readers, with the density,
//! orthologs and species-specific types it was asked for.

use std::process::Command;

fn sim(out: &std::path::Path, threads: &str, seed: &str) {
    let o = Command::new(env!("CARGO_BIN_EXE_scspecies"))
        .args(["simulate", "--out", out.to_str().unwrap(), "--context-cells", "700", "--target-cells", "500", "--genes", "400"])
        .args(["--density", "0.08", "--seed", seed, "--threads", threads])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn simulate_is_seeded_readable_and_as_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
    sim(&a, "1", "3");
    sim(&b, "2", "3");
    sim(&c, "2", "4");
    for f in ["context/counts.mtx", "target/counts.mtx", "context/cells.tsv", "homology.tsv"] {
        assert_eq!(std::fs::read(a.join(f)).unwrap(), std::fs::read(b.join(f)).unwrap(), "{f} depends on the thread count");
    }
    assert_ne!(std::fs::read(a.join("context/counts.mtx")).unwrap(), std::fs::read(c.join("context/counts.mtx")).unwrap());
    let ctx = scspecies::data::read_dataset(&a.join("context")).unwrap();
    let tgt = scspecies::data::read_dataset(&a.join("target")).unwrap();
    assert_eq!((ctx.n_cells(), ctx.n_genes(), tgt.n_cells()), (700, 400, 500));
    let density = ctx.counts.nnz() as f64 / (700.0 * 400.0);
    assert!((density - 0.08).abs() < 0.02, "density {density}");
    let types = ctx.labels("cell_type").unwrap().categories;
    assert!(types.contains(&"context_only".to_string()) && !types.contains(&"target_only".to_string()), "{types:?}");
    assert!(tgt.labels("cell_type").unwrap().categories.contains(&"target_only".to_string()));
    assert_eq!(ctx.labels("batch").unwrap().categories.len(), 2);
    let table = scspecies::homology::OrthologTable::read(&a.join("homology.tsv")).unwrap();
    let hom = scspecies::homology::match_genes(&ctx.genes, &tgt.genes, Some(&table)).unwrap();
    assert_eq!(hom.len(), 280);
}
