//! A 2-D UMAP layout (McInnes et al. 2018) of an embedding, written here because no maintained
//! pure-Rust crate fits: the fuzzy neighbour graph of [`graph::fuzzy_connectivities`], then UMAP's
//! stochastic layout (attraction along edges sampled by weight, 5 negative samples per positive,
//! min_dist 0.1 → a = 1.577, b = 0.895, linearly decaying step). One difference from umap-learn: the
//! start is the first two principal components (scaled to ±10) instead of a spectral layout.
//! Single-threaded, so a seed gives the same picture on any machine.

use super::graph;
use super::metrics::pca_dense;
use rand::{RngExt, SeedableRng};

#[allow(clippy::needless_range_loop)] // the two coordinates of two points, side by side
pub fn umap(x: &[f64], d: usize, n_neighbours: usize, seed: u64) -> Vec<[f64; 2]> {
    let n = x.len() / d;
    if n < 3 {
        return vec![[0.0, 0.0]; n];
    }
    let k = (n_neighbours.max(2) - 1).min(n - 1);
    let (idx, dist) = crate::knn::self_knn(x, d, k);
    let g = graph::fuzzy_connectivities(&idx, &dist, k, k);
    let (a, b) = (1.577, 0.8951);
    let n_epochs = if n <= 10_000 { 500 } else { 200 };
    let mut edges: Vec<(usize, usize, f64)> = Vec::new();
    for (i, nb) in g.adj.iter().enumerate() {
        for &(j, w) in nb {
            edges.push((i, j as usize, w));
        }
    }
    let wmax = edges.iter().map(|e| e.2).fold(0.0, f64::max);
    edges.retain(|e| e.2 >= wmax / n_epochs as f64);
    let eps: Vec<f64> = edges.iter().map(|e| wmax / e.2).collect();
    let neg_rate = 5.0;
    let eps_neg: Vec<f64> = eps.iter().map(|e| e / neg_rate).collect();
    let mut next = eps.clone();
    let mut next_neg = eps_neg.clone();
    // Start: two principal components, scaled to ±10, with a little noise.
    let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(seed);
    let (pc, _) = pca_dense(x, d, 2);
    let pc2: Vec<f64> = if d >= 2 { pc } else { pc.iter().flat_map(|&v| [v, 0.0]).collect() };
    let m = pc2.iter().fold(0f64, |acc, v| acc.max(v.abs())).max(1e-12);
    let mut y: Vec<[f64; 2]> = (0..n)
        .map(|i| [10.0 * pc2[2 * i] / m + rng.random_range(-1e-4..1e-4), 10.0 * pc2[2 * i + 1] / m + rng.random_range(-1e-4..1e-4)])
        .collect();
    let clip = |v: f64| v.clamp(-4.0, 4.0);
    for epoch in 0..n_epochs {
        let alpha = 1.0 - epoch as f64 / n_epochs as f64;
        let e = epoch as f64;
        for (s, &(i, j, _)) in edges.iter().enumerate() {
            if next[s] > e {
                continue;
            }
            let d2 = (y[i][0] - y[j][0]).powi(2) + (y[i][1] - y[j][1]).powi(2);
            if d2 > 0.0 {
                let coef = -2.0 * a * b * d2.powf(b - 1.0) / (a * d2.powf(b) + 1.0);
                for c in 0..2 {
                    let gr = clip(coef * (y[i][c] - y[j][c]));
                    y[i][c] += gr * alpha;
                    y[j][c] -= gr * alpha;
                }
            }
            next[s] += eps[s];
            let n_neg = ((e - next_neg[s]) / eps_neg[s]).floor().max(0.0) as usize;
            for _ in 0..n_neg {
                let q = rng.random_range(0..n);
                if q == i {
                    continue;
                }
                let d2 = (y[i][0] - y[q][0]).powi(2) + (y[i][1] - y[q][1]).powi(2);
                let coef = if d2 > 0.0 { 2.0 * b / ((0.001 + d2) * (a * d2.powf(b) + 1.0)) } else { 0.0 };
                for c in 0..2 {
                    let gr = if coef > 0.0 { clip(coef * (y[i][c] - y[q][c])) } else { 4.0 };
                    y[i][c] += gr * alpha;
                }
            }
            next_neg[s] += n_neg as f64 * eps_neg[s];
        }
    }
    y
}
