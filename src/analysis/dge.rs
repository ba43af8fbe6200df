//! Cross-species differential expression (spec §8.4): the same latent sample z of a target cell is
//! decoded by both species' decoders, batch-averaged, on the homologous genes (softmax over the
//! homologous genes times the non-dropout probability); per gene the median log2 fold change
//! target − context, P(|LFC| > δ), the same for a random gene permutation of the context side, and the
//! medians of ρ and μ = ρ·library. Also the data-level LFC of spec §8.5 for comparison.
//!
//! Differences from the package, as `decisions.md` says: Gaussian noise (the package's Uniform[0,1) is a
//! bug; `uniform_noise` reproduces it); types with too few cells for a covariance skip the outlier
//! filter instead of failing. Medians are taken over at most `median_samples` samples per gene (the
//! first draws, which cover every cell); P(|LFC| > δ) over all samples.

use crate::engine::Backend;
use crate::engine::likelihood::Distribution;
use crate::model::Model;
use crate::train::Representation;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_distr::{Distribution as _, StandardNormal};
use rayon::prelude::*;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct DgeConfig {
    /// Target samples per cell type (the package's `samples`, 50,000).
    pub samples: usize,
    /// |LFC| threshold δ.
    pub lfc_delta: f64,
    /// A gene is called differentially expressed when |median LFC| > δ and P(|LFC| > δ) > this.
    pub min_probability: f64,
    /// Outlier filter: keep cells inside this χ² quantile of the Mahalanobis distance on z_mu.
    pub confidence: f64,
    /// Context neighbours whose libraries are averaged for the context library of a target cell.
    pub library_neighbours: usize,
    /// Batches used for the batch average need more than this many cells of the type.
    pub min_batch_cells: usize,
    pub median_samples: usize,
    pub uniform_noise: bool,
    pub seed: u64,
}

impl Default for DgeConfig {
    fn default() -> Self {
        DgeConfig {
            samples: 10_000,
            lfc_delta: 1.0,
            min_probability: 0.9,
            confidence: 0.9,
            library_neighbours: 25,
            min_batch_cells: 3,
            median_samples: 2000,
            uniform_noise: false,
            seed: 0,
        }
    }
}

/// One species' view for the analysis.
pub struct Side<'a, B: Backend> {
    pub model: &'a Model<B>,
    pub repr: &'a Representation,
    pub batch: &'a [u32],
    /// Cell type code per cell (codes shared between the two sides for the same name).
    pub labels: &'a [usize],
    /// Homologous gene indices of this species, in the pairing order.
    pub homologous: &'a [usize],
}

