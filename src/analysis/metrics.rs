//! Integration metrics on a joint embedding with species as the batch (spec §10, after scib-metrics):
//! clustering agreement (NMI, ARI), silhouettes (cell type, species, isolated labels), graph
//! connectivity, kBET, principal-component regression; aggregated as species mixing, biology
//! conservation and 0.4·mixing + 0.6·bio. All in f64, deterministic for a seed.

use super::graph::{self, Graph};
use rand::SeedableRng;
use rayon::prelude::*;
use serde::Serialize;

/// Entropy-normalised mutual information (arithmetic mean of the entropies, as sklearn's default).
pub fn nmi(a: &[usize], b: &[usize]) -> f64 {
    let (ct, ra, rb, n) = contingency(a, b);
    let h = |v: &[f64]| -v.iter().filter(|&&x| x > 0.0).map(|&x| x / n * (x / n).ln()).sum::<f64>();
    let (ha, hb) = (h(&ra), h(&rb));
    if ha == 0.0 && hb == 0.0 {
        return 1.0;
    }
    let mut mi = 0.0;
    for (i, row) in ct.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            if v > 0.0 {
                mi += v / n * (n * v / (ra[i] * rb[j])).ln();
            }
        }
    }
    (mi / ((ha + hb) / 2.0)).clamp(0.0, 1.0)
}

/// Adjusted Rand index.
pub fn ari(a: &[usize], b: &[usize]) -> f64 {
    let (ct, ra, rb, n) = contingency(a, b);
    let c2 = |x: f64| x * (x - 1.0) / 2.0;
    let index: f64 = ct.iter().flatten().map(|&v| c2(v)).sum();
    let (sa, sb) = (ra.iter().map(|&x| c2(x)).sum::<f64>(), rb.iter().map(|&x| c2(x)).sum::<f64>());
    let expected = sa * sb / c2(n);
    let max = (sa + sb) / 2.0;
    if (max - expected).abs() < 1e-12 {
        return 1.0;
    }
    (index - expected) / (max - expected)
}

#[allow(clippy::type_complexity)]
fn contingency(a: &[usize], b: &[usize]) -> (Vec<Vec<f64>>, Vec<f64>, Vec<f64>, f64) {
    let na = a.iter().max().map_or(0, |&m| m + 1);
    let nb = b.iter().max().map_or(0, |&m| m + 1);
    let mut ct = vec![vec![0f64; nb]; na];
    for (&x, &y) in a.iter().zip(b) {
        ct[x][y] += 1.0;
    }
    let ra: Vec<f64> = ct.iter().map(|r| r.iter().sum()).collect();
    let rb: Vec<f64> = (0..nb).map(|j| ct.iter().map(|r| r[j]).sum()).collect();
    (ct, ra, rb, a.len() as f64)
}

/// Silhouette of every row of `x` [n×d] for the given labels (Euclidean; sklearn's conventions:
/// 0 for cells alone in their label, 0 where a = b = 0).
pub fn silhouette_samples(x: &[f64], d: usize, labels: &[usize]) -> Vec<f64> {
    let n = labels.len();
    let nl = labels.iter().max().map_or(0, |&m| m + 1);
    let mut size = vec![0usize; nl];
    for &l in labels {
        size[l] += 1;
    }
    if size.iter().filter(|&&s| s > 0).count() < 2 {
        return vec![0.0; n];
    }
    (0..n)
        .into_par_iter()
        .map(|i| {
            let xi = &x[i * d..(i + 1) * d];
            let mut sum = vec![0f64; nl];
            for j in 0..n {
                if j != i {
                    sum[labels[j]] += xi.iter().zip(&x[j * d..(j + 1) * d]).map(|(a, b)| (a - b) * (a - b)).sum::<f64>().sqrt();
                }
            }
            let own = labels[i];
            if size[own] < 2 {
                return 0.0;
            }
            let a = sum[own] / (size[own] - 1) as f64;
            let b = (0..nl).filter(|&l| l != own && size[l] > 0).map(|l| sum[l] / size[l] as f64).fold(f64::INFINITY, f64::min);
            let m = a.max(b);
            if m > 0.0 { (b - a) / m } else { 0.0 }
        })
        .collect()
}

