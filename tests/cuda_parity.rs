//! CUDA backend against the CPU backend: every op of the interface, a whole training step, the
//! candidate choice, label-transfer similarities, the data-level kNN's device screen, device failures
//! as errors, and a short pipeline, each within a stated tolerance.
//!
//! Where it runs: on a GPU; or, with `SCSPECIES_CUDA_EMULATE=1`, on the emulated device (every kernel
//! compiled for the host; what CI runs). Without either every test says so on stderr and returns; with
//! `SCSPECIES_REQUIRE_GPU=1` (set on the GPU machine) or `SCSPECIES_CUDA_EMULATE=1` a device that cannot
//! be set up is a failure instead, so a skip never passes for a result.
#![cfg(feature = "cuda")]

mod common;
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use scspecies::engine::backend::HostRows;
use scspecies::engine::cuda::Cuda;
use scspecies::engine::likelihood::Distribution;
use scspecies::engine::ops::AdamConfig;
use scspecies::engine::{Backend, Cpu};
use scspecies::model::{Batch, InterTarget, Model, ModelConfig, Noise};
use std::sync::OnceLock;

fn gpu() -> Option<&'static Cuda> {
    static G: OnceLock<Result<Cuda, String>> = OnceLock::new();
    match G.get_or_init(|| Cuda::new(0, false)) {
        Ok(g) => Some(g),
        Err(e) => {
            if std::env::var("SCSPECIES_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("SCSPECIES_REQUIRE_GPU=1 but {e}");
            }
            if scspecies::engine::cuda::emulation_requested() {
                panic!("SCSPECIES_CUDA_EMULATE=1 but {e}");
            }
            eprintln!("SKIPPED (no GPU, CUDA parity not checked): {e}");
            None
        }
    }
}

fn rnd(n: usize, seed: u64, lo: f64, hi: f64) -> Vec<f64> {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| r.random_range(lo..hi)).collect()
}

/// Sparse counts: about `density` of the entries non-zero, values 1..=max (some huge).
fn counts(rows: usize, n: usize, density: f64, seed: u64) -> (Vec<usize>, Vec<u32>, Vec<f32>) {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let (mut ip, mut idx, mut val) = (vec![0], vec![], vec![]);
    for _ in 0..rows {
        for g in 0..n {
            if r.random_bool(density) {
                idx.push(g as u32);
                val.push(if r.random_bool(0.01) { r.random_range(100..20000) as f32 } else { r.random_range(1..20) as f32 });
            }
        }
        ip.push(idx.len());
    }
    (ip, idx, val)
}

/// max |a − b| ≤ atol + rtol·max |a|, reported either way.
fn close(what: &str, a: &[f64], b: &[f64], rtol: f64, atol: f64) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    let scale = a.iter().fold(0f64, |m, v| m.max(v.abs()));
    let (mut worst, mut at) = (0f64, 0usize);
    for i in 0..a.len() {
        let d = (a[i] - b[i]).abs();
        if d > worst || d.is_nan() {
            worst = d;
            at = i;
        }
    }
    eprintln!("{what}: max |cpu − gpu| = {worst:.3e} at {at} (scale {scale:.3e})");
    assert!(worst <= atol + rtol * scale, "{what}: cpu {} vs gpu {} at {at} (max diff {worst:.3e}, scale {scale:.3e})", a[at], b[at]);
}

struct Pair<'a> {
    c: Cpu<f32>,
    g: &'a Cuda,
}

impl Pair<'_> {
    fn up(&self, v: &[f64]) -> (Vec<f32>, <Cuda as Backend>::Buf) {
        (self.c.upload(v), self.g.upload(v))
    }
    fn zeros(&self, n: usize) -> (Vec<f32>, <Cuda as Backend>::Buf) {
        (self.c.zeros(n), self.g.zeros(n))
    }
    fn check(&self, what: &str, b: &(Vec<f32>, <Cuda as Backend>::Buf), rtol: f64, atol: f64) {
        close(what, &self.c.download(&b.0), &self.g.download(&b.1), rtol, atol);
    }
}

#[test]
fn dense_and_sparse_linear_layers() {
    let Some(g) = gpu() else { return };
    let p = Pair { c: Cpu::new(), g };
    for &(rows, k, n) in &[(128, 300, 200), (7, 13, 1001), (512, 300, 4000), (1, 1, 1)] {
        let x = p.up(&rnd(rows * k, 1, -2.0, 2.0));
        let w = p.up(&rnd(k * n, 2, -0.1, 0.1));
        let b = p.up(&rnd(n, 3, -1.0, 1.0));
        let mut y = p.zeros(rows * n);
        p.c.linear_fwd(&x.0, &w.0, &b.0, &mut y.0, rows, k, n);
        p.g.linear_fwd(&x.1, &w.1, &b.1, &mut y.1, rows, k, n);
        p.check(&format!("linear_fwd {rows}x{k}x{n}"), &y, 1e-5, 1e-6);
        let dy = p.up(&rnd(rows * n, 4, -1.0, 1.0));
        let (mut dx, mut dw, mut db) = (p.zeros(rows * k), p.zeros(k * n), p.zeros(n));
        p.c.linear_bwd(&x.0, &w.0, &dy.0, Some(&mut dx.0), &mut dw.0, &mut db.0, rows, k, n);
        p.g.linear_bwd(&x.1, &w.1, &dy.1, Some(&mut dx.1), &mut dw.1, &mut db.1, rows, k, n);
        p.check("linear_bwd dx", &dx, 1e-5, 1e-6);
        p.check("linear_bwd dw", &dw, 1e-5, 1e-6);
        p.check("linear_bwd db", &db, 1e-5, 1e-6);
    }
    // Raw counts (with huge values) as the input layers see them.
    let (rows, k, n) = (128, 3000, 300);
    let (ip, idx, val) = counts(rows, k, 0.1, 5);
    let xs = (p.c.upload_sparse(rows, k, ip.clone(), idx.clone(), val.clone()), p.g.upload_sparse(rows, k, ip, idx, val));
    let w = p.up(&rnd(k * n, 6, -0.02, 0.02));
    let b = p.up(&rnd(n, 7, -1.0, 1.0));
    let mut y = p.zeros(rows * n);
    p.c.sparse_linear_fwd(&xs.0, &w.0, &b.0, &mut y.0, n);
    p.g.sparse_linear_fwd(&xs.1, &w.1, &b.1, &mut y.1, n);
    p.check("sparse_linear_fwd", &y, 1e-5, 1e-5);
    let dy = p.up(&rnd(rows * n, 8, -1.0, 1.0));
    let (mut dw, mut db) = (p.up(&rnd(k * n, 9, 5.0, 6.0)), p.zeros(n)); // stale values must be overwritten
    p.c.sparse_linear_bwd(&xs.0, &dy.0, &mut dw.0, &mut db.0, n);
    p.g.sparse_linear_bwd(&xs.1, &dy.1, &mut dw.1, &mut db.1, n);
    p.check("sparse_linear_bwd dw", &dw, 1e-5, 1e-5);
    p.check("sparse_linear_bwd db", &db, 1e-5, 1e-6);
}

