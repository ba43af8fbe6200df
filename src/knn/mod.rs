//! Exact nearest-neighbour searches, one module for every caller. Each returns, per query row, the `k`
//! nearest rows in order of distance, ties to the smaller index.
//! - [`data_level`]: the data-level kNN of the alignment (cosine on sparse counts of homologous genes,
//!   f32 screen then f64 re-scoring, screened on the device where the backend has one);
//! - [`latent_knn`] / [`latent_knn_on`]: the label transfer's candidates (Euclidean in the latent space,
//!   f32, screened on the device where it can be);
//! - [`self_knn`]: a neighbour graph on an embedding (Euclidean, f64, each row against the others);
//! - [`cosine_dense`]: the cross-species LFC's matched cells (cosine on dense f64 rows).

pub mod data_level;

use rayon::prelude::*;

/// A distance the searches order by: a total order (no NaN reaches them; −0.0 cannot arise from sums
/// of squares, and the cosine keys keep the sign the search always used).
pub trait Distance: Copy + Send {
    fn order(&self, other: &Self) -> std::cmp::Ordering;
}
impl Distance for f32 {
    fn order(&self, other: &Self) -> std::cmp::Ordering {
        self.total_cmp(other)
    }
}
impl Distance for f64 {
    fn order(&self, other: &Self) -> std::cmp::Ordering {
        self.total_cmp(other)
    }
}

/// The first `k` of `(distance, index)` pairs by distance then index, in that order.
pub fn first_k<F: Distance>(mut d: Vec<(F, u32)>, k: usize) -> Vec<(F, u32)> {
    let cmp = |a: &(F, u32), b: &(F, u32)| a.0.order(&b.0).then(a.1.cmp(&b.1));
    if k < d.len() {
        d.select_nth_unstable_by(k, cmp);
        d.truncate(k);
    }
    d.sort_by(cmp);
    d
}

/// Squared Euclidean distance in f32, summed in order: the one [`latent_knn`] ranks by.
#[inline]
fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>()
}

/// The `k` nearest context cells of every target cell in latent space (Euclidean), ascending.
pub fn latent_knn(ctx: &[f32], tgt: &[f32], dim: usize, k: usize) -> Vec<u32> {
    let k = k.min(ctx.len() / dim);
    tgt.par_chunks(dim)
        .flat_map_iter(|t| {
            first_k(ctx.chunks(dim).enumerate().map(|(i, c)| (sq_dist(t, c), i as u32)).collect(), k).into_iter().map(|x| x.1)
        })
        .collect()
}

