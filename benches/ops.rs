//! Each backend op at the shapes of the Baron human target (2,142 cells x 20,125 genes, batch 128,
//! candidate chunks of 512 rows), plus the two nearest-neighbour searches. `cargo bench --bench ops`.

use criterion::{Criterion, criterion_group, criterion_main};
use scspecies::engine::backend::HostRows;
use scspecies::engine::likelihood::Distribution;
use scspecies::engine::ops::AdamConfig;
use scspecies::engine::{Backend, Cpu};
use scspecies::pipeline::{demo_like_inputs, prepare};
use scspecies::preprocess::PreprocessConfig;
use std::hint::black_box;
use std::path::Path;

fn vals(n: usize, scale: f64, seed: u64) -> Vec<f64> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * scale
        })
        .collect()
}

fn ops(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/baron-pancreas");
    let pair = prepare(&demo_like_inputs(&dir), &PreprocessConfig::default(), &scspecies::pipeline::Silent).unwrap();
    let tgt = &pair.target;
    let n = tgt.data.n_genes();
    let be = Cpu::<f32>::new();
    let b = 128;
    let rows: Vec<usize> = (0..b).map(|i| i * 13 % tgt.n_cells()).collect();
    let mut g = c.benchmark_group("ops_baron_human");
    g.sample_size(10);

    // Dense layers: the decoder heads [128x300]·[300xN] and a hidden layer [128x200]·[200x300].
    let (x, w, bias) = (be.upload(&vals(b * 300, 1.0, 1)), be.upload(&vals(300 * n, 0.1, 2)), be.upload(&vals(n, 0.1, 3)));
    let mut y = be.zeros(b * n);
    g.bench_function("linear_fwd_decoder_head_128x300xN", |bb| bb.iter(|| be.linear_fwd(&x, &w, &bias, &mut y, b, 300, n)));
    let dy = be.upload(&vals(b * n, 1.0, 4));
    let (mut dx, mut dw, mut db) = (be.zeros(b * 300), be.zeros(300 * n), be.zeros(n));
    g.bench_function("linear_bwd_decoder_head", |bb| bb.iter(|| be.linear_bwd(&x, &w, &dy, Some(&mut dx), &mut dw, &mut db, b, 300, n)));
    let (cx, mut cy) = (be.upload(&vals(512 * 300, 1.0, 5)), be.zeros(512 * n));
    g.bench_function("linear_fwd_candidate_chunk_512x300xN", |bb| bb.iter(|| be.linear_fwd(&cx, &w, &bias, &mut cy, 512, 300, n)));
    // The same in bf16 (the ranking GEMMs' precision), where the CPU has AVX512-BF16.
    if scspecies::engine::precision::set_ranking(scspecies::engine::precision::Precision::Bf16).is_ok() {
        use scspecies::engine::precision::ranking;
        g.bench_function("linear_fwd_candidate_chunk_512x300xN_bf16", |bb| {
            bb.iter(|| ranking(|| be.linear_fwd(&cx, &w, &bias, &mut cy, 512, 300, n)))
        });
        g.bench_function("linear_fwd_decoder_head_128x300xN_bf16", |bb| {
            bb.iter(|| ranking(|| be.linear_fwd(&x, &w, &bias, &mut y, b, 300, n)))
        });
        scspecies::engine::precision::set_ranking(scspecies::engine::precision::Precision::F32).unwrap();
    } else {
        eprintln!("SKIPPED the bf16 GEMM benches: this CPU has no AVX512-BF16");
    }

    // Sparse input layer: raw counts + one-hot batch → 300.
    let h = HostRows::gather(&tgt.data.counts, &rows);
    let s = be.upload_sparse(b, n, h.ptr.clone(), h.idx.clone(), h.val.clone());
    let (w_in, b_in) = (be.upload(&vals(n * 300, 0.05, 6)), be.zeros(300));
    let mut h1 = be.zeros(b * 300);
    g.bench_function("sparse_linear_fwd_input_layer", |bb| bb.iter(|| be.sparse_linear_fwd(&s, &w_in, &b_in, &mut h1, 300)));
    let dh = be.upload(&vals(b * 300, 1.0, 7));
    let (mut dwi, mut dbi) = (be.zeros(n * 300), be.zeros(300));
    g.bench_function("sparse_linear_bwd_input_layer", |bb| bb.iter(|| be.sparse_linear_bwd(&s, &dh, &mut dwi, &mut dbi, 300)));

    // LayerNorm and ReLU/dropout at 128x300.
    let (gamma, beta) = (be.upload(&vec![1.0; 300]), be.zeros(300));
    let (mut ln, mut xhat, mut rstd) = (be.zeros(b * 300), be.zeros(b * 300), be.zeros(b));
    g.bench_function("layernorm_fwd_128x300", |bb| bb.iter(|| be.layernorm_fwd(&x, &gamma, &beta, &mut ln, &mut xhat, &mut rstd, 300)));
    let (mut dln, mut dg, mut dbeta) = (be.zeros(b * 300), be.zeros(300), be.zeros(300));
    g.bench_function("layernorm_bwd_128x300", |bb| {
        bb.iter(|| be.layernorm_bwd(&dh, &xhat, &rstd, &gamma, &mut dln, &mut dg, &mut dbeta, b, 300))
    });
    let mask = be.upload(&vals(b * 300, 1.0, 8).iter().map(|v| if *v > -0.4 { 1.0 / 0.9 } else { 0.0 }).collect::<Vec<_>>());
    let (mut relu, mut out) = (be.zeros(b * 300), be.zeros(b * 300));
    g.bench_function("relu_dropout_fwd_128x300", |bb| bb.iter(|| be.relu_dropout_fwd(&x, Some(&mask), &mut relu, &mut out)));

    // Split softmax and the ZINB likelihood with gradients at 128xN.
    let mut group = vec![1u8; n];
    for &j in &pair.homology.target {
        group[j] = 0;
    }
    let w2 = [0.5, 0.5];
    let mut rho = be.zeros(b * n);
    g.bench_function("split_softmax_fwd_128xN", |bb| bb.iter(|| be.split_softmax_fwd(&y, &group, w2, &mut rho, n)));
    let mut drho = be.upload(&vals(b * n, 1.0, 9));
    g.bench_function("split_softmax_bwd_128xN", |bb| bb.iter(|| be.split_softmax_bwd(&rho, &group, w2, &mut drho, n)));
    let xd = be.upload(&tgt.data.counts.select_rows(&rows).rows_dense(0..b).iter().map(|&v| v as f64).collect::<Vec<_>>());
    let theta = be.upload(&vec![2.0; b * n]);
    let logit = be.upload(&vals(b * n, 4.0, 10));
    let lib = be.upload(&vec![3000.0; b]);
    let mut nll = be.zeros(b);
    let (mut g_rho, mut g_theta, mut g_logit, mut g_lib) = (be.zeros(b * n), be.zeros(b * n), be.zeros(b * n), be.zeros(b));
    g.bench_function("zinb_nll_with_grads_128xN", |bb| {
        bb.iter(|| {
            be.likelihood(
                Distribution::Zinb,
                &xd,
                &rho,
                &theta,
                Some(&logit),
                &lib,
                n,
                1.0 / b as f64,
                &mut nll,
                Some((&mut g_rho, &mut g_theta, Some(&mut g_logit), &mut g_lib)),
            )
        })
    });

    // Candidate scoring (forward only): 512 (cell, candidate) rows against decoded rows.
    let cells: Vec<usize> = (0..512).map(|i| rows[i % b]).collect();
    let mut hr = HostRows::gather(&tgt.data.counts, &cells);
    // The count-only terms are cached per cell in label transfer and shared by a cell's k candidates in
    // the candidate choice: time the per-gene kernel alone.
    hr.count_terms = Some(vec![0.0; 512]);
    let crow: Vec<u32> = (0..512).map(|i| (i % b) as u32).collect();
    let cb = vec![0u32; 512];
    let theta_tab = be.upload(&vec![2.0; tgt.n_batches() * n]);
    let sp = be.softplus(&logit);
    let lib512 = be.upload(&vec![3000.0; 512]);
    let mut s512 = be.zeros(512);
    g.bench_function("candidate_scoring_512xN", |bb| {
        bb.iter(|| be.likelihood_score(Distribution::Zinb, &hr, &crow, &cb, &rho, &theta_tab, Some((&logit, &sp)), &lib512, n, &mut s512))
    });

    // Adam over the decoder head's weights.
    let (mut p, gw, mut m, mut v) =
        (be.upload(&vals(300 * n, 0.1, 11)), be.upload(&vals(300 * n, 0.01, 12)), be.zeros(300 * n), be.zeros(300 * n));
    let cfg = AdamConfig::default();
    g.bench_function("adam_300xN", |bb| bb.iter(|| be.adam(&cfg, 3, &mut p, &gw, &mut m, &mut v)));

    // Nearest neighbours: the data-level cosine kNN (all target cells vs the context, 250 stored) and
    // the latent Euclidean candidates of label transfer.
    let ctx = &pair.context;
    g.bench_function("data_level_cosine_knn_250", |bb| {
        bb.iter(|| {
            black_box(scspecies::knn::data_level::cosine_knn(
                &ctx.data.counts,
                &pair.homology.context,
                &tgt.data.counts,
                &pair.homology.target,
                250,
            ))
        })
    });
    let zc: Vec<f32> = vals(ctx.n_cells() * 10, 2.0, 13).iter().map(|&v| v as f32).collect();
    let zt: Vec<f32> = vals(tgt.n_cells() * 10, 2.0, 14).iter().map(|&v| v as f32).collect();
    g.bench_function("latent_knn_250", |bb| bb.iter(|| black_box(scspecies::knn::latent_knn(&zc, &zt, 10, 250))));
    g.finish();
}

criterion_group!(benches, ops);
criterion_main!(benches);
