//! The f32 element-wise kernels are compiled for baseline x86-64, AVX2 and AVX-512 and picked at run
//! time. The variants must give bit-identical results, so that a seeded run does not depend on the
//! machine's vector width. Each level this CPU lacks is reported and skipped.

use scspecies::data::Csr;
use scspecies::engine::backend::HostRows;
use scspecies::engine::likelihood::Distribution;
use scspecies::engine::ops::{self, LikelihoodGrads};
use scspecies::engine::simd::{self, Level};

/// The level cap is process-wide: the tests here take turns.
static CAP_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn lcg(s: &mut u64) -> f64 {
    *s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (*s >> 11) as f64 / (1u64 << 53) as f64
}

/// Every vectorised kernel's outputs, as bits.
fn outputs() -> Vec<Vec<u32>> {
    // 1,000 genes: not a multiple of any vector width or block size, so remainders run too.
    let (rows, n) = (9, 1001);
    let mut s = 5u64;
    let mut dense = vec![0f32; rows * n];
    for v in dense.iter_mut() {
        if lcg(&mut s) < 0.2 {
            *v = ((lcg(&mut s) * 50.0).floor() + 1.0) as f32;
        }
    }
    let x = Csr::from_dense(rows, n, &dense);
    let hr = HostRows::gather(&x, &(0..rows).collect::<Vec<_>>());
    let r: Vec<f32> = (0..rows * n).map(|_| (lcg(&mut s) * 20.0 - 10.0) as f32).collect();
    let group: Vec<u8> = (0..n).map(|g| (g % 3 == 0) as u8).collect();
    let mut rho = vec![0f32; rows * n];
    ops::split_softmax_fwd(&r, &group, [0.4, 0.6], &mut rho, n);
    // Extreme logits and dispersions on purpose: clamps and overflow guards run in every variant.
    let logit: Vec<f32> = (0..rows * n).map(|_| (lcg(&mut s) * 200.0 - 100.0) as f32).collect();
    let theta: Vec<f32> = (0..rows * n).map(|_| (lcg(&mut s) * 30.0 - 20.0).exp() as f32).collect();
    let lib: Vec<f32> = (0..rows).map(|i| 10f32.powi(i as i32 % 6)).collect();
    let sp = ops::softplus_all(&logit);
    let idx: Vec<u32> = (0..rows as u32).collect();
    let mut out = vec![rho.iter().map(|v| v.to_bits()).collect(), sp.iter().map(|v| v.to_bits()).collect()];
    for dist in [Distribution::Zinb, Distribution::Nb] {
        let mut nll = vec![0f32; rows];
        ops::likelihood_score(dist, &hr.ptr, &hr.idx, &hr.val, &idx, &idx, &rho, &theta, Some((&logit, &sp)), &lib, n, &mut nll);
        out.push(nll.iter().map(|v| v.to_bits()).collect());
    }
    let mut nll = vec![0f32; rows];
    let (mut dr, mut dt, mut ds, mut dl) = (vec![0f32; rows * n], vec![0f32; rows * n], vec![0f32; rows * n], vec![0f32; rows]);
    let g = LikelihoodGrads { d_rho: &mut dr, d_theta: &mut dt, d_logit: Some(&mut ds), d_lib: &mut dl };
    ops::likelihood(Distribution::Zinb, &dense, &rho, &theta, Some(&logit), &lib, n, 0.5, &mut nll, Some(g));
    for v in [&nll, &dr, &dt, &ds, &dl] {
        out.push(v.iter().map(|v| v.to_bits()).collect());
    }
    // The sparse input layer: 70 outputs (one 64-column block and a remainder).
    let h = 70;
    let sb = ops::SparseBatch::new(rows, n, x.indptr.clone(), x.indices.clone(), x.data.clone());
    let w: Vec<f32> = (0..n * h).map(|_| (lcg(&mut s) - 0.5) as f32).collect();
    let bias: Vec<f32> = (0..h).map(|_| (lcg(&mut s) - 0.5) as f32).collect();
    let dy: Vec<f32> = (0..rows * h).map(|_| (lcg(&mut s) - 0.5) as f32).collect();
    let (mut y, mut dw, mut db) = (vec![0f32; rows * h], vec![0f32; n * h], vec![0f32; h]);
    ops::sparse_linear_fwd(&sb, &w, &bias, &mut y, h);
    ops::sparse_linear_bwd(&sb, &dy, &mut dw, &mut db, h);
    out.push(y.iter().map(|v| v.to_bits()).collect());
    out.push(dw.iter().map(|v| v.to_bits()).collect());
    out
}

