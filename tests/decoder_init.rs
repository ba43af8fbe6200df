//! `--target-decoder-init context`: the target decoder copied from the context decoder along the
//! homologous genes decodes any latent to the context's profile on those genes, and its other genes
//! start independent of the latent.

use scspecies::engine::likelihood::Distribution;
use scspecies::engine::{Backend, Cpu};
use scspecies::model::{Model, ModelConfig};

fn cfg(n: usize, s: usize, homologous: Vec<usize>) -> ModelConfig {
    ModelConfig {
        n_genes: n,
        n_batches: s,
        outer_dims: vec![8],
        inner_dims: vec![6],
        latent: 3,
        library_dims: vec![5],
        decoder_dims: vec![6, 8],
        distribution: Distribution::Zinb,
        dropout: 0.1,
        lib_mu_add: 5.0,
        homologous,
    }
}

fn rng(seed: u64) -> rand::rngs::ChaCha8Rng {
    <rand::rngs::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed)
}

/// Context genes 0..15 pair with target genes 24..10 (reversed, so a copy along the wrong axis fails).
fn pairs() -> Vec<(usize, usize)> {
    (0..15).map(|i| (i, 24 - i)).collect()
}

#[test]
fn copied_decoder_reproduces_the_context_profile_on_homologous_genes() {
    let be = Cpu::<f64>::new();
    let (nc, nt) = (30, 25);
    let ctx = Model::new(&be, cfg(nc, 1, (0..15).collect()), &mut rng(1));
    let mut tgt = Model::new(&be, cfg(nt, 3, (10..25).collect()), &mut rng(2));
    assert_eq!(tgt.init_decoder_from(&be, &ctx, &pairs()), 15);
    let z: Vec<f64> = vec![0.3, -1.2, 0.7, -0.5, 2.0, 0.1];
    let zb = be.upload(&z);
    let (rc, pc) = ctx.decode(&be, &zb, 0, 2);
    let (rc, pc) = (be.download(&rc), be.download(&pc.unwrap()));
    let (wc, wt) = (ctx.group_weight[0], tgt.group_weight[0]);
    let theta_c = be.download(&ctx.theta_table(&be));
    let theta_t = be.download(&tgt.theta_table(&be));
    for batch in 0..3u32 {
        let (rt, pt) = tgt.decode(&be, &zb, batch, 2);
        let (rt, pt) = (be.download(&rt), be.download(&pt.unwrap()));
        for row in 0..2 {
            for &(gc, gt) in &pairs() {
                let (a, b) = (rc[row * nc + gc] / wc, rt[row * nt + gt] / wt);
                assert!((a - b).abs() <= 1e-12 * a.abs().max(1e-300), "ρ gene {gc}->{gt} batch {batch}: {a} vs {b}");
                assert!((pc[row * nc + gc] - pt[row * nt + gt]).abs() < 1e-12, "π logit gene {gc}->{gt}");
                assert!((theta_c[gc] - theta_t[batch as usize * nt + gt]).abs() < 1e-12, "θ gene {gc}->{gt}");
            }
        }
        // Non-homologous target genes (0..10): the same profile for both latents.
        for g in 0..10 {
            assert!((rt[g] - rt[nt + g]).abs() < 1e-15 && (pt[g] - pt[nt + g]).abs() < 1e-15, "gene {g} depends on z");
        }
        // ...while the homologous ones do depend on z (the latents differ).
        assert!((0..15).any(|i| (rt[24 - i] - rt[nt + 24 - i]).abs() > 1e-6));
    }
}

#[test]
fn target_batch_columns_get_the_mean_context_batch() {
    let be = Cpu::<f64>::new();
    let ctx = Model::new(&be, cfg(30, 2, (0..15).collect()), &mut rng(4));
    let mut tgt = Model::new(&be, cfg(25, 3, (10..25).collect()), &mut rng(5));
    tgt.init_decoder_from(&be, &ctx, &pairs());
    let wc = ctx.get_torch(&be, ctx.decoder[0].lin.w); // [6 × (3 + 2)]
    let wt = tgt.get_torch(&be, tgt.decoder[0].lin.w); // [6 × (3 + 3)]
    for o in 0..6 {
        assert_eq!(&wt[o * 6..o * 6 + 3], &wc[o * 5..o * 5 + 3], "latent columns of row {o}");
        let mean = (wc[o * 5 + 3] + wc[o * 5 + 4]) / 2.0;
        for b in 0..3 {
            assert!((wt[o * 6 + 3 + b] - mean).abs() < 1e-15, "batch column {b} of row {o}");
        }
    }
    let (lc, lt) = (ctx.get_torch(&be, ctx.log_alpha), tgt.get_torch(&be, tgt.log_alpha));
    for &(gc, gt) in &pairs() {
        for b in 0..3 {
            assert!((lt[b * 25 + gt] - (lc[gc] + lc[30 + gc]) / 2.0).abs() < 1e-15);
        }
    }
    // The rest of the target model (encoders) is untouched: its outer encoder differs from a copy.
    let fresh = Model::new(&be, cfg(25, 3, (10..25).collect()), &mut rng(5));
    let i = tgt.param_index("outer.model.0.weight").unwrap();
    assert_eq!(tgt.get_torch(&be, i), fresh.get_torch(&be, i));
}
