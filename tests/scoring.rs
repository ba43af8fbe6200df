//! The fast scoring path against the exact likelihood, fast exp/log against std, and the candidate
//! choice against a naive one-candidate-at-a-time implementation.

use scspecies::align::candidates::{Query, choose};
use scspecies::data::Csr;
use scspecies::engine::backend::HostRows;
use scspecies::engine::likelihood::Distribution;
use scspecies::engine::ops::ScorePart;
use scspecies::engine::{Backend, Cpu, fastmath, ops};
use scspecies::model::{Model, ModelConfig};
use scspecies::train::Representation;

fn lcg(s: &mut u64) -> f64 {
    *s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (*s >> 11) as f64 / (1u64 << 53) as f64
}

/// Counts [rows×n]: about `density` of the entries in 1..=max (integers), as CSR and dense.
fn random_counts(rows: usize, n: usize, density: f64, max: f64, s: &mut u64) -> (Csr, Vec<f32>) {
    let mut dense = vec![0f32; rows * n];
    for v in dense.iter_mut() {
        if lcg(s) < density {
            *v = (lcg(s) * max).floor() as f32 + 1.0;
        }
    }
    (Csr::from_dense(rows, n, &dense), dense)
}

/// Normalised expression profiles [rows×n] (each row sums to 1), skewed by `power`.
fn random_profiles(rows: usize, n: usize, power: i32, s: &mut u64) -> Vec<f64> {
    let mut rho: Vec<f64> = (0..rows * n).map(|_| lcg(s).powi(power) + 1e-9).collect();
    for r in 0..rows {
        let t: f64 = rho[r * n..(r + 1) * n].iter().sum();
        rho[r * n..(r + 1) * n].iter_mut().for_each(|v| *v /= t);
    }
    rho
}

#[test]
fn fast_math_accuracy() {
    let mut s = 3u64;
    for _ in 0..200_000 {
        let x = (lcg(&mut s) * 160.0 - 80.0) as f32;
        let e = fastmath::exp(x) as f64;
        let want = (x as f64).exp();
        assert!((e - want).abs() <= 5e-7 * want, "exp({x}) = {e} vs {want}");
        let y = (lcg(&mut s) * 30.0 - 15.0).exp() as f32;
        assert!((fastmath::ln(y) as f64 - (y as f64).ln()).abs() <= 3e-7 * (y as f64).ln().abs().max(1.0), "ln({y})");
        let z = (lcg(&mut s) * 20.0 - 18.0).exp() as f32;
        let l1 = fastmath::ln_1p(z) as f64;
        let w = (z as f64).ln_1p();
        assert!((l1 - w).abs() <= 5e-7 * w, "ln_1p({z}) = {l1} vs {w}");
        // The division-free forms of the scoring kernel: f32 rounding of the argument (2^-24) plus the
        // polynomials' own error bound the relative error.
        assert!((fastmath::ln_poly(y) as f64 - (y as f64).ln()).abs() <= 3e-7 * (y as f64).ln().abs().max(1.0), "ln_poly({y})");
        let lp = fastmath::ln_1p_pos(z) as f64;
        assert!((lp - w).abs() <= 5e-7 * w, "ln_1p_pos({z}) = {lp} vs {w}");
        let xn = -(lcg(&mut s) * 90.0) as f32;
        let en = fastmath::exp_neg(xn) as f64;
        let want = (xn.max(-87.0) as f64).exp();
        assert!((en - want).abs() <= 5e-7 * want, "exp_neg({xn}) = {en} vs {want}");
        let a = (lcg(&mut s) * 100.0 - 50.0) as f32;
        let sp = fastmath::softplus_poly(a) as f64;
        let want = (a as f64).exp().ln_1p();
        assert!((sp - want).abs() <= 5e-7 * want.max(1e-30) + 1e-37, "softplus_poly({a}) = {sp} vs {want}");
    }
}