#[test]
fn layernorm_activations_softmax_and_helpers() {
    let Some(g) = gpu() else { return };
    let p = Pair { c: Cpu::new(), g };
    let (rows, d) = (128, 300);
    // Raw-count scale inputs, as the first LayerNorm sees them.
    let x = p.up(&rnd(rows * d, 10, -500.0, 3000.0));
    let gam = p.up(&rnd(d, 11, 0.5, 1.5));
    let bet = p.up(&rnd(d, 12, -0.5, 0.5));
    let (mut y, mut xh, mut rs) = (p.zeros(rows * d), p.zeros(rows * d), p.zeros(rows));
    p.c.layernorm_fwd(&x.0, &gam.0, &bet.0, &mut y.0, &mut xh.0, &mut rs.0, d);
    p.g.layernorm_fwd(&x.1, &gam.1, &bet.1, &mut y.1, &mut xh.1, &mut rs.1, d);
    p.check("layernorm_fwd y", &y, 1e-5, 1e-5);
    p.check("layernorm_fwd rstd", &rs, 1e-4, 0.0);
    let dy = p.up(&rnd(rows * d, 13, -1.0, 1.0));
    let (mut dx, mut dg, mut dbt) = (p.zeros(rows * d), p.zeros(d), p.zeros(d));
    p.c.layernorm_bwd(&dy.0, &xh.0, &rs.0, &gam.0, &mut dx.0, &mut dg.0, &mut dbt.0, rows, d);
    p.g.layernorm_bwd(&dy.1, &xh.1, &rs.1, &gam.1, &mut dx.1, &mut dg.1, &mut dbt.1, rows, d);
    p.check("layernorm_bwd dx", &dx, 1e-4, 1e-9);
    p.check("layernorm_bwd dgamma", &dg, 1e-5, 1e-6);
    p.check("layernorm_bwd dbeta", &dbt, 1e-5, 1e-6);

    let h = p.up(&rnd(rows * d, 14, -1.0, 1.0));
    let mask = p.up(&rnd(rows * d, 15, 0.0, 1.0).iter().map(|&u| if u < 0.1 { 0.0 } else { 1.0 / 0.9 }).collect::<Vec<_>>());
    for with_mask in [true, false] {
        let (mut ro, mut out) = (p.zeros(rows * d), p.zeros(rows * d));
        p.c.relu_dropout_fwd(&h.0, with_mask.then_some(&mask.0), &mut ro.0, &mut out.0);
        p.g.relu_dropout_fwd(&h.1, with_mask.then_some(&mask.1), &mut ro.1, &mut out.1);
        p.check("relu_dropout_fwd", &out, 0.0, 0.0);
        let mut dh = p.zeros(rows * d);
        p.c.relu_dropout_bwd(&dy.0, &ro.0, with_mask.then_some(&mask.0), &mut dh.0);
        p.g.relu_dropout_bwd(&dy.1, &ro.1, with_mask.then_some(&mask.1), &mut dh.1);
        p.check("relu_dropout_bwd", &dh, 0.0, 0.0);
    }

    // Split softmax over 20,000 genes with logits up to ±30.
    let n = 20_000;
    let group: Vec<u8> = (0..n).map(|j| (j % 7 == 3 || j > 15_000) as u8).collect();
    let n1 = group.iter().filter(|&&g| g == 1).count() as f64;
    let wgt = [(n as f64 - n1) / n as f64, n1 / n as f64];
    let r = p.up(&rnd(16 * n, 16, -30.0, 30.0));
    let mut rho = p.zeros(16 * n);
    p.c.split_softmax_fwd(&r.0, &group, wgt, &mut rho.0, n);
    p.g.split_softmax_fwd(&r.1, &group, wgt, &mut rho.1, n);
    p.check("split_softmax_fwd", &rho, 1e-5, 1e-12);
    let mut dr = p.up(&rnd(16 * n, 17, -1.0, 1.0));
    p.c.split_softmax_bwd(&rho.0, &group, wgt, &mut dr.0, n);
    p.g.split_softmax_bwd(&rho.1, &group, wgt, &mut dr.1, n);
    p.check("split_softmax_bwd", &dr, 1e-4, 1e-9);

    // θ rows, their gradient scatter, gathers and column copies.
    let (s, n) = (3, 1000);
    let la = p.up(&rnd(s * n, 18, -3.0, 3.0));
    let batch: Vec<u32> = (0..128u32).map(|i| (i * 7) % s as u32).collect();
    let mut th = p.zeros(128 * n);
    p.c.gather_exp_rows(&la.0, &batch, &mut th.0, n);
    p.g.gather_exp_rows(&la.1, &batch, &mut th.1, n);
    p.check("gather_exp_rows", &th, 1e-6, 0.0);
    let dth = p.up(&rnd(128 * n, 19, -1.0, 1.0));
    let mut dla = p.up(&rnd(s * n, 20, 1.0, 2.0));
    p.c.scatter_theta_grad(&dth.0, &th.0, &batch, &mut dla.0, n);
    p.g.scatter_theta_grad(&dth.1, &th.1, &batch, &mut dla.1, n);
    p.check("scatter_theta_grad", &dla, 1e-5, 1e-6);
    let sel: Vec<u32> = vec![5, 0, 5, 127, 64];
    let mut gr = p.zeros(sel.len() * n);
    p.c.gather_rows(&th.0, &sel, n, &mut gr.0);
    p.g.gather_rows(&th.1, &sel, n, &mut gr.1);
    p.check("gather_rows", &gr, 0.0, 0.0);
    let mut cc = p.zeros(128 * 10);
    p.c.copy_cols(&th.0, n, 17, 10, &mut cc.0);
    p.g.copy_cols(&th.1, n, 17, 10, &mut cc.1);
    p.check("copy_cols", &cc, 0.0, 0.0);
    let mut th2 = (p.c.copy(&th.0), p.g.copy(&th.1));
    p.c.set_cols(&dth.0[..128 * 10].to_vec(), n, 990, 10, &mut th2.0);
    let dsub = p.g.upload(&p.c.download(&dth.0)[..128 * 10]);
    p.g.set_cols(&dsub, n, 990, 10, &mut th2.1);
    p.check("set_cols", &th2, 0.0, 0.0);

    // Element-wise helpers, latent terms and Adam.
    let m = 128 * 10;
    let mu = p.up(&rnd(m, 21, -3.0, 3.0));
    let ls = p.up(&rnd(m, 22, -6.0, 2.0));
    let eps = p.up(&rnd(m, 23, -2.0, 2.0));
    let mut z = p.zeros(m);
    p.c.reparam_fwd(&mu.0, &ls.0, &eps.0, &mut z.0);
    p.g.reparam_fwd(&mu.1, &ls.1, &eps.1, &mut z.1);
    p.check("reparam_fwd", &z, 1e-6, 1e-7);
    let (mut dmu, mut dls) = (p.up(&rnd(m, 24, -1.0, 1.0)), p.up(&rnd(m, 25, -1.0, 1.0)));
    p.c.reparam_bwd(&eps.0, &ls.0, &z.0, &mut dmu.0, &mut dls.0);
    p.g.reparam_bwd(&eps.1, &ls.1, &z.1, &mut dmu.1, &mut dls.1);
    p.check("reparam_bwd dmu", &dmu, 1e-6, 1e-7);
    p.check("reparam_bwd dls", &dls, 1e-5, 1e-7);
    let (mut kl, mut gm, mut gl) = (p.zeros(128), p.zeros(m), p.zeros(m));
    p.c.kl_normal(&mu.0, &ls.0, 10, &mut kl.0, Some((0.3, &mut gm.0, &mut gl.0)));
    p.g.kl_normal(&mu.1, &ls.1, 10, &mut kl.1, Some((0.3, &mut gm.1, &mut gl.1)));
    p.check("kl_normal", &kl, 1e-5, 1e-6);
    p.check("kl_normal dmu", &gm, 1e-6, 0.0);
    p.check("kl_normal dls", &gl, 1e-5, 1e-7);
    let lm = p.up(&rnd(128, 26, 5.0, 10.0));
    let lls = p.up(&rnd(128, 27, -3.0, 0.5));
    let pm = p.up(&rnd(128, 28, 6.0, 9.0));
    let ps = p.up(&rnd(128, 29, 0.2, 1.0));
    let (mut kll, mut gm2, mut gl2) = (p.zeros(128), p.zeros(128), p.zeros(128));
    p.c.kl_library(&lm.0, &lls.0, &pm.0, &ps.0, &mut kll.0, Some((0.7, &mut gm2.0, &mut gl2.0)));
    p.g.kl_library(&lm.1, &lls.1, &pm.1, &ps.1, &mut kll.1, Some((0.7, &mut gm2.1, &mut gl2.1)));
    p.check("kl_library", &kll, 1e-5, 1e-6);
    p.check("kl_library dm", &gm2, 1e-5, 1e-7);
    p.check("kl_library dls", &gl2, 1e-5, 1e-7);
    let mut e = p.zeros(m);
    p.c.exp_add(&ls.0, 1.5, &mut e.0);
    p.g.exp_add(&ls.1, 1.5, &mut e.1);
    p.check("exp_add", &e, 1e-6, 0.0);
    let mut yy = p.up(&rnd(m, 30, -1.0, 1.0));
    p.c.axpy(-0.25, &mu.0, &mut yy.0);
    p.g.axpy(-0.25, &mu.1, &mut yy.1);
    p.check("axpy", &yy, 1e-6, 1e-7);
    let mut pr = p.zeros(m);
    p.c.mul(&mu.0, &eps.0, &mut pr.0);
    p.g.mul(&mu.1, &eps.1, &mut pr.1);
    p.check("mul", &pr, 0.0, 0.0);
    close("softplus", &p.c.download(&p.c.softplus(&mu.0)), &p.g.download(&p.g.softplus(&mu.1)), 1e-6, 1e-7);
    let (mut par, mut am, mut av) = (p.up(&rnd(m, 31, -1.0, 1.0)), p.zeros(m), p.zeros(m));
    for t in 1..=5u64 {
        let grad = p.up(&rnd(m, 40 + t, -1.0, 1.0).iter().map(|&v| if t == 4 { 0.0 } else { v }).collect::<Vec<_>>());
        p.c.adam(&AdamConfig::default(), t, &mut par.0, &grad.0, &mut am.0, &mut av.0);
        p.g.adam(&AdamConfig::default(), t, &mut par.1, &grad.1, &mut am.1, &mut av.1);
    }
    p.check("adam (5 steps, one with zero gradient)", &par, 1e-6, 1e-7);
    let mut bad = rnd(m, 50, -1.0, 1.0);
    assert!(p.g.all_finite(&p.g.upload(&bad)));
    bad[m - 1] = f64::NAN;
    assert!(!p.g.all_finite(&p.g.upload(&bad)));
    bad[m - 1] = f64::INFINITY;
    assert!(!p.g.all_finite(&p.g.upload(&bad)));
    assert_eq!(p.g.download(&p.g.zeros(0)), Vec::<f64>::new());
}

