//! One context training step at batch 128 on the Baron mouse shape (1,855 cells x 14,860 genes,
//! 2 batches, 11,312 homologous genes), split into its parts. `cargo bench --bench train_step`.

use criterion::{Criterion, criterion_group, criterion_main};
use scspecies::engine::Cpu;
use scspecies::model::{Model, ModelConfig, Noise};
use scspecies::pipeline::{demo_like_inputs, prepare};
use scspecies::preprocess::PreprocessConfig;
use scspecies::train::{TrainData, stream};
use std::hint::black_box;
use std::path::Path;

fn train_step(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/baron-pancreas");
    let pair = prepare(&demo_like_inputs(&dir), &PreprocessConfig::default(), &scspecies::pipeline::Silent).unwrap();
    let ctx = &pair.context;
    let be = Cpu::<f32>::new();
    let mut hom = pair.homology.context.clone();
    hom.sort_unstable();
    let cfg = ModelConfig::scspecies(ctx.data.n_genes(), ctx.n_batches(), hom, ctx.lib_mu_add);
    let mut model = Model::new(&be, cfg, &mut stream(1, 0, 0, 0));
    let data = TrainData::of(ctx);
    let rows: Vec<usize> = (0..128).map(|i| i * 13 % ctx.n_cells()).collect();
    let batch = data.batch(&be, &rows);
    let noise = Noise::sample(&be, &model, 128, true, &mut stream(1, 2, 0, 0));
    let adam = Default::default();
    let mut g = c.benchmark_group("context_step_b128_baron_mouse");
    g.sample_size(10);
    g.bench_function("upload_batch", |b| b.iter(|| black_box(data.batch(&be, &rows))));
    g.bench_function("forward_with_likelihood_grads", |b| b.iter(|| black_box(model.forward_with(&be, &batch, &noise, true))));
    let f = model.forward_with(&be, &batch, &noise, true);
    g.bench_function("backward", |b| b.iter(|| model.backward(&be, &batch, &noise, &f, 0.5, None)));
    g.bench_function("adam_all_parameters", |b| b.iter(|| model.adam_step(&be, &adam, |_| true)));
    g.bench_function("full_step", |b| {
        b.iter(|| {
            let batch = data.batch(&be, &rows);
            let noise = Noise::sample(&be, &model, 128, true, &mut stream(1, 2, 0, 0));
            let f = model.forward_with(&be, &batch, &noise, true);
            model.backward(&be, &batch, &noise, &f, 0.5, None);
            model.adam_step(&be, &adam, |_| true);
        })
    });
    g.finish();
}

/// The alignment's extra work in a target step on the Baron human shape (2,142 cells x 20,125 genes):
/// the argmax-likelihood choice for 64 aligned cells (top 50 %) among k = 25 context neighbours each.
fn target_candidates(c: &mut Criterion) {
    use scspecies::align::candidates::{Query, choose};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/baron-pancreas");
    let pair = prepare(&demo_like_inputs(&dir), &PreprocessConfig::default(), &scspecies::pipeline::Silent).unwrap();
    let (ctx, tgt) = (&pair.context, &pair.target);
    let be = Cpu::<f32>::new();
    let mut hom = pair.homology.context.clone();
    hom.sort_unstable();
    let ccfg = ModelConfig::scspecies(ctx.data.n_genes(), ctx.n_batches(), hom, ctx.lib_mu_add);
    let cmodel = Model::new(&be, ccfg, &mut stream(1, 0, 0, 0));
    let cdata = TrainData::of(ctx);
    let repr = scspecies::train::represent(&be, &cmodel, &cdata, 1024);
    let mut hom_t = pair.homology.target.clone();
    hom_t.sort_unstable();
    let tcfg = ModelConfig::scspecies(tgt.data.n_genes(), tgt.n_batches(), hom_t, tgt.lib_mu_add);
    let tmodel = Model::new(&be, tcfg, &mut stream(1, 0, 1, 0));
    let (knn, _) =
        scspecies::knn::data_level::cosine_knn(&ctx.data.counts, &pair.homology.context, &tgt.data.counts, &pair.homology.target, 25);
    let queries: Vec<Query> = (0..64)
        .map(|i| {
            let cell = i * 29 % tgt.n_cells();
            Query { cell, batch: tgt.batch[cell], lib: 3000.0, neighbours: &knn[cell * 25..cell * 25 + 25] }
        })
        .collect();
    let mut g = c.benchmark_group("target_step_b128_baron_human");
    g.sample_size(10);
    g.bench_function("candidate_choice_64_cells_k25", |b| {
        b.iter(|| black_box(choose(&be, &tmodel, &repr, &tgt.data.counts, &queries, true, &mut stream(1, 2, 0, 0))))
    });
    g.finish();
}

criterion_group!(benches, train_step, target_candidates);
criterion_main!(benches);
