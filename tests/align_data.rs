//! The data-level kNN against a brute-force reference (random data, ties, zero rows) and the
//! aligned-cell selection against the reference's worked examples.

use scspecies::align::agreement::{aligned, predict, top_percent};
use scspecies::data::Csr;
use scspecies::knn::data_level::cosine_knn;

fn lcg(s: &mut u64) -> f64 {
    *s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (*s >> 11) as f64 / (1u64 << 53) as f64
}

fn random_counts(rows: usize, cols: usize, seed: u64, zero_rows: &[usize]) -> Csr {
    let mut s = seed;
    let mut d = vec![0f32; rows * cols];
    for r in 0..rows {
        if zero_rows.contains(&r) {
            continue;
        }
        for c in 0..cols {
            let u = lcg(&mut s);
            if u < 0.35 {
                d[r * cols + c] = (lcg(&mut s) * 20.0).floor() as f32 + 1.0;
            }
        }
    }
    Csr::from_dense(rows, cols, &d)
}

/// sklearn semantics in plain f64: 1 − cos on log1p, zero rows at distance 1, sorted by (distance, index).
fn brute(ctx: &Csr, cc: &[usize], tgt: &Csr, tc: &[usize], k: usize) -> Vec<Vec<(f64, u32)>> {
    let feat = |m: &Csr, r: usize, cols: &[usize]| -> Vec<f64> {
        let d = m.rows_dense(r..r + 1);
        let v: Vec<f64> = cols.iter().map(|&c| (d[c] as f64).ln_1p()).collect();
        let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if n > 0.0 { v.iter().map(|x| x / n).collect() } else { v }
    };
    let cf: Vec<Vec<f64>> = (0..ctx.n_rows).map(|r| feat(ctx, r, cc)).collect();
    (0..tgt.n_rows)
        .map(|t| {
            let f = feat(tgt, t, tc);
            let mut all: Vec<(f64, u32)> =
                cf.iter().enumerate().map(|(j, c)| (1.0 - f.iter().zip(c).map(|(a, b)| a * b).sum::<f64>(), j as u32)).collect();
            all.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap().then(a.1.cmp(&b.1)));
            all.truncate(k);
            all
        })
        .collect()
}

#[test]
fn knn_matches_brute_force_across_blocks() {
    // 4,300 context cells span three context blocks (2,048); 1,100 targets span three target blocks (512).
    let ctx = random_counts(4300, 40, 1, &[5, 2100]);
    let tgt = random_counts(1100, 50, 2, &[3]);
    let cc: Vec<usize> = (0..30).collect();
    let tc: Vec<usize> = (10..40).rev().collect(); // a permuted gene correspondence
    let k = 25;
    let (idx, dist) = cosine_knn(&ctx, &cc, &tgt, &tc, k);
    let want = brute(&ctx, &cc, &tgt, &tc, k);
    for t in 0..tgt.n_rows {
        for j in 0..k {
            let (wd, wi) = want[t][j];
            assert!((dist[t * k + j] as f64 - wd).abs() < 1e-6, "target {t} rank {j}: distance {} vs {wd}", dist[t * k + j]);
            // Indices agree unless the distances are tied to rounding.
            if idx[t * k + j] != wi {
                let other = want[t].iter().find(|x| x.1 == idx[t * k + j]).map(|x| x.0).unwrap_or(f64::NAN);
                assert!((other - wd).abs() < 1e-12, "target {t} rank {j}: index {} vs {wi}", idx[t * k + j]);
            }
        }
    }
    // The zero target row: distance 1 to everything, so neighbours are 0..k in index order.
    assert!((0..k).all(|j| idx[3 * k + j] == j as u32 && dist[3 * k + j] == 1.0));
}