#[test]
fn likelihoods_with_gradients_and_scoring() {
    let Some(g) = gpu() else { return };
    let p = Pair { c: Cpu::new(), g };
    let (rows, n) = (64, 5000);
    let (ip, idx, val) = counts(rows, n, 0.08, 60);
    let mut dense = vec![0f64; rows * n];
    for r in 0..rows {
        for q in ip[r]..ip[r + 1] {
            dense[r * n + idx[q] as usize] = val[q] as f64;
        }
    }
    let x = p.up(&dense);
    // ρ summing to one per row, including entries under the 1e-8 clamp; θ from 1e-9 to 1e4.
    let mut rho = rnd(rows * n, 61, 0.0, 1.0);
    for r in 0..rows {
        for j in 0..n {
            if (r + j) % 97 == 0 {
                rho[r * n + j] = 1e-12;
            }
        }
        let s: f64 = rho[r * n..(r + 1) * n].iter().sum();
        rho[r * n..(r + 1) * n].iter_mut().for_each(|v| *v /= s);
    }
    let rho = p.up(&rho);
    let theta = p.up(&rnd(rows * n, 62, -9.0, 4.0).iter().map(|&e| 10f64.powf(e)).collect::<Vec<_>>());
    let logit = p.up(&rnd(rows * n, 63, -25.0, 25.0));
    let lib = p.up(&rnd(rows, 64, 50.0, 1e5));
    for dist in [Distribution::Zinb, Distribution::Nb] {
        let zinb = dist == Distribution::Zinb;
        let mut nll = p.zeros(rows);
        p.c.likelihood(dist, &x.0, &rho.0, &theta.0, zinb.then_some(&logit.0), &lib.0, n, 1.0 / rows as f64, &mut nll.0, None);
        p.g.likelihood(dist, &x.1, &rho.1, &theta.1, zinb.then_some(&logit.1), &lib.1, n, 1.0 / rows as f64, &mut nll.1, None);
        p.check(&format!("{dist:?} nll"), &nll, 1e-6, 0.0);
        let (mut dr, mut dt, mut ds, mut dl) = (p.zeros(rows * n), p.zeros(rows * n), p.zeros(rows * n), p.zeros(rows));
        let mut nll2 = p.zeros(rows);
        let lg = (zinb.then_some(&logit.0), zinb.then_some(&logit.1));
        p.c.likelihood(
            dist,
            &x.0,
            &rho.0,
            &theta.0,
            lg.0,
            &lib.0,
            n,
            1.0 / rows as f64,
            &mut nll2.0,
            Some((&mut dr.0, &mut dt.0, Some(&mut ds.0), &mut dl.0)),
        );
        p.g.likelihood(
            dist,
            &x.1,
            &rho.1,
            &theta.1,
            lg.1,
            &lib.1,
            n,
            1.0 / rows as f64,
            &mut nll2.1,
            Some((&mut dr.1, &mut dt.1, Some(&mut ds.1), &mut dl.1)),
        );
        // The CPU's f32 ZINB path uses fast math for zero and small integer counts; the GPU computes
        // every term in double.
        p.check(&format!("{dist:?} nll (with gradients)"), &nll2, 1e-5, 0.0);
        p.check(&format!("{dist:?} d_rho"), &dr, 1e-4, 1e-9);
        p.check(&format!("{dist:?} d_theta"), &dt, 1e-4, 1e-9);
        p.check(&format!("{dist:?} d_logit"), &ds, 1e-4, 1e-9);
        p.check(&format!("{dist:?} d_lib"), &dl, 1e-4, 1e-12);

        // Scoring: 3·rows query rows against decoded rows picked by `sel`, θ from a per-batch table.
        let sel: Vec<u32> = (0..3 * rows as u32).map(|i| (i * 13) % rows as u32).collect();
        let cells: Vec<usize> = (0..3 * rows).map(|i| (i * 5) % rows).collect();
        let csr = scspecies::data::Csr::from_parts(rows, n, ip.clone(), idx.clone(), val.clone()).unwrap();
        let hx = HostRows::gather(&csr, &cells);
        let batch: Vec<u32> = (0..3 * rows as u32).map(|i| i % 3).collect();
        let ttab = p.up(&rnd(3 * n, 65, -2.0, 3.0).iter().map(|&e| 10f64.powf(e)).collect::<Vec<_>>());
        let slib = p.up(&rnd(3 * rows, 66, 500.0, 5e4));
        let sp = (p.c.softplus(&logit.0), p.g.softplus(&logit.1));
        let mut sc = p.zeros(3 * rows);
        p.c.likelihood_score(dist, &hx, &sel, &batch, &rho.0, &ttab.0, zinb.then_some((&logit.0, &sp.0)), &slib.0, n, &mut sc.0);
        p.g.likelihood_score(dist, &hx, &sel, &batch, &rho.1, &ttab.1, zinb.then_some((&logit.1, &sp.1)), &slib.1, n, &mut sc.1);
        p.check(&format!("{dist:?} likelihood_score"), &sc, 1e-5, 0.0);
        // The label transfer's layout: every cell's counts stored once (resident on the device under
        // their id), each scored row pointing at its cell; the same scores. Twice: the second call
        // finds the rows resident.
        let mut stored = HostRows::all(&csr);
        stored.row_of = Some(cells.iter().map(|&c| c as u32).collect());
        stored.count_terms = Some(hx.count_terms.clone().unwrap_or_else(|| {
            let th: Vec<f32> = p.c.download(&ttab.0).iter().map(|&v| v as f32).collect();
            scspecies::engine::ops::count_terms(&hx.ptr, &hx.idx, &hx.val, &batch, &th, n)
        }));
        for pass in 0..2 {
            let mut sc2 = p.zeros(3 * rows);
            p.c.likelihood_score(dist, &stored, &sel, &batch, &rho.0, &ttab.0, zinb.then_some((&logit.0, &sp.0)), &slib.0, n, &mut sc2.0);
            p.g.likelihood_score(dist, &stored, &sel, &batch, &rho.1, &ttab.1, zinb.then_some((&logit.1, &sp.1)), &slib.1, n, &mut sc2.1);
            p.check(&format!("{dist:?} likelihood_score, rows in place (pass {pass})"), &sc2, 1e-5, 0.0);
            close("in place vs gathered (GPU)", &p.g.download(&sc2.1), &p.g.download(&sc.1), 1e-6, 0.0);
        }
    }
}