#[derive(Debug, Clone, Serialize)]
pub struct GeneStats {
    pub rho_median_context: f64,
    pub mu_median_context: f64,
    pub rho_median_target: f64,
    pub mu_median_target: f64,
    pub lfc: f64,
    pub p: f64,
    pub lfc_rand: f64,
    pub p_rand: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TypeResult {
    pub target_cells: usize,
    pub target_cells_kept: usize,
    pub context_cells: usize,
    pub context_cells_kept: usize,
    pub outlier_filter: bool,
    pub samples: usize,
    pub context_batches: Vec<u32>,
    pub target_batches: Vec<u32>,
    #[serde(skip)]
    pub genes: Vec<GeneStats>,
    pub de_genes: usize,
    pub de_fraction: f64,
    pub de_fraction_random: f64,
}

/// Squared Mahalanobis distances of rows of `x` [n×d] (sample covariance, ddof 1), or None when the
/// covariance is singular (n ≤ d or degenerate).
pub fn mahalanobis_sq(x: &[f64], d: usize) -> Option<Vec<f64>> {
    let n = x.len() / d;
    if n <= d + 1 {
        return None;
    }
    let mean: Vec<f64> = (0..d).map(|j| (0..n).map(|i| x[i * d + j]).sum::<f64>() / n as f64).collect();
    let mut cov = vec![0f64; d * d];
    for i in 0..n {
        for a in 0..d {
            for b in 0..d {
                cov[a * d + b] += (x[i * d + a] - mean[a]) * (x[i * d + b] - mean[b]) / (n - 1) as f64;
            }
        }
    }
    // Cholesky: cov = L Lᵀ.
    let mut l = vec![0f64; d * d];
    for i in 0..d {
        for j in 0..=i {
            let s: f64 = cov[i * d + j] - (0..j).map(|k| l[i * d + k] * l[j * d + k]).sum::<f64>();
            if i == j {
                if s <= 1e-12 * cov[i * d + i].abs().max(1e-300) {
                    return None;
                }
                l[i * d + i] = s.sqrt();
            } else {
                l[i * d + j] = s / l[j * d + j];
            }
        }
    }
    Some(
        (0..n)
            .map(|i| {
                // Solve L y = x − mean; distance² = |y|².
                let mut y = vec![0f64; d];
                for a in 0..d {
                    y[a] = (x[i * d + a] - mean[a] - (0..a).map(|k| l[a * d + k] * y[k]).sum::<f64>()) / l[a * d + a];
                }
                y.iter().map(|v| v * v).sum()
            })
            .collect(),
    )
}

/// χ² quantile by bisection on the survival function.
pub fn chi2_quantile(p: f64, df: f64) -> f64 {
    let (mut lo, mut hi) = (0.0, 1e4);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if 1.0 - super::metrics::chi2_sf(mid, df) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len();
    if m % 2 == 1 { v[m / 2] } else { 0.5 * (v[m / 2 - 1] + v[m / 2]) }
}

/// Batch-averaged homologous expression [rows×H]: mean over `batches` of softmax over the homologous
/// genes (× the non-dropout probability for ZINB).
fn decode_homologous<B: Backend>(be: &B, side: &Side<B>, z: &[f64], rows: usize, batches: &[u32]) -> Vec<f64> {
    let (n, h) = (side.model.cfg.n_genes, side.homologous.len());
    let w_h = side.model.group_weight[0];
    let zb = be.upload(z);
    let mut acc = vec![0f64; rows * h];
    let zinb = side.model.cfg.distribution == Distribution::Zinb;
    for &b in batches {
        let (rho, logit) = side.model.decode(be, &zb, b, rows);
        let rho = be.download(&rho);
        let logit = logit.filter(|_| zinb).map(|lg| be.download(&lg));
        acc.par_chunks_mut(h).enumerate().for_each(|(r, out)| {
            for (k, &g) in side.homologous.iter().enumerate() {
                let mut v = rho[r * n + g] / w_h;
                if let Some(lg) = &logit {
                    v *= crate::engine::special::sigmoid(lg[r * n + g]);
                }
                out[k] += v / batches.len() as f64;
            }
        });
    }
    acc
}

/// The analysis for cell type `label` (a code present on both sides).
pub fn lfc_for_type<B: Backend>(be: &B, ctx: &Side<B>, tgt: &Side<B>, label: usize, cfg: &DgeConfig) -> TypeResult {
    let lat = tgt.repr.latent;
    let h = tgt.homologous.len();
    let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(cfg.seed ^ (label as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let cells = |s: &Side<B>| -> Vec<usize> { (0..s.labels.len()).filter(|&i| s.labels[i] == label).collect() };
    let limit = chi2_quantile(cfg.confidence, lat as f64);
    let mut filtered = true;
    let mut keep = |s: &Side<B>, all: &[usize]| -> Vec<usize> {
        let z: Vec<f64> = all.iter().flat_map(|&i| s.repr.z_mu[i * lat..(i + 1) * lat].iter().map(|&v| v as f64)).collect();
        match mahalanobis_sq(&z, lat) {
            Some(m) => all.iter().zip(m).filter(|(_, m)| *m < limit).map(|(&i, _)| i).collect(),
            None => {
                filtered = false;
                all.to_vec()
            }
        }
    };
    let (t_all, c_all) = (cells(tgt), cells(ctx));
    let (t_keep, c_keep) = (keep(tgt, &t_all), keep(ctx, &c_all));
    let batches = |s: &Side<B>, all: &[usize]| -> Vec<u32> {
        let nb = s.model.cfg.n_batches;
        let mut count = vec![0usize; nb];
        for &i in all {
            count[s.batch[i] as usize] += 1;
        }
        let b: Vec<u32> = (0..nb as u32).filter(|&b| count[b as usize] > cfg.min_batch_cells).collect();
        // If no batch has enough cells of the type, fall back to the batches it has.
        if b.is_empty() { (0..nb as u32).filter(|&b| count[b as usize] > 0).collect() } else { b }
    };
    let (cb, tb) = (batches(ctx, &c_all), batches(tgt, &t_all));
    let zmu = |s: &Side<B>, rows: &[usize]| -> Vec<f64> {
        rows.iter().flat_map(|&i| s.repr.z_mu[i * lat..(i + 1) * lat].iter().map(|&v| v as f64)).collect()
    };
    let kn = cfg.library_neighbours.min(c_keep.len()).max(1);
    let nbrs = crate::knn::cosine_dense(&zmu(tgt, &t_keep), &zmu(ctx, &c_keep), lat, kn);
    let draws = (cfg.samples / t_keep.len().max(1)).max(1);
    let mut perm: Vec<usize> = (0..h).collect();
    perm.shuffle(&mut rng);
    let noise = |rng: &mut rand::rngs::ChaCha8Rng| -> f64 {
        if cfg.uniform_noise { rand::RngExt::random::<f64>(rng) } else { StandardNormal.sample(rng) }
    };
    let (mut above, mut above_rand) = (vec![0usize; h], vec![0usize; h]);
    // Stored samples for the medians: ρ_C, ρ_T per gene, libraries per sample.
    let (mut st_c, mut st_t, mut lib_c, mut lib_t) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut total = 0usize;
    let order: Vec<usize> = (0..t_keep.len()).collect();
    for _ in 0..draws {
        for chunk in order.chunks(128) {
            let rows = chunk.len();
            let mut z = vec![0f64; rows * lat];
            let mut lt = vec![0f64; rows];
            let mut lc = vec![0f64; rows];
            for (r, &k) in chunk.iter().enumerate() {
                let i = t_keep[k];
                for a in 0..lat {
                    z[r * lat + a] = tgt.repr.z_mu[i * lat + a] as f64 + tgt.repr.z_sig[i * lat + a] as f64 * noise(&mut rng);
                }
                lt[r] = (tgt.repr.l_mu[i] as f64 + tgt.repr.l_sig[i] as f64 * noise(&mut rng)).exp();
                lc[r] = nbrs[k * kn..(k + 1) * kn]
                    .iter()
                    .map(|&q| {
                        let c = c_keep[q];
                        (ctx.repr.l_mu[c] as f64 + ctx.repr.l_sig[c] as f64 * noise(&mut rng)).exp()
                    })
                    .sum::<f64>()
                    / kn as f64;
            }
            let rc = decode_homologous(be, ctx, &z, rows, &cb);
            let rt = decode_homologous(be, tgt, &z, rows, &tb);
            above.par_iter_mut().zip(above_rand.par_iter_mut()).enumerate().for_each(|(g, (a, ar))| {
                for r in 0..rows {
                    let t = (rt[r * h + g] + 1e-6).log2();
                    if (t - (rc[r * h + g] + 1e-6).log2()).abs() > cfg.lfc_delta {
                        *a += 1;
                    }
                    if (t - (rc[r * h + perm[g]] + 1e-6).log2()).abs() > cfg.lfc_delta {
                        *ar += 1;
                    }
                }
            });
            for r in 0..rows {
                if lib_c.len() < cfg.median_samples {
                    st_c.extend(rc[r * h..(r + 1) * h].iter().map(|&v| v as f32));
                    st_t.extend(rt[r * h..(r + 1) * h].iter().map(|&v| v as f32));
                    lib_c.push(lc[r]);
                    lib_t.push(lt[r]);
                }
            }
            total += rows;
        }
    }
    let m = lib_c.len();
    let genes: Vec<GeneStats> = (0..h)
        .into_par_iter()
        .map(|g| {
            let col = |st: &[f32], gene: usize| -> Vec<f64> { (0..m).map(|s| st[s * h + gene] as f64).collect() };
            let (mut c, mut t, cp) = (col(&st_c, g), col(&st_t, g), col(&st_c, perm[g]));
            let log_ratio = |a: &f64, b: &f64| (a + 1e-6).log2() - (b + 1e-6).log2();
            let mut lfc: Vec<f64> = t.iter().zip(&c).map(|(a, b)| log_ratio(a, b)).collect();
            let mut lfc_r: Vec<f64> = t.iter().zip(&cp).map(|(a, b)| log_ratio(a, b)).collect();
            let mut mu_c: Vec<f64> = c.iter().zip(&lib_c).map(|(a, l)| a * l).collect();
            let mut mu_t: Vec<f64> = t.iter().zip(&lib_t).map(|(a, l)| a * l).collect();
            GeneStats {
                rho_median_context: median(&mut c),
                mu_median_context: median(&mut mu_c),
                rho_median_target: median(&mut t),
                mu_median_target: median(&mut mu_t),
                lfc: median(&mut lfc),
                p: above[g] as f64 / total as f64,
                lfc_rand: median(&mut lfc_r),
                p_rand: above_rand[g] as f64 / total as f64,
            }
        })
        .collect();
    let de = |lfc: f64, p: f64| lfc.abs() > cfg.lfc_delta && p > cfg.min_probability;
    let de_genes = genes.iter().filter(|g| de(g.lfc, g.p)).count();
    let de_rand = genes.iter().filter(|g| de(g.lfc_rand, g.p_rand)).count();
    TypeResult {
        target_cells: t_all.len(),
        target_cells_kept: t_keep.len(),
        context_cells: c_all.len(),
        context_cells_kept: c_keep.len(),
        outlier_filter: filtered,
        samples: total,
        context_batches: cb,
        target_batches: tb,
        genes,
        de_genes,
        de_fraction: de_genes as f64 / h.max(1) as f64,
        de_fraction_random: de_rand as f64 / h.max(1) as f64,
    }
}

/// Data-level LFC (spec §8.5): log2(mean target counts + 1) − log2(mean context counts + 1) per
/// homologous gene over the cells of a type.
pub fn data_lfc(
    ctx: &crate::data::Csr,
    c_cells: &[usize],
    c_hom: &[usize],
    tgt: &crate::data::Csr,
    t_cells: &[usize],
    t_hom: &[usize],
) -> Vec<f64> {
    let mean = |m: &crate::data::Csr, cells: &[usize], hom: &[usize]| -> Vec<f64> {
        let mut pos = vec![usize::MAX; m.n_cols];
        for (k, &g) in hom.iter().enumerate() {
            pos[g] = k;
        }
        let mut s = vec![0f64; hom.len()];
        for &c in cells {
            let (i, v) = m.row(c);
            for (g, x) in i.iter().zip(v) {
                let k = pos[*g as usize];
                if k != usize::MAX {
                    s[k] += *x as f64;
                }
            }
        }
        s.iter().map(|x| x / cells.len().max(1) as f64).collect()
    };
    let (mc, mt) = (mean(ctx, c_cells, c_hom), mean(tgt, t_cells, t_hom));
    mt.iter().zip(&mc).map(|(t, c)| (t + 1.0).log2() - (c + 1.0).log2()).collect()
}

/// Pearson correlation (NaN-free pairs only).
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let p: Vec<(f64, f64)> = a.iter().zip(b).filter(|(x, y)| x.is_finite() && y.is_finite()).map(|(x, y)| (*x, *y)).collect();
    let n = p.len() as f64;
    if n < 2.0 {
        return f64::NAN;
    }
    let (ma, mb) = (p.iter().map(|x| x.0).sum::<f64>() / n, p.iter().map(|x| x.1).sum::<f64>() / n);
    let cov: f64 = p.iter().map(|(x, y)| (x - ma) * (y - mb)).sum();
    let (va, vb) = (p.iter().map(|x| (x.0 - ma).powi(2)).sum::<f64>(), p.iter().map(|x| (x.1 - mb).powi(2)).sum::<f64>());
    cov / (va * vb).sqrt()
}

/// Average ranks (ties share the mean rank), 1-based.
pub fn ranks(v: &[f64]) -> Vec<f64> {
    let mut o: Vec<usize> = (0..v.len()).collect();
    o.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0f64; v.len()];
    let mut i = 0;
    while i < o.len() {
        let mut j = i;
        while j + 1 < o.len() && v[o[j + 1]] == v[o[i]] {
            j += 1;
        }
        for &k in &o[i..=j] {
            r[k] = (i + j) as f64 / 2.0 + 1.0;
        }
        i = j + 1;
    }
    r
}

/// Spearman correlation: Pearson of average ranks.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let keep: Vec<usize> = (0..a.len()).filter(|&i| a[i].is_finite() && b[i].is_finite()).collect();
    let (x, y): (Vec<f64>, Vec<f64>) = keep.iter().map(|&i| (a[i], b[i])).unzip();
    pearson(&ranks(&x), &ranks(&y))
}