/// Thousands of context cells within ~1e-6 of each other in cosine: the f32 screen cannot order them,
/// so this checks that every true neighbour survives it and the exact f64 re-scoring orders them.
#[test]
fn knn_is_exact_among_near_ties() {
    let (genes, n) = (40, 3000);
    let base: Vec<f32> = (0..genes).map(|g| 500.0 + 37.0 * g as f32).collect();
    let mut d = Vec::with_capacity(n * genes);
    for i in 0..n {
        let mut row = base.clone();
        row[i % genes] += 1.0 + (i / genes) as f32; // a tiny, cell-specific change of one large count
        d.extend_from_slice(&row);
    }
    let ctx = Csr::from_dense(n, genes, &d);
    let mut t = base.clone();
    t[7] += 30.0;
    let tgt = Csr::from_dense(1, genes, &t);
    let cols: Vec<usize> = (0..genes).collect();
    let k = 60;
    let (idx, _) = cosine_knn(&ctx, &cols, &tgt, &cols, k);
    let want = brute(&ctx, &cols, &tgt, &cols, k);
    for j in 0..k {
        if idx[j] != want[0][j].1 {
            let mine = brute(&ctx, &cols, &tgt, &cols, n)[0].iter().find(|x| x.1 == idx[j]).unwrap().0;
            assert!((mine - want[0][j].0).abs() < 1e-15, "rank {j}: index {} vs {}", idx[j], want[0][j].1);
        }
    }
    // All context cells identical: every similarity ties, the neighbours are 0..k by index.
    let same = Csr::from_dense(n, genes, &base.repeat(n));
    let (idx, dist) = cosine_knn(&same, &cols, &tgt, &cols, k);
    assert_eq!(idx, (0..k as u32).collect::<Vec<_>>());
    assert!(dist.iter().all(|&x| x == dist[0]));
}

#[test]
fn knn_ties_go_to_the_lower_index() {
    // Context rows 0..6 are three pairs of identical cells; the target equals row 2 (= row 3).
    let d = [1., 0., 2., 1., 0., 2., 0., 3., 1., 0., 3., 1., 5., 5., 0., 5., 5., 0.];
    let ctx = Csr::from_dense(6, 3, &d);
    let tgt = Csr::from_dense(1, 3, &[0., 3., 1.]);
    let cols = [0, 1, 2];
    let (idx, dist) = cosine_knn(&ctx, &cols, &tgt, &cols, 6);
    assert_eq!(&idx[..2], &[2, 3]);
    assert_eq!(dist[0], dist[1]);
    assert!(dist[0].abs() < 1e-7);
    assert!(idx[2..4] == [0, 1] || idx[2..4] == [4, 5]);
    // k larger than the context: clamped.
    let (idx, _) = cosine_knn(&ctx, &cols, &tgt, &cols, 50);
    assert_eq!(idx.len(), 6);
}

#[test]
fn selection_matches_the_reference_worked_examples() {
    // n cells all predicted as label 0 with equal counts: p = 20 selects 2 of 5, 3 of 10, 21 of 100.
    for (n, want) in [(5usize, 2usize), (10, 3), (100, 21)] {
        let top = top_percent(&vec![0; n], &vec![7; n], 1);
        let sel = aligned(&top, 20.0);
        assert_eq!(sel.iter().filter(|&&s| s).count(), want, "n = {n}");
        // Ties rank by cell index: the highest indices are selected.
        assert!(sel[n - 1] && !sel[0]);
    }
    // Higher agreement ranks first regardless of index.
    let top = top_percent(&[0, 0, 0, 0, 1], &[25, 3, 3, 3, 9], 2);
    assert_eq!(top, vec![0.0, 0.75, 0.5, 0.25, 0.0]);
    assert_eq!(aligned(&top, 20.0), vec![true, false, false, false, true]);
}

#[test]
fn predicted_label_is_first_reaching_the_maximum() {
    let labels = [0u32, 1, 2, 1, 0, 2];
    // Neighbours 5, 3, 0, 1, 2: counts 2→1, 1→2, 0→1, ... label 2 (cell 5) appears first with count 2? no:
    // labels in order: 2, 1, 0, 1, 2 → counts {2: 2, 1: 2, 0: 1}; the first to appear (2) wins the tie.
    let (p, c) = predict(&[5, 3, 0, 1, 2], 5, 5, &labels, 3);
    assert_eq!((p[0], c[0]), (2, 2));
    // Only the first k of the stored neighbours count.
    let (p, c) = predict(&[1, 3, 0, 5, 2, 4], 6, 2, &labels, 3);
    assert_eq!((p[0], c[0]), (1, 2));
}
