//! LRP and DGE building blocks against hand-computed values, and the LRP forward path against the
//! model's own encoder.

use approx::assert_abs_diff_eq;
use scspecies::analysis::dge::{chi2_quantile, data_lfc, mahalanobis_sq, pearson, ranks, spearman};
use scspecies::analysis::lrp::{EncoderWeights, gamma_rule};
use scspecies::engine::{Backend, Cpu};
use scspecies::model::{Batch, Model, ModelConfig};

#[test]
fn gamma_rule_by_hand() {
    // a = (1, 2), w = (1, -1)ᵀ, b = 0, γ = 0.25: w' = (1.25, -1), contributions (1.25, -2), denominator
    // -0.75, so R = (1.25, -2) / -0.75 · 1 = (-5/3, 8/3), which sums to R_out = 1.
    let r = gamma_rule(&[1.0, 2.0], &[1.0, -1.0], &[0.0], 1, &[1.0], 0.25);
    assert_abs_diff_eq!(r[0], -5.0 / 3.0, epsilon = 1e-12);
    assert_abs_diff_eq!(r[1], 8.0 / 3.0, epsilon = 1e-12);
    // A bias takes its share: b = 0.75 → denominator 0 + ... = (1.25 - 2 + 0.75·1.25) = 0.1875.
    let r = gamma_rule(&[1.0, 2.0], &[1.0, -1.0], &[0.75], 1, &[1.0], 0.25);
    assert_abs_diff_eq!(r[0], 1.25 / 0.1875, epsilon = 1e-12);
    assert_abs_diff_eq!(r[1], -2.0 / 0.1875, epsilon = 1e-12);
    // Inactive inputs get nothing; γ = 0 is the plain z-rule.
    let r = gamma_rule(&[0.0, 3.0], &[5.0, 2.0], &[0.0], 1, &[6.0], 0.0);
    assert_eq!(r, vec![0.0, 6.0]);
}

fn small_model(be: &Cpu<f64>, zero_biases: bool) -> Model<Cpu<f64>> {
    use rand::SeedableRng;
    let mut cfg = ModelConfig::scspecies(7, 2, vec![0, 2, 4], 1.0);
    cfg.outer_dims = vec![6];
    cfg.inner_dims = vec![5];
    cfg.latent = 3;
    cfg.library_dims = vec![4];
    cfg.decoder_dims = vec![4, 5];
    let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(11);
    let mut m = Model::new(be, cfg, &mut rng);
    for p in m.params.iter_mut() {
        if p.name.ends_with(".bias") {
            let n = be.len(&p.value);
            let v: Vec<f64> = if zero_biases { vec![0.0; n] } else { (0..n).map(|i| 0.3 * ((i % 3) as f64 - 1.0)).collect() };
            p.value = be.upload(&v);
        } else if p.name.ends_with(".weight") && p.torch_shape.len() == 1 {
            // LayerNorm γ away from 1, to exercise the fold.
            let n = be.len(&p.value);
            p.value = be.upload(&(0..n).map(|i| 0.5 + 0.25 * i as f64).collect::<Vec<_>>());
        }
    }
    m
}

#[test]
fn lrp_forward_matches_the_encoder_and_only_expressed_inputs_are_relevant() {
    let be = Cpu::<f64>::new();
    let genes = [0u32, 2, 3, 6];
    let values = [4.0f32, 1.0, 9.0, 2.0];
    for zero in [true, false] {
        let m = small_model(&be, zero);
        let w = EncoderWeights::from_model(&be, &m);
        let (r, z) = w.relevance(&genes, &values, 1, 0.25);
        let batch = Batch::new(&be, 7, 2, &[0, 4], &genes, &values, vec![1], &[1.0], &[1.0]);
        let z_model = be.download(&m.encode(&be, &batch).z_mu);
        for (a, b) in z.iter().zip(&z_model) {
            assert_abs_diff_eq!(*a, *b, epsilon = 1e-10);
        }
        // Only expressed genes and the cell's batch input can be relevant.
        for (j, v) in r.iter().enumerate() {
            if !(genes.contains(&(j as u32)) || j == 7 + 1) {
                assert_eq!(*v, 0.0, "input {j}");
            }
        }
    }
}

