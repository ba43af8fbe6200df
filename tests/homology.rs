//! Homology: sorted-intersection order, first occurrence on duplicates, header detection,
//! case-insensitive symbols, the zero-overlap error, and the real Baron table.

mod common;
use scspecies::homology::{OrthologTable, SymbolFill, match_genes, match_genes_with};

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn table(rows: &[(&str, &str)]) -> OrthologTable {
    OrthologTable { path: "orthologs.tsv".into(), pairs: rows.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect() }
}

#[test]
fn table_pairs_in_sorted_name_order_with_first_occurrence() {
    let ctx = s(&["Zfp1", "Gapdh", "Actb", "Gapdh", "Cd4"]);
    let tgt = s(&["ACTB", "GAPDH", "GAPDH2", "ZNF1", "CD4", "MT1"]);
    let t = table(&[
        ("context_gene", "target_gene"),
        ("Gapdh", "GAPDH"),
        ("Gapdh", "GAPDH2"), // second target gene translating to Gapdh: non-homologous (first occurrence wins)
        ("Actb", "ACTB"),
        ("Zfp1", "ZNF1"),
        ("Cd4", "CD4"),
        ("Cd8", "CD4"), // CD4 already translated by the earlier row
    ]);
    let h = match_genes(&ctx, &tgt, Some(&t)).unwrap();
    assert_eq!(h.names, s(&["Actb", "Cd4", "Gapdh", "Zfp1"]));
    assert_eq!(h.context, vec![2, 4, 1, 0]); // Gapdh: first of the two context columns
    assert_eq!(h.target, vec![0, 4, 1, 3]); // GAPDH (1), not GAPDH2 (2)
    assert_eq!(h.report.table_rows, 6); // header skipped
    assert_eq!(h.report.homologous_genes, 4);
}

#[test]
fn symbols_match_case_insensitively() {
    let ctx = s(&["Actb", "Cd4", "Sox2", "actb"]);
    let tgt = s(&["CD4", "ACTB", "Cd4", "NANOG"]);
    let h = match_genes(&ctx, &tgt, None).unwrap();
    assert_eq!(h.names, s(&["ACTB", "CD4"]));
    assert_eq!(h.context, vec![0, 1]);
    assert_eq!(h.target, vec![1, 0]);
}

#[test]
fn zero_homologous_genes_is_an_error_with_a_hint() {
    let ctx = s(&["Actb", "Cd4"]);
    let tgt = s(&["ACTB", "CD4"]);
    let swapped = table(&[("ACTB", "Actb"), ("CD4", "Cd4")]);
    let e = match_genes(&ctx, &tgt, Some(&swapped)).unwrap_err().to_string();
    assert!(e.contains("orthologs.tsv") && e.contains("zero homologous genes") && e.contains("swapped"), "{e}");
    let e = match_genes(&ctx, &s(&["FOO"]), None).unwrap_err().to_string();
    assert!(e.contains("zero homologous genes") && e.contains("--homology"), "{e}");
}

#[test]
fn baron_table_on_bundled_and_shared_genes() {
    let d = common::bundled();
    let t = OrthologTable::read(&d.join("homology.tsv")).unwrap();
    let m = scspecies::data::read_dataset(&d.join("mouse")).unwrap();
    let hu = scspecies::data::read_dataset(&d.join("human")).unwrap();
    let h = match_genes(&m.genes, &hu.genes, Some(&t)).unwrap();
    assert_eq!(h.report.table_rows, 16_597);
    assert_eq!(h.len(), 11_312);
    assert!(h.names.windows(2).all(|w| w[0] < w[1]), "pairs must be in sorted name order");
    for k in 0..h.len() {
        assert_eq!(m.genes[h.context[k]], h.names[k]);
    }
    let Some(sd) = common::shared_data("baron_table_on_bundled_and_shared_genes") else {
        return;
    };
    let gm = scspecies::data::text::read_tsv(&sd.join("mouse/genes.tsv"), true).unwrap();
    let gh = scspecies::data::text::read_tsv(&sd.join("human/genes.tsv"), true).unwrap();
    let gm: Vec<String> = gm.rows.into_iter().map(|r| r[0].clone()).collect();
    let gh: Vec<String> = gh.rows.into_iter().map(|r| r[0].clone()).collect();
    let h = match_genes(&gm, &gh, Some(&t)).unwrap();
    assert_eq!(h.len(), 11_674);
}

/// `SymbolFill::Gaps` pairs genes the table lists on neither side by symbol, and never overrules the
/// table: a gene the table lists keeps the table's partner (or stays unpaired if that partner is absent).
#[test]
fn symbol_fill_covers_only_genes_the_table_does_not_list() {
    let ctx = s(&["Ppy", "Gcg", "Sst", "Cd4", "Foo1", "Ins2"]);
    let tgt = s(&["PPY", "GCG", "SST", "CD4", "FOO1", "INS"]);
    let t = table(&[
        ("context_gene", "target_gene"),
        ("Gcg", "GCG"),
        ("Sst", "SST"),
        ("Cd4", "CD8"),  // Cd4 is listed (with a partner absent here): not re-paired with CD4 by symbol
        ("Bar", "FOO1"), // FOO1 is listed: not paired with Foo1
        ("Ins2", "INS"),
    ]);
    let none = match_genes_with(&ctx, &tgt, Some(&t), SymbolFill::None).unwrap();
    assert_eq!(none.names, s(&["Gcg", "Ins2", "Sst"]));
    assert_eq!(none.report.symbol_matched_gaps, 0);
    let plain = match_genes(&ctx, &tgt, Some(&t)).unwrap();
    assert_eq!(plain.names, none.names, "match_genes is the table-only matching");
    let gaps = match_genes_with(&ctx, &tgt, Some(&t), SymbolFill::Gaps).unwrap();
    assert_eq!(gaps.names, s(&["Gcg", "Ins2", "Ppy", "Sst"]), "Ppy-PPY added; Cd4-CD4 and Foo1-FOO1 not");
    assert_eq!(gaps.context, vec![1, 5, 0, 2]);
    assert_eq!(gaps.target, vec![1, 5, 0, 2]);
    assert_eq!(gaps.report.symbol_matched_gaps, 1);
    assert_eq!(gaps.report.homologous_genes, 4);
    assert!(gaps.report.method.contains("symbol"), "{}", gaps.report.method);
}

/// The bundled Baron table lacks Ppy-PPY (the PP-cell marker); the gap fill adds it and 1,060 others.
#[test]
fn baron_table_gaps() {
    let dir = common::bundled();
    let read =
        |p: &str| std::fs::read_to_string(dir.join(p).join("genes.tsv")).unwrap().lines().skip(1).map(String::from).collect::<Vec<_>>();
    let (m, h) = (read("mouse"), read("human"));
    let t = OrthologTable::read(&dir.join("homology.tsv")).unwrap();
    let none = match_genes_with(&m, &h, Some(&t), SymbolFill::None).unwrap();
    let gaps = match_genes_with(&m, &h, Some(&t), SymbolFill::Gaps).unwrap();
    assert!(!none.names.iter().any(|n| n == "Ppy"));
    assert!(gaps.names.iter().any(|n| n == "Ppy"));
    assert_eq!((gaps.len(), gaps.report.symbol_matched_gaps), (none.len() + 1061, 1061));
}