#[test]
fn scoring_kernel_matches_exact_likelihood() {
    // `extreme`: ρ under its clamp and θ from 1e-9 to 1e4, so that NB's p = μ/(μ+θ) leaves
    // [1e-7, 1 − 1e-7] at both ends (the emulated-GPU parity test found the scoring path ignoring it).
    for (dist, extreme) in [(Distribution::Zinb, false), (Distribution::Nb, false), (Distribution::Zinb, true), (Distribution::Nb, true)] {
        let (rows, n) = (7, 3000);
        let mut s = 11u64;
        let (x, dense) = random_counts(rows, n, 0.1, 30.0, &mut s);
        let mut rho = random_profiles(rows, n, 3, &mut s);
        if extreme {
            rho.iter_mut().step_by(7).for_each(|v| *v = 1e-12);
        }
        let theta: Vec<f64> =
            (0..rows * n).map(|_| if extreme { 10f64.powf(lcg(&mut s) * 13.0 - 9.0) } else { (lcg(&mut s) * 8.0 - 4.0).exp() }).collect();
        let logit: Vec<f64> = (0..rows * n).map(|_| lcg(&mut s) * 10.0 - 5.0).collect();
        let lib: Vec<f64> = (0..rows).map(|r| 500.0 * (r + 1) as f64).collect();
        if extreme && dist == Distribution::Nb {
            let p = |i: usize| {
                let mu = rho[i].clamp(1e-8, 1.0 - 1e-7) * lib[i / n];
                mu / (mu + theta[i].max(1e-7))
            };
            let (low, high) = ((0..rows * n).filter(|&i| p(i) < 1e-7).count(), (0..rows * n).filter(|&i| p(i) > 1.0 - 1e-7).count());
            assert!(low > 100 && high > 100, "the extreme case must reach both clamps ({low} low, {high} high)");
        }
        let dx: Vec<f64> = dense.iter().map(|&v| v as f64).collect();
        let mut exact = vec![0f64; rows];
        ops::likelihood(dist, &dx, &rho, &theta, Some(&logit), &lib, n, 1.0, &mut exact, None);
        let hr = HostRows::gather(&x, &(0..rows).collect::<Vec<_>>());
        // Row i against decoded row i and its own θ row (the θ "table" has one row per cell here).
        let idx: Vec<u32> = (0..rows as u32).collect();
        let sp = ops::softplus_all(&logit);
        let mut fast = vec![0f64; rows];
        ops::likelihood_score(dist, &hr.ptr, &hr.idx, &hr.val, &idx, &idx, &rho, &theta, Some((&logit, &sp)), &lib, n, &mut fast);
        for r in 0..rows {
            assert!((fast[r] - exact[r]).abs() <= 2e-6 * exact[r].abs(), "{dist:?} row {r}: {} vs {}", fast[r], exact[r]);
        }
    }
}