/// Cell-type ASW rescaled to [0, 1]: (mean silhouette + 1) / 2.
pub fn silhouette_label(x: &[f64], d: usize, labels: &[usize]) -> f64 {
    let s = silhouette_samples(x, d, labels);
    (s.iter().sum::<f64>() / s.len().max(1) as f64 + 1.0) / 2.0
}

fn subset(x: &[f64], d: usize, rows: &[usize]) -> Vec<f64> {
    rows.iter().flat_map(|&r| x[r * d..(r + 1) * d].iter().copied()).collect()
}

fn groups(labels: &[usize]) -> Vec<Vec<usize>> {
    let nl = labels.iter().max().map_or(0, |&m| m + 1);
    let mut g = vec![Vec::new(); nl];
    for (i, &l) in labels.iter().enumerate() {
        g[l].push(i);
    }
    g
}

fn distinct(v: impl Iterator<Item = usize>) -> usize {
    let mut v: Vec<usize> = v.collect();
    v.sort_unstable();
    v.dedup();
    v.len()
}

/// Species ASW (scib's silhouette_batch): per cell type, 1 − |silhouette w.r.t. species| averaged over
/// its cells; the mean over cell types found in more than one species. NaN if there is none.
pub fn silhouette_batch(x: &[f64], d: usize, labels: &[usize], batch: &[usize]) -> f64 {
    let mut scores = Vec::new();
    for rows in groups(labels) {
        let nb = distinct(rows.iter().map(|&r| batch[r]));
        if nb <= 1 || nb == rows.len() {
            continue;
        }
        let b: Vec<usize> = remap(&rows.iter().map(|&r| batch[r]).collect::<Vec<_>>());
        let s = silhouette_samples(&subset(x, d, &rows), d, &b);
        scores.push(s.iter().map(|v| 1.0 - v.abs()).sum::<f64>() / s.len() as f64);
    }
    mean_or_nan(&scores)
}

fn remap(v: &[usize]) -> Vec<usize> {
    let mut u: Vec<usize> = v.to_vec();
    u.sort_unstable();
    u.dedup();
    v.iter().map(|x| u.binary_search(x).unwrap()).collect()
}

fn mean_or_nan(v: &[f64]) -> f64 {
    let f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if f.is_empty() { f64::NAN } else { f.iter().sum::<f64>() / f.len() as f64 }
}

/// Graph connectivity: per cell type, the share of its cells in the largest connected component of
/// the neighbour graph restricted to that type; the mean over types.
pub fn graph_connectivity(g: &Graph, labels: &[usize]) -> f64 {
    let s: Vec<f64> =
        groups(labels).iter().filter(|r| !r.is_empty()).map(|rows| graph::component_sizes(g, rows)[0] as f64 / rows.len() as f64).collect();
    mean_or_nan(&s)
}

/// Regularised upper incomplete gamma Q(a, x) (Numerical Recipes: series below a + 1, continued
/// fraction above).
pub fn gamma_q(a: f64, x: f64) -> f64 {
    use crate::engine::special::lgamma;
    if x <= 0.0 {
        return 1.0;
    }
    if x < a + 1.0 {
        let (mut sum, mut del, mut ap) = (1.0 / a, 1.0 / a, a);
        for _ in 0..10_000 {
            ap += 1.0;
            del *= x / ap;
            sum += del;
            if del.abs() < sum.abs() * 1e-15 {
                break;
            }
        }
        (1.0 - sum * (-x + a * x.ln() - lgamma(a)).exp()).clamp(0.0, 1.0)
    } else {
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut dd = 1.0 / b;
        let mut h = dd;
        for i in 1..10_000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            dd = an * dd + b;
            if dd.abs() < tiny {
                dd = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            dd = 1.0 / dd;
            let del = dd * c;
            h *= del;
            if (del - 1.0).abs() < 1e-15 {
                break;
            }
        }
        ((-x + a * x.ln() - lgamma(a)).exp() * h).clamp(0.0, 1.0)
    }
}

/// P(χ²_df > x).
pub fn chi2_sf(x: f64, df: f64) -> f64 {
    gamma_q(df / 2.0, x / 2.0)
}