fn small_config(n: usize, s: usize) -> ModelConfig {
    let hom: Vec<usize> = (0..n).filter(|g| g % 3 != 0).collect();
    ModelConfig::scspecies(n, s, hom, 7.5)
}

fn batch_for<B: Backend>(be: &B, rows: usize, n: usize, s: usize, seed: u64) -> Batch<B> {
    let (ip, idx, val) = counts(rows, n, 0.1, seed);
    let batch: Vec<u32> = (0..rows as u32).map(|i| i % s as u32).collect();
    let pm: Vec<f64> = (0..rows).map(|i| 7.0 + 0.1 * (i % s) as f64).collect();
    let ps = vec![0.6; rows];
    Batch::new(be, n, s, &ip, &idx, &val, batch, &pm, &ps)
}

#[test]
fn whole_training_steps_with_alignment_term() {
    let Some(g) = gpu() else { return };
    let c = Cpu::<f32>::new();
    let (rows, n, s) = (128, 3000, 3);
    let cfg = small_config(n, s);
    let mut mc = Model::new(&c, cfg.clone(), &mut ChaCha8Rng::seed_from_u64(1));
    let mut mg = Model::new(g, cfg, &mut ChaCha8Rng::seed_from_u64(1));
    for (a, b) in mc.params.iter().zip(&mg.params) {
        close(&format!("init {}", a.name), &c.download(&a.value), &g.download(&b.value), 0.0, 0.0);
    }
    let aligned: Vec<usize> = (0..rows).step_by(3).collect();
    let targets: Vec<Vec<f64>> = aligned.iter().map(|&i| rnd(300, 100 + i as u64, 0.0, 2.0)).collect();
    let (beta, eta) = (0.4, 10.0);
    for step in 0..3u64 {
        let (bc, bg) = (batch_for(&c, rows, n, s, 70 + step), batch_for(g, rows, n, s, 70 + step));
        let nc = Noise::sample(&c, &mc, rows, true, &mut ChaCha8Rng::seed_from_u64(200 + step));
        let ng = Noise::sample(g, &mg, rows, true, &mut ChaCha8Rng::seed_from_u64(200 + step));
        let (fc, fg) = (mc.forward_with(&c, &bc, &nc, true), mg.forward_with(g, &bg, &ng, true));
        let (tc, tg) = (InterTarget::new(&aligned, &targets, eta), InterTarget::new(&aligned, &targets, eta));
        let (lc, lg) = (mc.losses(&c, &fc, Some(&tc)), mg.losses(g, &fg, Some(&tg)));
        eprintln!("step {step}: loss cpu {:.6} gpu {:.6}", lc.total(beta, eta), lg.total(beta, eta));
        close(&format!("step {step} loss terms"), &[lc.nll, lc.kl_z, lc.kl_l, lc.align], &[lg.nll, lg.kl_z, lg.kl_l, lg.align], 1e-4, 1e-5);
        mc.backward(&c, &bc, &nc, &fc, beta, Some(&tc));
        mg.backward(g, &bg, &ng, &fg, beta, Some(&tg));
        for i in 0..mc.params.len() {
            close(&format!("step {step} grad {}", mc.params[i].name), &c.download(&mc.grads[i]), &g.download(&mg.grads[i]), 2e-3, 1e-6);
        }
        mc.adam_step(&c, &AdamConfig::default(), |_| true);
        mg.adam_step(g, &AdamConfig::default(), |_| true);
    }
    // Adam divides by √v: where a gradient is within rounding of zero its sign is noise, and each step
    // can move the two runs apart by up to 2·lr. So: at most 2·lr per step anywhere, and almost every
    // parameter (all but 1 in 1,000) within a tenth of one step.
    let lr = AdamConfig::default().lr;
    for (a, b) in mc.params.iter().zip(&mg.params) {
        let (pc, pg) = (c.download(&a.value), g.download(&b.value));
        close(&format!("after 3 steps {}", a.name), &pc, &pg, 0.0, 2.0 * 3.0 * lr * (1.0 + 1e-3));
        let apart = pc.iter().zip(&pg).filter(|(x, y)| (*x - *y).abs() > 0.1 * lr).count();
        eprintln!("after 3 steps {}: {apart} of {} parameters differ by more than 0.1·lr", a.name, pc.len());
        assert!(apart * 1000 <= pc.len(), "{}: {apart} of {} parameters differ by more than 0.1·lr", a.name, pc.len());
    }
}