/// The label transfer's two parts of a score (the count part, and the zero-count part as the score of a
/// row without counts) sum to the whole score: bit for bit in f64, where no storage rounding enters,
/// for ZINB and NB, with the count terms computed and cached and rows read through `row_of`; and
/// through the f32 CPU backend within the f32 rounding of the stored values.
#[test]
fn score_parts_sum_to_the_score() {
    let (rows, n, cells) = (9, 1500, 4);
    let mut s = 5u64;
    let (x, _) = random_counts(cells, n, 0.2, 25.0, &mut s);
    let rho = random_profiles(rows, n, 2, &mut s);
    let theta: Vec<f64> = (0..2 * n).map(|_| (lcg(&mut s) * 8.0 - 4.0).exp()).collect();
    let logit: Vec<f64> = (0..rows * n).map(|_| lcg(&mut s) * 10.0 - 5.0).collect();
    let sp = ops::softplus_all(&logit);
    let lib: Vec<f64> = (0..rows).map(|r| 400.0 * (r + 1) as f64).collect();
    let batch: Vec<u32> = (0..rows as u32).map(|i| i % 2).collect();
    let decoded: Vec<u32> = (0..rows as u32).rev().collect();
    let row_of: Vec<u32> = (0..rows as u32).map(|i| i % cells as u32).collect();
    let hr = HostRows::gather(&x, &row_of.iter().map(|&c| c as usize).collect::<Vec<_>>());
    let stored = HostRows::all(&x);
    let none = HostRows::without_counts(rows);
    for dist in [Distribution::Zinb, Distribution::Nb] {
        let lg = Some((&logit[..], &sp[..]));
        let mut whole = vec![0f64; rows];
        ops::likelihood_score(dist, &hr.ptr, &hr.idx, &hr.val, &decoded, &batch, &rho, &theta, lg, &lib, n, &mut whole);
        let score = |part: ScorePart, x: &HostRows, row_of: Option<&[u32]>, counts: Option<&[f64]>| {
            let mut out = vec![0f64; rows];
            #[rustfmt::skip]
            ops::likelihood_score_cached(part, dist, &x.ptr, &x.idx, &x.val, row_of, counts, &decoded, &batch, &rho, &theta, lg, &lib, n, &mut out);
            out
        };
        let zero = score(ScorePart::All, &none, None, none.count_terms.as_deref());
        let cached = ops::count_terms(&hr.ptr, &hr.idx, &hr.val, &batch, &theta.iter().map(|&v| v as f32).collect::<Vec<_>>(), n);
        for (row_of, x, counts) in [(None, &hr, None), (None, &hr, Some(&cached[..])), (Some(&row_of[..]), &stored, Some(&cached[..]))] {
            let part = score(ScorePart::Counts, x, row_of, counts);
            for i in 0..rows {
                assert_eq!(
                    (zero[i] + part[i]).to_bits(),
                    whole[i].to_bits(),
                    "{dist:?} row {i}: {} + {} vs {}",
                    zero[i],
                    part[i],
                    whole[i]
                );
            }
        }
        // The f32 backend stores each part rounded to f32; `counts_only` rows give the counts' part,
        // also when they are stored rows addressed through `row_of` (gathered on the CPU).
        let be = Cpu::<f32>::new();
        let (rb, tb, lb, sb, libb) = (be.upload(&rho), be.upload(&theta), be.upload(&logit), be.upload(&sp), be.upload(&lib));
        let (mut w, mut z, mut c, mut c2) = (be.zeros(rows), be.zeros(rows), be.zeros(rows), be.zeros(rows));
        let counts_only = HostRows { counts_only: true, ..hr.clone() };
        let stored_counts_only = HostRows { counts_only: true, row_of: Some(row_of.clone()), ..stored.clone() };
        be.likelihood_score(dist, &hr, &decoded, &batch, &rb, &tb, Some((&lb, &sb)), &libb, n, &mut w);
        be.likelihood_score(dist, &none, &decoded, &batch, &rb, &tb, Some((&lb, &sb)), &libb, n, &mut z);
        be.likelihood_score(dist, &counts_only, &decoded, &batch, &rb, &tb, Some((&lb, &sb)), &libb, n, &mut c);
        be.likelihood_score(dist, &stored_counts_only, &decoded, &batch, &rb, &tb, Some((&lb, &sb)), &libb, n, &mut c2);
        let (w, z, c) = (be.download(&w), be.download(&z), be.download(&c));
        assert_eq!(c, be.download(&c2), "{dist:?}: counts' part of stored rows through row_of");
        for i in 0..rows {
            let ulp = |v: f64| (v.abs() as f32).to_bits().checked_add(1).map_or(0.0, |b| f32::from_bits(b) as f64 - v.abs() as f32 as f64);
            let bound = ulp(w[i]) + ulp(z[i]) + ulp(c[i]);
            assert!((z[i] + c[i] - w[i]).abs() <= bound, "{dist:?} f32 row {i}: {} + {} vs {} (bound {bound})", z[i], c[i], w[i]);
        }
    }
}