/// kBET acceptance rate per cell type, averaged over types present in more than one species.
/// Per type: k0 = clamp(⌊mean cells per species / 4⌋, 10, 70) nearest neighbours (within the type,
/// in the embedding; scib-metrics searches a diffusion map instead), a χ² test of the neighbourhood's
/// species counts against the type's species frequencies, acceptance = share of cells with p ≥ α.
pub fn kbet_per_label(x: &[f64], d: usize, labels: &[usize], batch: &[usize], alpha: f64) -> f64 {
    let mut scores = Vec::new();
    for rows in groups(labels) {
        let b = remap(&rows.iter().map(|&r| batch[r]).collect::<Vec<_>>());
        let nb = b.iter().max().map_or(0, |&m| m + 1);
        if nb < 2 || rows.len() < 3 {
            continue;
        }
        let k0 = ((rows.len() / nb / 4).clamp(10, 70)).min(rows.len() - 1);
        let freq: Vec<f64> = (0..nb).map(|q| b.iter().filter(|&&v| v == q).count() as f64 / rows.len() as f64).collect();
        let (idx, _) = crate::knn::self_knn(&subset(x, d, &rows), d, k0);
        let accepted = (0..rows.len())
            .filter(|&i| {
                let mut obs = vec![0f64; nb];
                for &j in &idx[i * k0..(i + 1) * k0] {
                    obs[b[j as usize]] += 1.0;
                }
                let chi: f64 = (0..nb).map(|q| (obs[q] - k0 as f64 * freq[q]).powi(2) / (k0 as f64 * freq[q])).sum();
                chi2_sf(chi, (nb - 1) as f64) >= alpha
            })
            .count();
        scores.push(accepted as f64 / rows.len() as f64);
    }
    mean_or_nan(&scores)
}