#[test]
fn candidate_choice_and_transfer_similarities() {
    let Some(g) = gpu() else { return };
    let c = Cpu::<f32>::new();
    let (n, s, nc, nt) = (3000, 2, 400, 60);
    let cfg = small_config(n, s);
    let mc = Model::new(&c, cfg.clone(), &mut ChaCha8Rng::seed_from_u64(3));
    let mg = Model::new(g, cfg, &mut ChaCha8Rng::seed_from_u64(3));
    let (ip, idx, val) = counts(nt, n, 0.1, 80);
    let counts_t = scspecies::data::Csr::from_parts(nt, n, ip, idx, val).unwrap();
    let ctx = scspecies::train::Representation {
        latent: 10,
        inter_dim: 300,
        z_mu: rnd(nc * 10, 81, -2.0, 2.0).iter().map(|&v| v as f32).collect(),
        z_sig: rnd(nc * 10, 82, 0.05, 0.5).iter().map(|&v| v as f32).collect(),
        inter: vec![0.0; nc * 300],
        l_mu: vec![7.0; nc],
        l_sig: vec![0.3; nc],
    };
    let knn: Vec<u32> = (0..nt * 25).map(|i| ((i * 37) % nc) as u32).collect();
    let queries: Vec<scspecies::align::candidates::Query> = (0..nt)
        .map(|i| scspecies::align::candidates::Query {
            cell: i,
            batch: (i % s) as u32,
            lib: 1000.0 + 37.0 * i as f64,
            neighbours: &knn[i * 25..(i + 1) * 25],
        })
        .collect();
    let (ch_c, nll_c, _) =
        scspecies::align::candidates::choose(&c, &mc, &ctx, &counts_t, &queries, true, &mut ChaCha8Rng::seed_from_u64(9));
    let (ch_g, nll_g, _) = scspecies::align::candidates::choose(g, &mg, &ctx, &counts_t, &queries, true, &mut ChaCha8Rng::seed_from_u64(9));
    let flat = |v: &Vec<Vec<f64>>| v.iter().flatten().copied().collect::<Vec<f64>>();
    close("candidate NLLs", &flat(&nll_c), &flat(&nll_g), 1e-5, 0.0);
    // The same choice wherever the best two candidates are not within rounding of each other.
    for (q, (a, b)) in ch_c.iter().zip(&ch_g).enumerate() {
        if a != b {
            let gap = (nll_c[q][*a] - nll_c[q][*b]).abs();
            assert!(gap < 1e-4 * nll_c[q][*a].abs(), "query {q}: cpu picks {a}, gpu {b}, NLL gap {gap}");
        }
    }
    let agree = ch_c.iter().zip(&ch_g).filter(|(a, b)| a == b).count();
    eprintln!("candidate choice: {agree} of {} identical", ch_c.len());

    let batch: Vec<u32> = (0..nt as u32).map(|i| i % s as u32).collect();
    let (pm, ps) = (vec![7.0; nt], vec![0.5; nt]);
    let data = scspecies::train::TrainData::new(&counts_t, &batch, &pm, &ps, s);
    let (rc, rg) = (scspecies::train::represent(&c, &mc, &data, 16), scspecies::train::represent(g, &mg, &data, 16));
    let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    close("eval-mode z_mu", &f(&rc.z_mu), &f(&rg.z_mu), 1e-4, 1e-5);
    close("eval-mode inter", &f(&rc.inter), &f(&rg.inter), 1e-4, 1e-5);
    let pairs: Vec<(u32, u32)> = (0..nt as u32).flat_map(|j| (0..20u32).map(move |q| (j, (j * 11 + q * 7) % nc as u32))).collect();
    let dc = scspecies::transfer::similarities(&c, &mc, &data, &rc, &ctx.z_mu, &pairs, scspecies::transfer::Scoring::default());
    let dg = scspecies::transfer::similarities(g, &mg, &data, &rc, &ctx.z_mu, &pairs, scspecies::transfer::Scoring::default());
    close("label-transfer similarities", &dc, &dg, 1e-5, 1e-3);
}