/// The CPU's fused decode-and-score (split softmax, softplus and scoring row by row) against the three
/// ops in turn: the same bits, for ZINB and NB, with a per-batch θ table, rows that repeat a cell, and
/// cached count terms.
#[test]
fn fused_decode_score_matches_the_composed_ops() {
    let (rows, n, batches) = (13, 2049, 3);
    let mut s = 21u64;
    let mut dense = vec![0f32; rows * n];
    for v in dense.iter_mut() {
        if lcg(&mut s) < 0.15 {
            *v = (lcg(&mut s) * 40.0).floor() as f32 + 1.0;
        }
    }
    // Rows 3-5 repeat one cell, as a query's candidates do.
    for r in 4..6 {
        let first = dense[3 * n..4 * n].to_vec();
        dense[r * n..(r + 1) * n].copy_from_slice(&first);
    }
    let x = Csr::from_dense(rows, n, &dense);
    let r: Vec<f32> = (0..rows * n).map(|_| (lcg(&mut s) * 16.0 - 8.0) as f32).collect();
    let logit: Vec<f32> = (0..rows * n).map(|_| (lcg(&mut s) * 60.0 - 30.0) as f32).collect();
    let theta: Vec<f32> = (0..batches * n).map(|_| (lcg(&mut s) * 12.0 - 6.0).exp() as f32).collect();
    let lib: Vec<f32> = (0..rows).map(|i| 300.0 * (i + 1) as f32).collect();
    let batch: Vec<u32> = (0..rows as u32).map(|i| (i * 7 % 3).min(batches as u32 - 1)).collect();
    let group: Vec<u8> = (0..n).map(|g| (g % 5 == 0) as u8).collect();
    let weight = [0.3, 0.7];
    let hr = HostRows::gather(&x, &(0..rows).collect::<Vec<_>>());
    let idx: Vec<u32> = (0..rows as u32).collect();
    for dist in [Distribution::Zinb, Distribution::Nb] {
        let mut rho = vec![0f32; rows * n];
        ops::split_softmax_fwd(&r, &group, weight, &mut rho, n);
        let sp = ops::softplus_all(&logit);
        let mut want = vec![0f32; rows];
        ops::likelihood_score(dist, &hr.ptr, &hr.idx, &hr.val, &idx, &batch, &rho, &theta, Some((&logit, &sp)), &lib, n, &mut want);
        let cached = ops::count_terms(&hr.ptr, &hr.idx, &hr.val, &batch, &theta, n);
        for counts in [None, Some(&cached[..])] {
            let mut got = vec![f32::NAN; rows];
            ops::decode_score(dist, &hr.ptr, &hr.idx, &hr.val, counts, &r, &group, weight, Some(&logit), &batch, &theta, &lib, n, &mut got);
            for i in 0..rows {
                assert_eq!(
                    got[i].to_bits(),
                    want[i].to_bits(),
                    "{dist:?} row {i} (cached terms: {}): {} vs {}",
                    counts.is_some(),
                    got[i],
                    want[i]
                );
            }
        }
    }
}

