//! Finite-difference checks of every hand-derived backward, in f64 (the kernels are generic over the
//! float type), per op with edge values and over random shapes, and for a whole training-step loss.

use proptest::prelude::*;
use scspecies::engine::likelihood::{Distribution, nb, zinb};
use scspecies::engine::ops::{self, SparseBatch};
use scspecies::engine::{Backend, Cpu};
use scspecies::model::{AlignSpace, Batch, InterTarget, Model, ModelConfig, Noise};

/// Deterministic values in [-1, 1).
fn vals(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect()
}

/// Central difference of `f` at coordinate `i` of `x`.
fn fd(f: &dyn Fn(&[f64]) -> f64, x: &[f64], i: usize, h: f64) -> f64 {
    let mut a = x.to_vec();
    a[i] += h;
    let up = f(&a);
    a[i] -= 2.0 * h;
    let down = f(&a);
    (up - down) / (2.0 * h)
}

/// Compare with central differences: step 1e-5·max(|x|, 0.1), error within `tol` relative plus the
/// rounding floor of the difference quotient (1e-9·(1 + |f|)/h).
fn check(what: &str, analytic: &[f64], f: &dyn Fn(&[f64]) -> f64, x: &[f64], tol: f64) {
    let f0 = f(x).abs();
    for i in 0..x.len() {
        let h = 1e-5 * x[i].abs().max(0.1);
        let num = fd(f, x, i, h);
        let err = (num - analytic[i]).abs();
        let floor = 1e-9 * (1.0 + f0) / h;
        assert!(
            err <= tol * num.abs().max(analytic[i].abs()) + floor,
            "{what}[{i}]: analytic {} vs numeric {num} (x = {})",
            analytic[i],
            x[i]
        );
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn linear_dense_and_sparse() {
    let (m, k, n) = (5, 7, 4);
    let (x, w, b, proj) = (vals(m * k, 1), vals(k * n, 2), vals(n, 3), vals(m * n, 4));
    let loss = |x: &[f64], w: &[f64], b: &[f64]| {
        let mut y = vec![0.0; m * n];
        ops::linear_fwd(x, w, b, &mut y, m, k, n);
        dot(&y, &proj)
    };
    let (mut dx, mut dw, mut db) = (vec![0.0; m * k], vec![0.0; k * n], vec![0.0; n]);
    ops::linear_bwd(&x, &w, &proj, Some(&mut dx), &mut dw, &mut db, m, k, n);
    check("dx", &dx, &|v| loss(v, &w, &b), &x, 1e-7);
    check("dw", &dw, &|v| loss(&x, v, &b), &w, 1e-7);
    check("db", &db, &|v| loss(&x, &w, v), &b, 1e-7);
    // Sparse: a matrix with zeros and counts up to 10,000.
    let mut dense = vals(m * k, 5);
    for (i, v) in dense.iter_mut().enumerate() {
        *v = if i % 3 == 0 { (v.abs() * 10_000.0).round() } else { 0.0 };
    }
    let (mut ip, mut idx, mut val) = (vec![0], vec![], vec![]);
    for r in 0..m {
        for c in 0..k {
            if dense[r * k + c] != 0.0 {
                idx.push(c as u32);
                val.push(dense[r * k + c]);
            }
        }
        ip.push(idx.len());
    }
    let sp = SparseBatch::new(m, k, ip, idx, val);
    let sloss = |w: &[f64], b: &[f64]| {
        let mut y = vec![0.0; m * n];
        ops::sparse_linear_fwd(&sp, w, b, &mut y, n);
        dot(&y, &proj)
    };
    let (mut dw, mut db) = (vec![0.0; k * n], vec![0.0; n]);
    ops::sparse_linear_bwd(&sp, &proj, &mut dw, &mut db, n);
    check("sparse dw", &dw, &|v| sloss(v, &b), &w, 1e-7);
    check("sparse db", &db, &|v| sloss(&w, v), &b, 1e-7);
    // Sparse forward equals the dense one.
    let (mut y1, mut y2) = (vec![0.0; m * n], vec![0.0; m * n]);
    ops::sparse_linear_fwd(&sp, &w, &b, &mut y1, n);
    ops::linear_fwd(&dense, &w, &b, &mut y2, m, k, n);
    for (a, c) in y1.iter().zip(&y2) {
        assert!((a - c).abs() <= 1e-9 * c.abs().max(1.0));
    }
}

fn layernorm_case(m: usize, d: usize, seed: u64, scale: f64) {
    let x: Vec<f64> = vals(m * d, seed).iter().map(|v| v * scale).collect();
    let (g, b, proj) = (vals(d, seed + 1), vals(d, seed + 2), vals(m * d, seed + 3));
    let loss = |x: &[f64], g: &[f64], b: &[f64]| {
        let (mut y, mut h, mut r) = (vec![0.0; m * d], vec![0.0; m * d], vec![0.0; m]);
        ops::layernorm_fwd(x, g, b, &mut y, &mut h, &mut r, d);
        dot(&y, &proj)
    };
    let (mut y, mut h, mut r) = (vec![0.0; m * d], vec![0.0; m * d], vec![0.0; m]);
    ops::layernorm_fwd(&x, &g, &b, &mut y, &mut h, &mut r, d);
    let (mut dx, mut dg, mut db) = (vec![0.0; m * d], vec![0.0; d], vec![0.0; d]);
    ops::layernorm_bwd(&proj, &h, &r, &g, &mut dx, &mut dg, &mut db, m, d);
    check("ln dx", &dx, &|v| loss(v, &g, &b), &x, 1e-6);
    check("ln dgamma", &dg, &|v| loss(&x, v, &b), &g, 1e-6);
    check("ln dbeta", &db, &|v| loss(&x, &g, v), &b, 1e-6);
}

#[test]
fn layernorm_including_raw_count_scale() {
    layernorm_case(4, 9, 10, 1.0);
    layernorm_case(3, 6, 11, 5000.0); // raw counts reach the first LayerNorm unnormalised
}

#[test]
fn relu_dropout() {
    let n = 40;
    // Keep away from the kink at 0.
    let x: Vec<f64> = vals(n, 20).iter().map(|v| if v.abs() < 0.05 { 0.3 } else { *v }).collect();
    let mask: Vec<f64> = vals(n, 21).iter().map(|v| if *v < 0.8 { 1.0 / 0.9 } else { 0.0 }).collect();
    let proj = vals(n, 22);
    let loss = |x: &[f64]| {
        let (mut r, mut y) = (vec![0.0; n], vec![0.0; n]);
        ops::relu_dropout_fwd(x, Some(&mask), &mut r, &mut y);
        dot(&y, &proj)
    };
    let (mut r, mut y, mut dx) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    ops::relu_dropout_fwd(&x, Some(&mask), &mut r, &mut y);
    ops::relu_dropout_bwd(&proj, &r, Some(&mask), &mut dx);
    check("relu/dropout dx", &dx, &loss, &x, 1e-8);
}

fn split_softmax_case(rows: usize, n: usize, seed: u64) {
    let r: Vec<f64> = vals(rows * n, seed).iter().map(|v| v * 4.0).collect();
    let group: Vec<u8> = (0..n).map(|g| (g * 7 + seed as usize).is_multiple_of(3) as u8).collect();
    let nh = group.iter().filter(|&&g| g == 0).count() as f64;
    let w = [nh / n as f64, 1.0 - nh / n as f64];
    let proj = vals(rows * n, seed + 1);
    let loss = |r: &[f64]| {
        let mut rho = vec![0.0; rows * n];
        ops::split_softmax_fwd(r, &group, w, &mut rho, n);
        dot(&rho, &proj)
    };
    let mut rho = vec![0.0; rows * n];
    ops::split_softmax_fwd(&r, &group, w, &mut rho, n);
    for i in 0..rows {
        let s: f64 = rho[i * n..(i + 1) * n].iter().sum();
        assert!((s - 1.0).abs() < 1e-12, "row sums to {s}");
    }
    let mut d = proj.clone();
    ops::split_softmax_bwd(&rho, &group, w, &mut d, n);
    check("split softmax dr", &d, &loss, &r, 1e-6);
}

#[test]
fn split_softmax() {
    split_softmax_case(3, 11, 30);
    split_softmax_case(2, 5, 31);
}

/// Central difference with one Richardson step; evaluation noise of ~1e-11·|f| (sums of lgamma
/// and log terms of magnitude up to 1e5) sets the absolute floor in the checks below.
/// (removes the h² term: the likelihood's third
/// derivative in ρ scales with l³, which a plain difference does not survive at l = 1e5).
fn richardson(f: &dyn Fn(f64) -> f64, at: f64, h: f64) -> f64 {
    let d = |h: f64| (f(at + h) - f(at - h)) / (2.0 * h);
    (4.0 * d(h / 2.0) - d(h)) / 3.0
}

/// (name, analytic derivative, point, function of that coordinate)
type Check<'a> = (&'static str, f64, f64, &'a dyn Fn(f64) -> f64);

/// ZINB/NB gradients at the edges named by the issue.
#[test]
fn likelihood_edge_values() {
    let xs = [0.0, 1.0, 3.0, 10_000.0];
    let thetas = [2e-7, 1e-3, 1.0, 50.0, 1e4];
    let rhos = [2e-8, 1e-5, 0.01, 0.3];
    let libs = [50.0, 3000.0, 1e5];
    let logits = [-25.0, -1.0, 0.0, 2.0, 25.0];
    let mut n = 0;
    for &x in &xs {
        for &t in &thetas {
            for &r in &rhos {
                for &l in &libs {
                    for &s in &logits {
                        let z = zinb(x, t, r, l, s);
                        // A relative step: θ and ρ sit right above their clamps.
                        let rel = |v: f64| 1e-4 * v.abs();
                        let checks: [Check; 4] = [
                            ("theta", z.d_theta, t, &|v| zinb(x, v, r, l, s).ll),
                            ("rho", z.d_rho, r, &|v| zinb(x, t, v, l, s).ll),
                            ("lib", z.d_lib, l, &|v| zinb(x, t, r, v, s).ll),
                            ("logit", z.d_logit, s, &|v| zinb(x, t, r, l, v).ll),
                        ];
                        for (what, a, at, f) in checks {
                            let h = if at == 0.0 { 1e-4 } else { rel(at) };
                            let num = richardson(f, at, h);
                            let floor = 1e-11 * (1.0 + f(at).abs() + at.abs()) / h;
                            assert!(
                                (num - a).abs() <= 2e-4 * num.abs().max(a.abs()) + floor,
                                "zinb d{what} at x={x} θ={t} ρ={r} l={l} s={s}: {a} vs {num}"
                            );
                        }
                        let b = nb(x, t, r, l);
                        let checks: [Check; 3] = [
                            ("theta", b.d_theta, t, &|v| nb(x, v, r, l).ll),
                            ("rho", b.d_rho, r, &|v| nb(x, t, v, l).ll),
                            ("lib", b.d_lib, l, &|v| nb(x, t, r, v).ll),
                        ];
                        for (what, a, at, f) in checks {
                            let h = if at == 0.0 { 1e-4 } else { rel(at) };
                            let num = richardson(f, at, h);
                            let floor = 1e-11 * (1.0 + f(at).abs() + at.abs()) / h;
                            assert!(
                                (num - a).abs() <= 2e-4 * num.abs().max(a.abs()) + floor,
                                "nb d{what} at x={x} θ={t} ρ={r} l={l}: {a} vs {num}"
                            );
                        }
                        assert!(z.ll.is_finite() && b.ll.is_finite());
                        n += 1;
                    }
                }
            }
        }
    }
    assert_eq!(n, 4 * 5 * 4 * 3 * 5);
    // Under the clamps the gradient is exactly zero.
    assert_eq!(zinb(3.0, 1e-9, 0.1, 100.0, 0.0).d_theta, 0.0);
    assert_eq!(zinb(3.0, 1.0, 1e-12, 100.0, 0.0).d_rho, 0.0);
}

#[test]
fn batch_likelihood_kernel_matches_per_element_terms() {
    let (rows, n) = (3, 6);
    let x: Vec<f64> = (0..rows * n).map(|i| [0.0, 2.0, 0.0, 15.0, 0.0, 1.0][i % 6]).collect();
    let rho: Vec<f64> = vals(rows * n, 40).iter().map(|v| (v.abs() + 0.05) / 6.0).collect();
    let theta: Vec<f64> = vals(rows * n, 41).iter().map(|v| v.abs() * 3.0 + 0.1).collect();
    let s = vals(rows * n, 42);
    let lib = vec![100.0, 2000.0, 50.0];
    let mut nll = vec![0.0; rows];
    let (mut dr, mut dt, mut ds, mut dl) = (vec![0.0; rows * n], vec![0.0; rows * n], vec![0.0; rows * n], vec![0.0; rows]);
    ops::likelihood(
        Distribution::Zinb,
        &x,
        &rho,
        &theta,
        Some(&s),
        &lib,
        n,
        1.0 / rows as f64,
        &mut nll,
        Some(ops::LikelihoodGrads { d_rho: &mut dr, d_theta: &mut dt, d_logit: Some(&mut ds), d_lib: &mut dl }),
    );
    let total = |rho: &[f64], theta: &[f64], s: &[f64], lib: &[f64]| {
        let mut out = vec![0.0; rows];
        ops::likelihood(Distribution::Zinb, &x, rho, theta, Some(s), lib, n, 1.0, &mut out, None);
        out.iter().sum::<f64>() / rows as f64
    };
    check("batch drho", &dr, &|v| total(v, &theta, &s, &lib), &rho, 1e-6);
    check("batch dtheta", &dt, &|v| total(&rho, v, &s, &lib), &theta, 1e-6);
    check("batch dlogit", &ds, &|v| total(&rho, &theta, v, &lib), &s, 1e-6);
    check("batch dlib", &dl, &|v| total(&rho, &theta, &s, v), &lib, 1e-6);
}

#[test]
fn kl_terms_and_reparameterisation() {
    let (rows, l) = (4, 3);
    let mu = vals(rows * l, 50);
    let ls = vals(rows * l, 51);
    let klsum = |mu: &[f64], ls: &[f64]| {
        let mut k = vec![0.0; rows];
        ops::kl_normal_fwd_bwd(mu, ls, l, &mut k, None);
        k.iter().sum::<f64>() * 0.5
    };
    let (mut k, mut dm, mut dl) = (vec![0.0; rows], vec![0.0; rows * l], vec![0.0; rows * l]);
    ops::kl_normal_fwd_bwd(&mu, &ls, l, &mut k, Some((0.5, &mut dm, &mut dl)));
    check("kl_z dmu", &dm, &|v| klsum(v, &ls), &mu, 1e-7);
    check("kl_z dls", &dl, &|v| klsum(&mu, v), &ls, 1e-7);
    // Library KL against a per-cell prior, including a tiny prior std (the 1e-7 floor in the denominator).
    let m: Vec<f64> = vals(rows, 52).iter().map(|v| 8.0 + v).collect();
    let lsl = vals(rows, 53);
    let pm = vec![8.2, 7.9, 8.5, 8.0];
    let ps = vec![0.5, 0.3, 1e-4, 0.8];
    let kll = |m: &[f64], ls: &[f64]| {
        let mut k = vec![0.0; rows];
        ops::kl_library_fwd_bwd(m, ls, &pm, &ps, &mut k, None);
        k.iter().sum::<f64>()
    };
    let (mut dm, mut dl) = (vec![0.0; rows], vec![0.0; rows]);
    ops::kl_library_fwd_bwd(&m, &lsl, &pm, &ps, &mut k, Some((1.0, &mut dm, &mut dl)));
    check("kl_l dm", &dm, &|v| kll(v, &lsl), &m, 1e-6);
    check("kl_l dls", &dl, &|v| kll(&m, v), &lsl, 1e-6);
    // z = μ + e^{ls}ε
    let eps = vals(rows * l, 54);
    let proj = vals(rows * l, 55);
    let zl = |mu: &[f64], ls: &[f64]| {
        let mut z = vec![0.0; rows * l];
        ops::reparam_fwd(mu, ls, &eps, &mut z);
        dot(&z, &proj)
    };
    let (mut dm, mut dl) = (vec![0.0; rows * l], vec![0.0; rows * l]);
    ops::reparam_bwd(&proj, &ls, &eps, &mut dm, &mut dl);
    check("reparam dmu", &dm, &|v| zl(v, &ls), &mu, 1e-8);
    check("reparam dls", &dl, &|v| zl(&mu, v), &ls, 1e-8);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn shapes_layernorm(m in 1usize..5, d in 2usize..12, seed in 0u64..1000) {
        layernorm_case(m, d, seed, 1.0);
    }
    #[test]
    fn shapes_split_softmax(rows in 1usize..4, n in 2usize..14, seed in 0u64..1000) {
        split_softmax_case(rows, n, seed);
    }
    #[test]
    fn shapes_linear(m in 1usize..70, k in 1usize..9, n in 1usize..6, seed in 0u64..1000) {
        // m up to 70 exercises the parallel row bands of the GEMM.
        let (x, w, b, proj) = (vals(m * k, seed), vals(k * n, seed + 1), vals(n, seed + 2), vals(m * n, seed + 3));
        let loss = |x: &[f64], w: &[f64]| { let mut y = vec![0.0; m * n]; ops::linear_fwd(x, w, &b, &mut y, m, k, n); dot(&y, &proj) };
        let (mut dx, mut dw, mut db) = (vec![0.0; m * k], vec![0.0; k * n], vec![0.0; n]);
        ops::linear_bwd(&x, &w, &proj, Some(&mut dx), &mut dw, &mut db, m, k, n);
        check("dx", &dx, &|v| loss(v, &w), &x, 1e-7);
        check("dw", &dw, &|v| loss(&x, v), &w, 1e-7);
    }
}

/// The whole training-step loss (train mode: dropout masks, sampled z and library, alignment term)
/// against finite differences of every parameter, on a small model in f64.
fn whole_model(dist: Distribution, space: AlignSpace) {
    let be = Cpu::<f64>::new();
    let (rows, n, s) = (6, 9, 2);
    let cfg = ModelConfig {
        n_genes: n,
        n_batches: s,
        outer_dims: vec![7],
        inner_dims: vec![5],
        latent: 3,
        library_dims: vec![4],
        decoder_dims: vec![5, 6],
        distribution: dist,
        dropout: 0.1,
        lib_mu_add: 3.0,
        homologous: vec![0, 2, 3, 7],
    };
    let mut rng = <rand::rngs::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(7);
    let mut model = Model::new(&be, cfg, &mut rng);
    let counts = [0.0, 3.0, 0.0, 1.0, 0.0, 0.0, 12.0, 0.0, 2.0];
    let (mut ip, mut genes, mut vv) = (vec![0], vec![], vec![]);
    for r in 0..rows {
        for g in 0..n {
            let c = counts[(g + r * 2) % n];
            if c != 0.0 {
                genes.push(g as u32);
                vv.push(c as f32);
            }
        }
        ip.push(genes.len());
    }
    let batch: Vec<u32> = (0..rows as u32).map(|r| r % 2).collect();
    let b = Batch::new(&be, n, s, &ip, &genes, &vv, batch, &[3.0, 2.5, 3.0, 2.5, 3.0, 2.5], &[0.5, 0.4, 0.5, 0.4, 0.5, 0.4]);
    let noise = Noise::sample(&be, &model, rows, true, &mut rng);
    let (beta, eta) = (0.6, 2.0);
    let aligned = vec![1usize, 4];
    let t_dim = if space == AlignSpace::Latent { 3 } else { 7 };
    let targets = vec![vals(t_dim, 60), vals(t_dim, 61)];
    let t = match space {
        AlignSpace::Inter => InterTarget::<Cpu<f64>>::new(&aligned, &targets, eta),
        AlignSpace::Latent => InterTarget::<Cpu<f64>>::latent(&aligned, &targets, eta),
    };
    assert!(model.losses(&be, &model.forward(&be, &b, &noise), Some(&t)).align > 0.0);
    let loss = |m: &Model<Cpu<f64>>| {
        let f = m.forward(&be, &b, &noise);
        m.losses(&be, &f, Some(&t)).total(beta, eta)
    };
    let f = model.forward(&be, &b, &noise);
    model.backward(&be, &b, &noise, &f, beta, Some(&t));
    let l0 = loss(&model);
    let mut checked = 0;
    for i in 0..model.params.len() {
        let g = be.download(&model.grads[i]);
        let v0 = be.download(&model.params[i].value);
        // Up to 6 entries per parameter, spread over it.
        let step = (v0.len() / 6).max(1);
        for j in (0..v0.len()).step_by(step).take(6) {
            let h = 1e-5 * v0[j].abs().max(0.1);
            let mut v = v0.clone();
            v[j] += h;
            model.params[i].value = be.upload(&v);
            let up = loss(&model);
            v[j] -= 2.0 * h;
            model.params[i].value = be.upload(&v);
            let down = loss(&model);
            model.params[i].value = be.upload(&v0);
            let num = (up - down) / (2.0 * h);
            // Relative 1e-5, plus the rounding floor of the quotient (loss ~ 1e2, summed in f64).
            let floor = 1e-12 * (1.0 + l0.abs()) / h;
            assert!(
                (num - g[j]).abs() <= 1e-5 * num.abs().max(g[j].abs()) + floor,
                "{:?} {:?} {}[{j}]: analytic {} vs numeric {num}",
                dist,
                space,
                model.params[i].name,
                g[j]
            );
            checked += 1;
        }
    }
    assert!(checked > 100, "{checked}");
}

#[test]
fn whole_training_step_loss_zinb() {
    whole_model(Distribution::Zinb, AlignSpace::Inter);
}

#[test]
fn whole_training_step_loss_nb() {
    whole_model(Distribution::Nb, AlignSpace::Inter);
}

/// The latent-space alignment term (η·mean_S ‖z − z̃‖² on the sampled z) through the reparameterisation
/// into the inner encoder and below.
#[test]
fn whole_training_step_loss_latent_alignment() {
    whole_model(Distribution::Zinb, AlignSpace::Latent);
    whole_model(Distribution::Nb, AlignSpace::Latent);
}

/// The f32 training kernel (vectorised fast math, counts over 16 in f64) against the f64 kernel, over realistic rows and the edge values: zeros, huge counts, tiny and huge θ, ρ at
/// and under its clamp, logits at ±25, libraries from 50 to 1e5.
#[test]
fn f32_zinb_kernel_matches_f64() {
    let n = 97; // not a multiple of the vector width
    let rows = 8;
    let mut x = Vec::new();
    let (mut rho, mut theta, mut s) = (Vec::new(), Vec::new(), Vec::new());
    let v = vals(rows * n * 4, 77);
    for i in 0..rows * n {
        let u = |k: usize| v[(4 * i + k) % v.len()].abs();
        x.push(match i % 9 {
            0 => 1.0,
            1 => 7.0,
            2 => [0.0, 10_000.0][i % 2],
            // Every count of the f32 path (1..=16) and beyond it (17, 2.5: the f64 path).
            3 => [(i % 17) as f64, 17.0, 2.5][i % 3],
            _ => 0.0,
        });
        rho.push(match i % 11 {
            0 => 1e-12,
            1 => 0.5,
            _ => (u(1) + 1e-3) / n as f64,
        });
        theta.push(match i % 13 {
            0 => 1e-9,
            1 => 1e4,
            _ => u(2) * 5.0 + 0.05,
        });
        s.push(match i % 7 {
            0 => 25.0,
            1 => -25.0,
            _ => (u(3) - 0.5) * 8.0,
        });
    }
    let lib: Vec<f64> = (0..rows).map(|r| [50.0, 1e5, 3000.0, 800.0][r % 4]).collect();
    let run32 = || {
        let f = |a: &[f64]| a.iter().map(|&v| v as f32).collect::<Vec<f32>>();
        let (mut nll, mut dr, mut dt, mut ds, mut dl) =
            (vec![0f32; rows], vec![0f32; rows * n], vec![0f32; rows * n], vec![0f32; rows * n], vec![0f32; rows]);
        ops::likelihood(
            Distribution::Zinb,
            &f(&x),
            &f(&rho),
            &f(&theta),
            Some(&f(&s)),
            &f(&lib),
            n,
            0.125,
            &mut nll,
            Some(ops::LikelihoodGrads { d_rho: &mut dr, d_theta: &mut dt, d_logit: Some(&mut ds), d_lib: &mut dl }),
        );
        let d = |a: Vec<f32>| a.into_iter().map(|v| v as f64).collect::<Vec<f64>>();
        (d(nll), d(dr), d(dt), d(ds), d(dl))
    };
    // The f64 reference sees the same (f32-rounded) inputs.
    let r = |a: &[f64]| a.iter().map(|&v| v as f32 as f64).collect::<Vec<f64>>();
    let (x64, rho64, th64, s64, lib64) = (r(&x), r(&rho), r(&theta), r(&s), r(&lib));
    let (mut nll, mut dr, mut dt, mut ds, mut dl) =
        (vec![0.0; rows], vec![0.0; rows * n], vec![0.0; rows * n], vec![0.0; rows * n], vec![0.0; rows]);
    ops::likelihood(
        Distribution::Zinb,
        &x64,
        &rho64,
        &th64,
        Some(&s64),
        &lib64,
        n,
        0.125,
        &mut nll,
        Some(ops::LikelihoodGrads { d_rho: &mut dr, d_theta: &mut dt, d_logit: Some(&mut ds), d_lib: &mut dl }),
    );
    let (nll32, dr32, dt32, ds32, dl32) = run32();
    let cmp = |what: &str, got: &[f64], want: &[f64], rel: f64, abs: f64| {
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= abs + rel * w.abs(), "{what}[{i}]: f32 {g:e}, f64 {w:e}");
        }
    };
    cmp("nll", &nll32, &nll, 1e-5, 1e-3);
    cmp("d_rho", &dr32, &dr, 1e-3, 1e-5);
    cmp("d_theta", &dt32, &dt, 1e-3, 1e-5);
    cmp("d_logit", &ds32, &ds, 1e-3, 1e-5);
    cmp("d_lib", &dl32, &dl, 1e-3, 1e-5);
}