/// The pipeline (pre-training, alignment, label transfer; 2 + 2 epochs) on both backends. On a GPU it
/// runs on the Baron pair; on the emulated device, where a kernel thread is a fiber, on a small
/// simulated pair (the Baron run takes ~15 minutes there: `SCSPECIES_EMU_BARON=1` asks for it anyway).
#[test]
fn pipeline_pretraining_alignment_and_transfer_agree() {
    let Some(g) = gpu() else { return };
    use scspecies::pipeline::{demo_like_inputs, prepare, pretrain};
    let c = Cpu::<f32>::new();
    let tmp = tempfile::tempdir().unwrap();
    let baron = !g.is_emulated() || std::env::var("SCSPECIES_EMU_BARON").is_ok_and(|v| v == "1");
    let inputs = if baron {
        demo_like_inputs(&common::bundled())
    } else {
        use scspecies::simulate::{SimConfig, simulate};
        let cfg = SimConfig { context_cells: 300, target_cells: 260, genes: 300, shared_types: 3, density: 0.2, ..Default::default() };
        simulate(&cfg, tmp.path()).unwrap();
        scspecies::pipeline::Inputs {
            context: tmp.path().join("context"),
            target: tmp.path().join("target"),
            context_name: "context".into(),
            target_name: "target".into(),
            homology: Some(tmp.path().join("homology.tsv")),
            ..demo_like_inputs(tmp.path())
        }
    };
    let data = if baron { "Baron" } else { "simulated pair" };
    let pair = prepare(&inputs, &Default::default(), &scspecies::pipeline::Silent).unwrap();
    let mut tcfg = scspecies::train::TrainConfig::default_for(pair.context.n_cells(), 5);
    tcfg.epochs = 2;
    let rc = pretrain(&c, &pair, &tcfg, &scspecies::pipeline::Silent).unwrap();
    let rg = pretrain(g, &pair, &tcfg, &scspecies::pipeline::Silent).unwrap();
    for (a, b) in rc.history.iter().zip(&rg.history) {
        eprintln!("{data}, epoch {}: nELBO cpu {:.3} gpu {:.3}", a.epoch, a.nelbo, b.nelbo);
        close(&format!("{data} pre-training nELBO per epoch"), &[a.nelbo, a.nll], &[b.nelbo, b.nll], 2e-3, 0.0);
    }
    let mut acfg = scspecies::align::AlignConfig::default_for(pair.target.n_cells(), 5);
    acfg.epochs = 2;
    let tc = scspecies::transfer::TransferConfig::default();
    let ac = align_run(&c, &pair, &rc, &acfg, &tc);
    let ag = align_run(g, &pair, &rg, &acfg, &tc);
    let same = ac.transfer.pred.iter().zip(&ag.transfer.pred).filter(|(a, b)| a == b).count();
    let frac = same as f64 / ac.transfer.pred.len() as f64;
    eprintln!("{data}, 2 + 2 epochs: {same} of {} target predictions identical ({frac:.3})", ac.transfer.pred.len());
    assert!(frac > 0.95, "CPU and GPU label transfer agree on only {frac:.3} of the cells");
}