/// One cell scored against several decoded rows (the candidate and transfer layouts): consecutive
/// identical count rows share their count-only terms, which must not leak across cells or batches.
#[test]
fn scoring_repeated_cells_matches_exact_likelihood() {
    let (n, s) = (2000, 3);
    let mut st = 21u64;
    let cells = 4;
    let mut dense = vec![0f32; cells * n];
    for v in dense.iter_mut() {
        if lcg(&mut st) < 0.15 {
            *v = (lcg(&mut st) * 40.0).floor() as f32 + 1.0;
        }
    }
    // Cells 2 and 3 have the same counts: a run across them must still restart at the batch change.
    let (a, b) = dense.split_at_mut(3 * n);
    b.copy_from_slice(&a[2 * n..3 * n]);
    let x = Csr::from_dense(cells, n, &dense);
    let decoded = 6;
    // ρ ≥ ~1e-7 keeps p = μ/(μ+θ) inside the exact NB's clamp [1e-7, 1 − 1e-7], which the fast
    // scoring path does not apply (the default ZINB has no such clamp).
    let mut rho: Vec<f64> = (0..decoded * n).map(|_| lcg(&mut st).powi(3) + 1e-4).collect();
    for r in 0..decoded {
        let t: f64 = rho[r * n..(r + 1) * n].iter().sum();
        rho[r * n..(r + 1) * n].iter_mut().for_each(|v| *v /= t);
    }
    let theta: Vec<f64> = (0..s * n).map(|_| (lcg(&mut st) * 8.0 - 4.0).exp()).collect();
    let logit: Vec<f64> = (0..decoded * n).map(|_| lcg(&mut st) * 10.0 - 5.0).collect();
    let sp = ops::softplus_all(&logit);
    // (cell, decoded row, batch) per scored row: runs of one cell, a batch change inside a run of
    // identical counts (cells 2 → 3), and a cell coming back after another.
    let plan: Vec<(usize, u32, u32)> =
        vec![(0, 0, 0), (0, 1, 0), (0, 2, 0), (1, 3, 1), (1, 4, 1), (2, 5, 2), (3, 0, 2), (3, 1, 0), (0, 5, 0), (0, 4, 0)];
    let hr = HostRows::gather(&x, &plan.iter().map(|p| p.0).collect::<Vec<_>>());
    let rows: Vec<u32> = plan.iter().map(|p| p.1).collect();
    let batch: Vec<u32> = plan.iter().map(|p| p.2).collect();
    let lib: Vec<f64> = (0..plan.len()).map(|r| 300.0 + 100.0 * r as f64).collect();
    for dist in [Distribution::Zinb, Distribution::Nb] {
        let mut fast = vec![0f64; plan.len()];
        ops::likelihood_score(dist, &hr.ptr, &hr.idx, &hr.val, &rows, &batch, &rho, &theta, Some((&logit, &sp)), &lib, n, &mut fast);
        for (r, &(c, d, bt)) in plan.iter().enumerate() {
            let (d, bt) = (d as usize, bt as usize);
            let dx: Vec<f64> = dense[c * n..(c + 1) * n].iter().map(|&v| v as f64).collect();
            let mut exact = [0f64];
            ops::likelihood(
                dist,
                &dx,
                &rho[d * n..(d + 1) * n],
                &theta[bt * n..(bt + 1) * n],
                Some(&logit[d * n..(d + 1) * n]),
                &[lib[r]],
                n,
                1.0,
                &mut exact,
                None,
            );
            assert!((fast[r] - exact[0]).abs() <= 2e-6 * exact[0].abs(), "{dist:?} scored row {r}: {} vs {}", fast[r], exact[0]);
        }
        // The label transfer's path: count-only terms computed once per cell (here per scored row, in
        // one call per row, so no run sharing) and passed in, must give the same bits.
        let theta32: Vec<f32> = theta.iter().map(|&v| v as f32).collect();
        let cached: Vec<f64> = (0..plan.len())
            .map(|r| {
                let (p0, p1) = (hr.ptr[r], hr.ptr[r + 1]);
                ops::count_terms(&[0, p1 - p0], &hr.idx[p0..p1], &hr.val[p0..p1], &batch[r..r + 1], &theta32, n)[0]
            })
            .collect();
        let lg = Some((&logit[..], &sp[..]));
        let cached_score = |h: &HostRows, row_of: Option<&[u32]>| {
            let mut out = vec![0f64; plan.len()];
            ops::likelihood_score_cached(
                ScorePart::All,
                dist,
                &h.ptr,
                &h.idx,
                &h.val,
                row_of,
                Some(&cached),
                &rows,
                &batch,
                &rho,
                &theta,
                lg,
                &lib,
                n,
                &mut out,
            );
            out
        };
        assert_eq!(cached_score(&hr, None), fast, "{dist:?}: cached count terms change the scores");
        // The transfer's other shortcut: every cell stored once, the scored rows pointing at theirs.
        let row_of: Vec<u32> = plan.iter().map(|p| p.0 as u32).collect();
        let in_place = cached_score(&HostRows::all(&x), Some(&row_of));
        assert_eq!(in_place, fast, "{dist:?}: reading the stored rows in place changes the scores");
    }
}