#[test]
fn vector_width_does_not_change_results() {
    let _turn = CAP_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let have = simd::detected_capped();
    simd::set_cap(Level::Baseline);
    let base = outputs();
    assert!(base.iter().flatten().any(|&b| b != 0));
    for level in [Level::Avx2, Level::Avx512] {
        if have < level {
            eprintln!("SKIPPED {level:?}: this CPU (or SCSPECIES_SIMD) does not offer it");
            continue;
        }
        simd::set_cap(level);
        assert_eq!(simd::level(), level);
        let got = outputs();
        for (k, (a, b)) in base.iter().zip(&got).enumerate() {
            let diff = a.iter().zip(b).filter(|(x, y)| x != y).count();
            assert_eq!(diff, 0, "{level:?}: output {k} differs from baseline in {diff} of {} values", a.len());
        }
    }
}

/// The chunked f32 Adam against the update written out element by element (bit-identical), at every
/// vector width this CPU has.
#[test]
fn adam_chunks_match_the_elementwise_update() {
    let _turn = CAP_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = ops::AdamConfig::default();
    let n = 40_000 + 7; // several chunks plus a remainder
    let mut s = 9u64;
    let g: Vec<f32> = (0..n).map(|_| (lcg(&mut s) - 0.5) as f32).collect();
    let p0: Vec<f32> = (0..n).map(|_| (lcg(&mut s) - 0.5) as f32).collect();
    let m0: Vec<f32> = (0..n).map(|_| (lcg(&mut s) - 0.5) as f32 * 0.1).collect();
    let v0: Vec<f32> = (0..n).map(|_| lcg(&mut s) as f32 * 0.01).collect();
    let t = 3u64;
    let (b1, b2) = (cfg.beta1 as f32, cfg.beta2 as f32);
    let (ob1, ob2) = ((1.0 - cfg.beta1) as f32, (1.0 - cfg.beta2) as f32);
    let step = (cfg.lr / (1.0 - cfg.beta1.powi(t as i32))) as f32;
    let sq = (1.0 - cfg.beta2.powi(t as i32)).sqrt() as f32;
    let eps = cfg.eps as f32;
    let mut want = p0.clone();
    for i in 0..n {
        let m = b1 * m0[i] + ob1 * g[i];
        let v = b2 * v0[i] + ob2 * g[i] * g[i];
        want[i] -= step * m / (v.sqrt() / sq + eps);
    }
    let have = simd::detected_capped();
    for level in [Level::Baseline, Level::Avx2, Level::Avx512] {
        if have < level {
            eprintln!("SKIPPED {level:?}: this CPU (or SCSPECIES_SIMD) does not offer it");
            continue;
        }
        simd::set_cap(level);
        let (mut p, mut m, mut v) = (p0.clone(), m0.clone(), v0.clone());
        ops::adam_step(&cfg, t, &mut p, &g, &mut m, &mut v);
        let diff = p.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(diff, 0, "{level:?}: {diff} of {n} parameters differ from the element-wise update");
    }
}

/// The f32 Adam notes non-finite gradients during the update (the divergence check has no pass of its
/// own): NaN and ±inf anywhere, in any chunk, are reported, and every element is still updated.
#[test]
fn adam_reports_non_finite_gradients() {
    let cfg = ops::AdamConfig::default();
    let n = 3 * (1 << 14) + 5;
    for (at, bad) in [(None, 0.0f32), (Some(7), f32::NAN), (Some(1 << 14), f32::INFINITY), (Some(n - 1), f32::NEG_INFINITY)] {
        let mut g = vec![0.25f32; n];
        if let Some(i) = at {
            g[i] = bad;
        }
        let (mut p, mut m, mut v) = (vec![1f32; n], vec![0f32; n], vec![0f32; n]);
        let ok = ops::adam_step(&cfg, 1, &mut p, &g, &mut m, &mut v);
        assert_eq!(ok, at.is_none(), "gradient {bad} at {at:?}");
        // Every element away from the bad one moved by the same step.
        let far = if at == Some(0) { 1 } else { 0 };
        assert!(p.iter().enumerate().filter(|(i, _)| Some(*i) != at).all(|(_, &x)| x == p[far] && x < 1.0));
    }
}