fn align_run<B: Backend>(
    be: &B,
    pair: &scspecies::pipeline::PreparedPair,
    run: &scspecies::pipeline::ContextRun<B>,
    acfg: &scspecies::align::AlignConfig,
    tc: &scspecies::transfer::TransferConfig,
) -> scspecies::pipeline::AlignRun<B> {
    scspecies::pipeline::align_and_transfer(be, pair, run, acfg, tc, &scspecies::pipeline::Silent).unwrap()
}

#[test]
fn device_failures_are_errors_naming_the_operation() {
    // A backend of its own: the failure is sticky, and the other tests share theirs.
    if gpu().is_none() {
        return;
    }
    let g = Cuda::new(0, false).unwrap();
    let ok = g.upload(&[1.0, 2.0]);
    assert!(g.device_error().is_none());
    let huge = g.zeros(1 << 60);
    let e = g.device_error().expect("a 4 EiB allocation fails");
    assert!(e.contains("allocation of") && e.contains("floats"), "{e}");
    // Later work is skipped, nothing panics, and training reports the first failure as an error.
    let mut y = g.zeros(2);
    g.axpy(1.0, &ok, &mut y);
    assert_eq!(g.download(&y), vec![0.0, 0.0], "a download after a failure: zeros of the asked length");
    drop(huge);
    let err = scspecies::train::device_ok(&g, "a test").unwrap_err().to_string();
    assert!(err.contains("allocation of") && err.contains("during a test"), "{err}");
}

