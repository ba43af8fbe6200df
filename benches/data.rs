//! Data stages on the bundled Baron pair: Matrix Market parsing, preprocessing, homology.
//! Run with `cargo bench --bench data`.

use criterion::{Criterion, criterion_group, criterion_main};
use scspecies::data::read_dataset;
use scspecies::homology::{OrthologTable, match_genes};
use scspecies::preprocess::{PreprocessConfig, preprocess};
use std::hint::black_box;
use std::path::Path;

fn data_stages(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/baron-pancreas");
    let mut g = c.benchmark_group("baron");
    g.sample_size(10);
    g.bench_function("read_mouse_mtx_gz", |b| b.iter(|| black_box(read_dataset(&dir.join("mouse")).unwrap())));
    let mouse = read_dataset(&dir.join("mouse")).unwrap();
    let human = read_dataset(&dir.join("human")).unwrap();
    let cfg = PreprocessConfig::default();
    g.bench_function("preprocess_mouse", |b| {
        b.iter(|| black_box(preprocess(&mouse, "mouse", Some("batch"), Some("cell_type"), &cfg).unwrap()))
    });
    let hvg = PreprocessConfig { n_top_genes: Some(2000), ..Default::default() };
    g.bench_function("preprocess_human_hvg2000", |b| b.iter(|| black_box(preprocess(&human, "human", Some("batch"), None, &hvg).unwrap())));
    let table = OrthologTable::read(&dir.join("homology.tsv")).unwrap();
    g.bench_function("homology_table", |b| b.iter(|| black_box(match_genes(&mouse.genes, &human.genes, Some(&table)).unwrap())));
    g.finish();
}

criterion_group!(benches, data_stages);
criterion_main!(benches);