/// [`latent_knn`] with its search screened on `be`'s device where it has a screen
/// ([`crate::engine::Backend::knn_screen`]). Distance as a dot product of augmented vectors: with a' = [2a, −1] and
/// b' = [b, ‖b‖²], a'·b' = ‖a‖² − ‖a − b‖², so a row's highest a'·b' are its nearest cells. The screened
/// candidates are ranked again by latent_knn's own f32 distances; a row whose l-th screened value lies
/// within the rounding margin of its k-th is searched in full on the host. The result is latent_knn's.
pub fn latent_knn_on<B: crate::engine::Backend>(be: &B, ctx: &[f32], tgt: &[f32], dim: usize, k: usize) -> Vec<u32> {
    let (nc, nt) = (ctx.len() / dim, tgt.len() / dim);
    let k = k.min(nc);
    let l = (2 * k + 64).min(nc);
    let sq = |v: &[f32]| v.iter().map(|&x| x as f64 * x as f64).sum::<f64>();
    let bn: Vec<f64> = ctx.chunks(dim).map(sq).collect();
    let h = dim + 1;
    let augment = |m: &[f32], r: std::ops::Range<usize>, last: &dyn Fn(usize) -> f32, scale: f32| {
        let mut o = Vec::with_capacity(r.len() * h);
        for i in r {
            o.extend(m[i * dim..(i + 1) * dim].iter().map(|&x| scale * x));
            o.push(last(i));
        }
        o
    };
    let trows = |r: std::ops::Range<usize>| augment(tgt, r, &|_| -1.0, 2.0);
    let crows = |r: std::ops::Range<usize>| augment(ctx, r, &|i| bn[i] as f32, 1.0);
    let screen = if k > 0 && nt > 0 { be.knn_screen(nt, nc, h, l, &trows, &crows) } else { None };
    let Some(s) = screen else { return latent_knn(ctx, tgt, dim, k) };
    // |screened − exact| ≤ error·‖a'‖·‖b'‖ (Cauchy–Schwarz on the unit-vector bound), and latent_knn's f32
    // distance is within γ·(‖a‖ + ‖b‖)² of the exact one: twice both is the margin below the k-th.
    let bmax = bn.iter().fold(0f64, |m, &v| m.max(v)).sqrt();
    let bp = (bmax * bmax + bmax.powi(4)).sqrt();
    let gamma = (dim as f64 + 2.0) * f64::powi(2.0, -24);
    tgt.par_chunks(dim)
        .enumerate()
        .flat_map_iter(|(t, a)| {
            let an = sq(a).sqrt();
            let margin = 2.02 * (s.error as f64 * (4.0 * an * an + 1.0).sqrt() * bp + gamma * (an + bmax).powi(2));
            let list = &s.best[t * l..(t + 1) * l];
            let floor = list[k - 1].0 as f64 - margin;
            let d: Vec<(f32, u32)> = if l < nc && list[l - 1].0 as f64 >= floor {
                ctx.chunks(dim).enumerate().map(|(i, c)| (sq_dist(a, c), i as u32)).collect()
            } else {
                list.iter().filter(|c| c.0 as f64 >= floor).map(|&(_, i)| (sq_dist(a, &ctx[i as usize * dim..][..dim]), i)).collect()
            };
            first_k(d, k).into_iter().map(|x| x.1)
        })
        .collect()
}

/// The `k` nearest other rows of every row of `x` [n×d] (Euclidean, f64), ascending, with distances.
pub fn self_knn(x: &[f64], d: usize, k: usize) -> (Vec<u32>, Vec<f64>) {
    let n = x.len() / d;
    let k = k.min(n.saturating_sub(1));
    let rows: Vec<Vec<(f64, u32)>> = (0..n)
        .into_par_iter()
        .map(|i| {
            let xi = &x[i * d..(i + 1) * d];
            let all: Vec<(f64, u32)> = (0..n)
                .filter(|&j| j != i)
                .map(|j| (xi.iter().zip(&x[j * d..(j + 1) * d]).map(|(a, b)| (a - b) * (a - b)).sum::<f64>(), j as u32))
                .collect();
            // Kept until every row is done: without the shrink each row would hold all n candidates
            // (n² pairs in all: 40 GB for the 50,000 cells of `evaluate`).
            let mut best = first_k(all, k);
            best.shrink_to_fit();
            best
        })
        .collect();
    let mut idx = Vec::with_capacity(n * k);
    let mut dist = Vec::with_capacity(n * k);
    for r in rows {
        idx.extend(r.iter().map(|p| p.1));
        dist.extend(r.iter().map(|p| p.0.sqrt()));
    }
    (idx, dist)
}

/// Cosine kNN of the rows of `q` among the rows of `r` (both [·×d], f64).
pub fn cosine_dense(q: &[f64], r: &[f64], d: usize, k: usize) -> Vec<usize> {
    let unit = |v: &[f64]| -> Vec<f64> {
        v.chunks(d)
            .flat_map(|c| {
                let n = c.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-300);
                c.iter().map(move |x| x / n)
            })
            .collect()
    };
    let (qu, ru) = (unit(q), unit(r));
    let k = k.min(r.len() / d);
    qu.chunks(d)
        .flat_map(|a| {
            let s: Vec<(f64, u32)> =
                ru.chunks(d).enumerate().map(|(i, b)| (-a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>(), i as u32)).collect();
            first_k(s, k).into_iter().map(|x| x.1 as usize)
        })
        .collect()
}

pub use data_level::{KnnSpace, data_level_knn};