/// Eigen-decomposition of a symmetric matrix [n×n] by cyclic Jacobi rotations: eigenvalues descending
/// and the matching eigenvectors as columns of a row-major [n×n] matrix.
pub fn sym_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut m = a.to_vec();
    let mut v = vec![0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..n).flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j))).map(|(i, j)| m[i * n + j].powi(2)).sum();
        let scale: f64 = (0..n).map(|i| m[i * n + i].powi(2)).sum::<f64>().max(1e-300);
        if off <= 1e-26 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = m[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (m[q * n + q] - m[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (m[k * n + p], m[k * n + q]);
                    m[k * n + p] = c * akp - s * akq;
                    m[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (m[p * n + k], m[q * n + k]);
                    m[p * n + k] = c * apk - s * aqk;
                    m[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| m[j * n + j].total_cmp(&m[i * n + i]));
    let vals = order.iter().map(|&i| m[i * n + i]).collect();
    let mut vecs = vec![0f64; n * n];
    for (c, &o) in order.iter().enumerate() {
        for r in 0..n {
            vecs[r * n + c] = v[r * n + o];
        }
    }
    (vals, vecs)
}

/// Principal components of a dense [n×d] matrix with small d: scores [n×k] and variances (ddof 1).
pub fn pca_dense(x: &[f64], d: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
    let n = x.len() / d;
    let mean: Vec<f64> = (0..d).map(|j| (0..n).map(|i| x[i * d + j]).sum::<f64>() / n as f64).collect();
    let mut cov = vec![0f64; d * d];
    for i in 0..n {
        for a in 0..d {
            let xa = x[i * d + a] - mean[a];
            for b in 0..d {
                cov[a * d + b] += xa * (x[i * d + b] - mean[b]);
            }
        }
    }
    cov.iter_mut().for_each(|c| *c /= (n.max(2) - 1) as f64);
    let (vals, vecs) = sym_eigen(&cov, d);
    let k = k.min(d);
    let scores = (0..n)
        .flat_map(|i| {
            let (x, mean, vecs) = (&x, &mean, &vecs);
            (0..k).map(move |c| (0..d).map(|j| (x[i * d + j] - mean[j]) * vecs[j * d + c]).sum::<f64>())
        })
        .collect();
    (scores, vals[..k].iter().map(|v| v.max(0.0)).collect())
}

/// Sparse rows (column, value) with `d` columns: top-`k` principal components by randomised subspace
/// iteration on the implicitly centred matrix. Scores [n×k] and variances (ddof 1).
pub fn pca_sparse(rows: &[Vec<(u32, f64)>], d: usize, k: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
    use rand_distr::{Distribution, StandardNormal};
    let n = rows.len();
    let p = (k + 10).min(n).min(d);
    let mut mean = vec![0f64; d];
    for r in rows {
        for &(c, v) in r {
            mean[c as usize] += v / n as f64;
        }
    }
    // A·V for V [d×p] and Aᵀ·U for U [n×p], A = X − 1 meanᵀ.
    let av = |v: &[f64]| -> Vec<f64> {
        let mv: Vec<f64> = (0..p).map(|c| (0..d).map(|j| mean[j] * v[j * p + c]).sum()).collect();
        rows.par_iter()
            .flat_map_iter(|r| {
                let mut o = vec![0f64; p];
                for &(j, x) in r {
                    for c in 0..p {
                        o[c] += x * v[j as usize * p + c];
                    }
                }
                o.iter_mut().zip(&mv).for_each(|(a, m)| *a -= m);
                o
            })
            .collect()
    };
    let atu = |u: &[f64]| -> Vec<f64> {
        let mut o = vec![0f64; d * p];
        for (i, r) in rows.iter().enumerate() {
            for &(j, x) in r {
                for c in 0..p {
                    o[j as usize * p + c] += x * u[i * p + c];
                }
            }
        }
        let su: Vec<f64> = (0..p).map(|c| (0..n).map(|i| u[i * p + c]).sum()).collect();
        for j in 0..d {
            for c in 0..p {
                o[j * p + c] -= mean[j] * su[c];
            }
        }
        o
    };
    // Gram-Schmidt, twice for stability; a column with nothing left (rank deficiency) becomes zero.
    let orth = |m: &mut Vec<f64>, rows_: usize| {
        for c in 0..p {
            let norm0 = (0..rows_).map(|i| m[i * p + c].powi(2)).sum::<f64>().sqrt();
            for _pass in 0..2 {
                for prev in 0..c {
                    let dot: f64 = (0..rows_).map(|i| m[i * p + c] * m[i * p + prev]).sum();
                    for i in 0..rows_ {
                        m[i * p + c] -= dot * m[i * p + prev];
                    }
                }
            }
            let norm = (0..rows_).map(|i| m[i * p + c].powi(2)).sum::<f64>().sqrt();
            let scale = if norm > 1e-10 * norm0 && norm > 0.0 { 1.0 / norm } else { 0.0 };
            for i in 0..rows_ {
                m[i * p + c] *= scale;
            }
        }
    };
    let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(seed);
    let omega: Vec<f64> = (0..d * p).map(|_| StandardNormal.sample(&mut rng)).collect();
    let mut q = av(&omega);
    orth(&mut q, n);
    for _ in 0..6 {
        let mut z = atu(&q);
        orth(&mut z, d);
        q = av(&z);
        orth(&mut q, n);
    }
    // B = Qᵀ A [p×d]; eigen of B Bᵀ gives the left singular vectors in Q's basis.
    let bt = atu(&q); // [d×p] = Bᵀ
    let mut bbt = vec![0f64; p * p];
    for j in 0..d {
        for a in 0..p {
            for b in 0..p {
                bbt[a * p + b] += bt[j * p + a] * bt[j * p + b];
            }
        }
    }
    let (vals, vecs) = sym_eigen(&bbt, p);
    let k = k.min(p);
    let mut scores = vec![0f64; n * k];
    for i in 0..n {
        for c in 0..k {
            let s = vals[c].max(0.0).sqrt();
            scores[i * k + c] = (0..p).map(|a| q[i * p + a] * vecs[a * p + c]).sum::<f64>() * s;
        }
    }
    (scores, vals[..k].iter().map(|v| v.max(0.0) / (n.max(2) - 1) as f64).collect())
}

/// Principal-component regression on a categorical covariate: Σ var_i R²_i / Σ var_i over the given
/// components, where R²_i is the share of PC i's variance explained by the covariate's group means.
pub fn pcr(scores: &[f64], variances: &[f64], covariate: &[usize]) -> f64 {
    let k = variances.len();
    let n = covariate.len();
    let ng = covariate.iter().max().map_or(0, |&m| m + 1);
    let mut num = 0.0;
    for c in 0..k {
        let col: Vec<f64> = (0..n).map(|i| scores[i * k + c]).collect();
        let mean = col.iter().sum::<f64>() / n as f64;
        let mut gs = vec![0f64; ng];
        let mut gn = vec![0f64; ng];
        for (i, &g) in covariate.iter().enumerate() {
            gs[g] += col[i];
            gn[g] += 1.0;
        }
        let tot: f64 = col.iter().map(|v| (v - mean).powi(2)).sum();
        let res: f64 = col.iter().zip(covariate).map(|(v, &g)| (v - gs[g] / gn[g]).powi(2)).sum();
        let r2 = if tot > 0.0 { 1.0 - res / tot } else { 0.0 };
        num += r2 * variances[c];
    }
    let den: f64 = variances.iter().sum();
    if den > 0.0 { num / den } else { 0.0 }
}

/// Isolated labels: cell types found in the fewest species; the mean over them of the rescaled
/// silhouette (s + 1)/2 of their cells (w.r.t. all cell types). `sil` = silhouette_samples on labels.
pub fn isolated_labels(sil: &[f64], labels: &[usize], batch: &[usize]) -> (f64, Vec<usize>) {
    let g = groups(labels);
    let counts: Vec<usize> = g.iter().map(|rows| distinct(rows.iter().map(|&r| batch[r]))).collect();
    let min = counts.iter().copied().filter(|&c| c > 0).min().unwrap_or(0);
    let iso: Vec<usize> = (0..g.len()).filter(|&l| counts[l] > 0 && counts[l] <= min).collect();
    let s: Vec<f64> = iso.iter().map(|&l| g[l].iter().map(|&r| (sil[r] + 1.0) / 2.0).sum::<f64>() / g[l].len() as f64).collect();
    (mean_or_nan(&s), iso)
}

#[derive(Debug, Clone, Serialize)]
pub struct Scores {
    pub pcr_comparison: f64,
    pub species_asw: f64,
    pub kbet: f64,
    pub graph_connectivity: f64,
    pub ari: f64,
    pub nmi: f64,
    pub best_resolution: f64,
    pub clusters: usize,
    pub isolated_labels: f64,
    pub cell_type_asw: f64,
    pub species_mixing: f64,
    pub bio_conservation: f64,
    pub total: f64,
}

/// Every metric of spec §10 on embedding `x` [n×d]; `pcr_pre` is the unintegrated data's PCR score
/// for species. Neighbour graph: 15 neighbours (scanpy's n_neighbors = 15 counts the cell itself).
pub fn score_all(x: &[f64], d: usize, labels: &[usize], species: &[usize], pcr_pre: f64, seed: u64) -> Scores {
    let (idx, dist) = crate::knn::self_knn(x, d, 14);
    let g = graph::fuzzy_connectivities(&idx, &dist, 14, 14);
    let (mut nmi_best, mut ari_best, mut res_best, mut n_best) = (f64::NEG_INFINITY, f64::NAN, f64::NAN, 0);
    for r in 1..=10 {
        let res = 0.2 * r as f64;
        let cl = graph::louvain(&g, res, seed);
        let v = nmi(labels, &cl);
        if v > nmi_best {
            nmi_best = v;
            ari_best = ari(labels, &cl);
            res_best = res;
            n_best = cl.iter().max().map_or(0, |&m| m + 1);
        }
    }
    let sil = silhouette_samples(x, d, labels);
    let casw = (sil.iter().sum::<f64>() / sil.len().max(1) as f64 + 1.0) / 2.0;
    let (iso, _) = isolated_labels(&sil, labels, species);
    let (scores, var) = pca_dense(x, d, d.min(50));
    let pcr_post = pcr(&scores, &var, species);
    let pcr_cmp = if pcr_pre > 0.0 { ((pcr_pre - pcr_post) / pcr_pre).max(0.0) } else { 0.0 };
    let basw = silhouette_batch(x, d, labels, species);
    let kbet = kbet_per_label(x, d, labels, species, 0.05);
    let gc = graph_connectivity(&g, labels);
    let mixing = mean_or_nan(&[pcr_cmp, basw, kbet, gc]);
    let bio = mean_or_nan(&[ari_best, nmi_best, iso, casw]);
    Scores {
        pcr_comparison: pcr_cmp,
        species_asw: basw,
        kbet,
        graph_connectivity: gc,
        ari: ari_best,
        nmi: nmi_best,
        best_resolution: res_best,
        clusters: n_best,
        isolated_labels: iso,
        cell_type_asw: casw,
        species_mixing: mixing,
        bio_conservation: bio,
        total: 0.4 * mixing + 0.6 * bio,
    }
}