#[test]
fn candidate_choice_matches_naive_scoring() {
    let be = Cpu::<f32>::new();
    let (n, s, l) = (40, 2, 3);
    let cfg = ModelConfig {
        n_genes: n,
        n_batches: s,
        outer_dims: vec![8],
        inner_dims: vec![6],
        latent: l,
        library_dims: vec![5],
        decoder_dims: vec![6, 8],
        distribution: Distribution::Zinb,
        dropout: 0.1,
        lib_mu_add: 5.0,
        homologous: (0..25).collect(),
    };
    let mut rng = <rand::rngs::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(3);
    let model = Model::new(&be, cfg, &mut rng);
    let mut st = 5u64;
    let nc = 30;
    let ctx = Representation {
        latent: l,
        inter_dim: 8,
        z_mu: (0..nc * l).map(|_| (lcg(&mut st) * 4.0 - 2.0) as f32).collect(),
        z_sig: vec![1e-3; nc * l], // nearly deterministic samples so the naive path can reproduce them
        inter: vec![0.0; nc * 8],
        l_mu: vec![5.0; nc],
        l_sig: vec![0.1; nc],
    };
    let dense: Vec<f32> = (0..6 * n).map(|_| if lcg(&mut st) < 0.3 { (lcg(&mut st) * 10.0).floor() as f32 + 1.0 } else { 0.0 }).collect();
    let counts = Csr::from_dense(6, n, &dense);
    let neigh: Vec<Vec<u32>> = (0..6).map(|c| (0..7).map(|j| ((c * 5 + j * 3) % nc) as u32).collect()).collect();
    let queries: Vec<Query> =
        (0..6).map(|c| Query { cell: c, batch: (c % 2) as u32, lib: 200.0 + 50.0 * c as f64, neighbours: &neigh[c] }).collect();
    let (chosen, nlls, _) = choose(&be, &model, &ctx, &counts, &queries, false, &mut rng);
    for (q, (&c, v)) in queries.iter().zip(chosen.iter().zip(&nlls)) {
        // Naive: one candidate at a time at its latent mean, exact likelihood.
        let naive: Vec<f64> = q
            .neighbours
            .iter()
            .map(|&j| {
                let z: Vec<f64> = ctx.z_mu[j as usize * l..(j as usize + 1) * l].iter().map(|&v| v as f64).collect();
                let (rho, logit) = model.decode(&be, &be.upload(&z), q.batch, 1);
                let theta = model.theta_rows(&be, &[q.batch]);
                let x: Vec<f64> = counts.rows_dense(q.cell..q.cell + 1).iter().map(|&v| v as f64).collect();
                let mut out = be.zeros(1);
                be.likelihood(
                    Distribution::Zinb,
                    &be.upload(&x),
                    &rho,
                    &theta,
                    logit.as_ref(),
                    &be.upload(&[q.lib]),
                    n,
                    1.0,
                    &mut out,
                    None,
                );
                be.download(&out)[0]
            })
            .collect();
        let best = (0..naive.len()).fold(0, |b, j| if naive[j] < naive[b] { j } else { b });
        assert_eq!(c, best, "cell {}: chose {c} ({:?}) vs naive {best} ({naive:?})", q.cell, v);
        for (a, b) in v.iter().zip(&naive) {
            assert!((a - b).abs() < 1e-2 + 1e-4 * b.abs(), "{a} vs {b}");
        }
    }
}

#[test]
fn unassigned_rule_and_cross_species_misfit() {
    use scspecies::transfer::{HomologousCounts, cross_species_misfit, flag_outliers};
    // Robust z over all cells: median 1, MAD 0.1 → threshold 1 + 2·0.14826 ≈ 1.297.
    let s = [1.0, 1.0, 1.0, 0.9, 1.1, 1.3, 5.0];
    assert_eq!(flag_outliers(&s, 2.0), vec![false, false, false, false, false, true, true]);
    assert_eq!(flag_outliers(&[1.0; 4], 2.0), vec![false; 4]);
    // Context: two cells with profiles over 3 homologous genes (columns 0, 2, 3 of 4).
    let ctx = Csr::from_dense(2, 4, &[1., 9., 1., 2., 3., 0., 1., 0.]);
    // Target columns 1, 0, 2 correspond to them.
    let tgt = Csr::from_dense(2, 3, &[1., 2., 1., 0., 4., 0.]);
    let hom = HomologousCounts { context: &ctx, context_cols: &[0, 2, 3], target_cols: &[1, 0, 2] };
    let m = cross_species_misfit(&hom, &tgt, &[0, 1, 1, 0], 2, 1);
    // Cell 0 against context cell 0: q = (1, 2, 1)/4 over (h0, h1, h2), p = (1, 1, 2)/4.
    let (h, fl) = (3.0, 0.001 / 3.0);
    let p = |v: f64| 0.999 * v + fl;
    let want0 = (1.0 * ((0.25f64) / p(0.25)).ln() + 2.0 * (0.5 / p(0.25)).ln() + 1.0 * (0.25 / p(0.5)).ln()) / 4.0;
    assert!((m[0] - want0).abs() < 1e-12, "{} vs {want0}", m[0]);
    // Cell 1 (all counts on h0) against context cell 1 (profile (3, 1, 0)/4 → h0 = 0.75).
    let want1 = (0.999f64 * 0.75 + fl).recip().ln();
    assert!((m[1] - want1).abs() < 1e-12, "{} vs {want1}", m[1]);
    let _ = h;
}