#[test]
fn gamma_rule_conserves_relevance_through_bias_free_layers() {
    // Two bias-free layers with non-negative activations: the total is conserved exactly.
    let a = [1.0, 0.5, 2.0];
    let w1 = [0.3, -0.2, 0.8, 0.1, -0.5, 0.4]; // 3×2
    let h: Vec<f64> = (0..2).map(|q| (0..3).map(|j| a[j] * w1[j * 2 + q]).sum::<f64>().max(0.0)).collect();
    let w2 = [0.7, -1.1]; // 2×1
    let z: f64 = h.iter().zip(&w2).map(|(x, y)| x * y).sum();
    let r_h = gamma_rule(&h, &w2, &[0.0], 1, &[z.abs()], 0.25);
    let r_a = gamma_rule(&a, &w1, &[0.0, 0.0], 2, &r_h, 0.25);
    assert_abs_diff_eq!(r_h.iter().sum::<f64>(), z.abs(), epsilon = 1e-12);
    // Units with h = 0 pass nothing down; the rest is conserved.
    let kept: f64 = (0..2).filter(|&q| h[q] > 0.0).map(|q| r_h[q]).sum();
    assert_abs_diff_eq!(r_a.iter().sum::<f64>(), kept, epsilon = 1e-12);
}

#[test]
fn mahalanobis_and_chi2_quantile() {
    // (±1, 0), (0, ±1): mean 0, covariance diag(2/3, 2/3) (ddof 1) → squared distance 1.5 each.
    let x = [1.0, 0.0, -1.0, 0.0, 0.0, 1.0, 0.0, -1.0];
    for v in mahalanobis_sq(&x, 2).unwrap() {
        assert_abs_diff_eq!(v, 1.5, epsilon = 1e-12);
    }
    // Too few cells for a covariance, or a degenerate one: no filter.
    assert!(mahalanobis_sq(&x[..6], 2).is_none());
    assert!(mahalanobis_sq(&[1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0], 2).is_none());
    // scipy.stats.chi2.ppf(0.9, 10) = 15.987179172105261
    assert_abs_diff_eq!(chi2_quantile(0.9, 10.0), 15.987179172105261, epsilon = 1e-8);
}

#[test]
fn correlations_and_ranks() {
    assert_eq!(ranks(&[1.0, 2.0, 2.0, 3.0]), vec![1.0, 2.5, 2.5, 4.0]);
    assert_abs_diff_eq!(pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]), 1.0, epsilon = 1e-12);
    // Monotone but not linear: Spearman 1, Pearson below 1.
    let (a, b) = ([1.0, 2.0, 3.0, 4.0], [1.0, 10.0, 100.0, 1000.0]);
    assert_abs_diff_eq!(spearman(&a, &b), 1.0, epsilon = 1e-12);
    assert!(pearson(&a, &b) < 0.9);
    assert_abs_diff_eq!(spearman(&a, &[4.0, 3.0, 2.0, 1.0]), -1.0, epsilon = 1e-12);
}

#[test]
fn data_level_lfc_by_hand() {
    use scspecies::data::Csr;
    // Context: 2 cells x 3 genes; target: 2 cells x 2 genes. Homologous pairs: ctx 2 ↔ tgt 0, ctx 0 ↔ tgt 1.
    let ctx = Csr::from_dense(2, 3, &[1.0, 0.0, 3.0, 1.0, 5.0, 1.0]);
    let tgt = Csr::from_dense(2, 2, &[7.0, 0.0, 7.0, 2.0]);
    let l = data_lfc(&ctx, &[0, 1], &[2, 0], &tgt, &[0, 1], &[0, 1]);
    // pair 0: log2(7 + 1) − log2(2 + 1); pair 1: log2(1 + 1) − log2(1 + 1) = 0.
    assert_abs_diff_eq!(l[0], 3.0 - 3f64.log2(), epsilon = 1e-12);
    assert_abs_diff_eq!(l[1], 0.0, epsilon = 1e-12);
}