/// The data-level kNN with the device's screen (similarity GEMM + `topk_merge`, two context blocks)
/// gives exactly the CPU's exact kNN: the same neighbours in the same order and the same distances.
/// 301 identical context rows make more ties than a device list holds, so those target rows must be
/// screened again on the CPU; one target row is all zero.
#[test]
fn knn_screen_on_the_device_gives_the_exact_knn() {
    let Some(g) = gpu() else { return };
    use scspecies::knn::data_level::{cosine_knn_scaled, cosine_knn_scaled_on};
    let (nc, nt, genes, k) = (5000, 300, 400, 25);
    let (mut ip, mut idx, mut val) = counts(nc, genes, 0.05, 90);
    // Context rows 1000..1301 all equal row 1000 (its non-zeros moved to the end of the CSR).
    let row = |ip: &Vec<usize>, idx: &Vec<u32>, val: &Vec<f32>, r: usize| (idx[ip[r]..ip[r + 1]].to_vec(), val[ip[r]..ip[r + 1]].to_vec());
    let (ri, rv) = row(&ip, &idx, &val, 1000);
    let mut csr_rows: Vec<(Vec<u32>, Vec<f32>)> = (0..nc).map(|r| row(&ip, &idx, &val, r)).collect();
    for r in csr_rows.iter_mut().take(1301).skip(1000) {
        *r = (ri.clone(), rv.clone());
    }
    (ip, idx, val) = (vec![0], vec![], vec![]);
    for (i, v) in csr_rows {
        idx.extend(i);
        val.extend(v);
        ip.push(idx.len());
    }
    let context = scspecies::data::Csr::from_parts(nc, genes, ip, idx, val).unwrap();
    let (mut tip, mut tidx, mut tval) = counts(nt, genes, 0.05, 91);
    // Target row 0 = context row 1000 (its neighbours are the 301 ties); row 1 all zero.
    let (tr0, tv0) = row(&tip, &tidx, &tval, 0);
    let shift = ri.len() as isize - tr0.len() as isize;
    tidx.splice(tip[0]..tip[1], ri.clone());
    tval.splice(tip[0]..tip[1], rv.clone());
    tip.iter_mut().skip(1).for_each(|p| *p = (*p as isize + shift) as usize);
    let (a, b) = (tip[1], tip[2]);
    tidx.drain(a..b);
    tval.drain(a..b);
    tip.iter_mut().skip(2).for_each(|p| *p -= b - a);
    let _ = tv0;
    let target = scspecies::data::Csr::from_parts(nt, genes, tip, tidx, tval).unwrap();
    let cols: Vec<usize> = (0..genes).filter(|g| g % 5 != 0).collect();
    let cs: Vec<f64> = (0..nc).map(|i| 1.0 + (i % 7) as f64).collect();
    let ts: Vec<f64> = (0..nt).map(|i| 1.0 + (i % 3) as f64).collect();
    let (ic, dc) = cosine_knn_scaled(&context, &cols, &cs, &target, &cols, &ts, k);
    let (ig, dg) = cosine_knn_scaled_on(g, &context, &cols, &cs, &target, &cols, &ts, k);
    assert!(g.device_error().is_none(), "{:?}", g.device_error());
    assert_eq!(ic, ig, "neighbour lists differ");
    assert_eq!(dc, dg, "distances differ");
    assert!(ic[..k].iter().all(|&j| (1000..1301).contains(&j)) && dc[0] < 1e-6, "target 0's neighbours are the tied copies");
    assert!(dc[k..2 * k].iter().all(|&d| d == 1.0), "a zero row is at distance 1 from everything");
    eprintln!("kNN {nt} x {nc}, k = {k}: identical to the CPU's");
}

/// The device's screen itself (so the test above cannot pass by falling back to the CPU): random unit
/// vectors, two context blocks, each target row's best l against an f64 search on the host.
#[test]
fn knn_screen_keeps_each_rows_best_l() {
    let Some(g) = gpu() else { return };
    let (nt, nc, h, l) = (40, 5000, 64, 100);
    let unit = |n: usize, seed: u64| {
        let mut v = rnd(n * h, seed, -1.0, 1.0);
        for r in v.chunks_mut(h) {
            let s = r.iter().map(|x| x * x).sum::<f64>().sqrt();
            r.iter_mut().for_each(|x| *x /= s);
        }
        v.iter().map(|&x| x as f32).collect::<Vec<f32>>()
    };
    let (t, c) = (unit(nt, 95), unit(nc, 96));
    let tr = |r: std::ops::Range<usize>| t[r.start * h..r.end * h].to_vec();
    let cr = |r: std::ops::Range<usize>| c[r.start * h..r.end * h].to_vec();
    let s = g.knn_screen(nt, nc, h, l, &tr, &cr).expect("the CUDA backend screens on the device");
    assert!(s.error > 0.0 && s.error < 1e-4, "error bound {}", s.error);
    for i in 0..nt {
        let mut exact: Vec<(f64, u32)> =
            (0..nc).map(|j| ((0..h).map(|q| t[i * h + q] as f64 * c[j * h + q] as f64).sum::<f64>(), j as u32)).collect();
        exact.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let got = &s.best[i * l..(i + 1) * l];
        for (q, (&(gs, gi), &(es, ei))) in got.iter().zip(&exact).enumerate() {
            assert!((gs as f64 - es).abs() <= s.error as f64, "row {i}, rank {q}: similarity {gs} vs exact {es}");
            // The same neighbour unless two similarities lie within rounding of each other.
            if gi != ei {
                let other = exact.iter().find(|e| e.1 == gi).unwrap().0;
                assert!((other - es).abs() <= 2.0 * s.error as f64, "row {i}, rank {q}: device {gi}, exact {ei}");
            }
        }
    }
}

/// The label transfer's latent-space kNN with the device's screen: the same neighbours, in the same
/// order, as the host search. 600 context cells on one target cell make more ties than a device list
/// (l = 2k + 64 = 564) holds, so that row is searched again on the host.
#[test]
fn latent_knn_on_the_device_is_the_host_search() {
    let Some(g) = gpu() else { return };
    use scspecies::knn::{latent_knn, latent_knn_on};
    let (dim, nc, nt, k) = (10, 4500, 150, 250);
    let mut ctx: Vec<f32> = rnd(nc * dim, 97, -3.0, 3.0).iter().map(|&v| v as f32).collect();
    let tgt: Vec<f32> = rnd(nt * dim, 98, -3.0, 3.0).iter().map(|&v| v as f32).collect();
    // Context cells 100..700 sit exactly on target cell 0 (distance 0, all tied).
    for c in 100..700 {
        ctx[c * dim..(c + 1) * dim].copy_from_slice(&tgt[..dim]);
    }
    let host = latent_knn(&ctx, &tgt, dim, k);
    let dev = latent_knn_on(g, &ctx, &tgt, dim, k);
    assert!(g.device_error().is_none(), "{:?}", g.device_error());
    assert_eq!(host, dev, "latent neighbours differ");
    assert_eq!(&dev[..k], &(100..350u32).collect::<Vec<_>>()[..], "the tied copies, by index");
    eprintln!("latent kNN {nt} x {nc}, k = {k}: identical to the host search");
}
