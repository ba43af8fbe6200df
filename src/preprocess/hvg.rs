//! Highly variable genes, Seurat v3 style on raw counts, batch-aware (scanpy's
//! `highly_variable_genes(flavor='seurat_v3', batch_key=...)`).
//!
//! Per batch: gene means and variances (ddof 1), a local quadratic (loess, span 0.3) fit of log10 variance
//! on log10 mean over the non-constant genes, counts clipped at mean + sqrt(N)·sd_fit, and the variance of
//! the standardised clipped counts. Genes are ranked per batch; the final order is by the median rank over
//! the batches where a gene is in the top n, then by the number of such batches (descending).
//! One difference from scanpy: the loess is evaluated exactly at every gene ("direct" surface), where
//! scikit-misc interpolates on a k-d tree; borderline genes can differ.

use crate::data::sparse::Csr;

/// Select `n_top` genes. `batch[i]` is the batch index of cell `i` (`n_batches` of them).
/// Returns the selected gene indices, sorted ascending.
pub fn seurat_v3(counts: &Csr, batch: &[u32], n_batches: usize, n_top: usize) -> Vec<usize> {
    let g = counts.n_cols;
    if n_top >= g {
        return (0..g).collect();
    }
    let mut norm_vars: Vec<Vec<f64>> = Vec::with_capacity(n_batches);
    for b in 0..n_batches {
        let rows: Vec<usize> = (0..counts.n_rows).filter(|&i| batch[i] as usize == b).collect();
        if rows.len() < 2 {
            continue;
        }
        norm_vars.push(batch_normalized_variance(counts, &rows));
    }
    // Rank per batch: 0 = most variable; ties by gene index (stable).
    let nb = norm_vars.len();
    let mut ranks = vec![vec![0usize; g]; nb];
    for (b, nv) in norm_vars.iter().enumerate() {
        let mut order: Vec<usize> = (0..g).collect();
        order.sort_by(|&a, &c| nan_last_desc(nv[a], nv[c]).then(a.cmp(&c)));
        for (r, &gene) in order.iter().enumerate() {
            ranks[b][gene] = r;
        }
    }
    let mut key: Vec<(f64, usize, usize)> = (0..g)
        .map(|gene| {
            let mut top: Vec<f64> = (0..nb).map(|b| ranks[b][gene]).filter(|&r| r < n_top).map(|r| r as f64).collect();
            let n_high = top.len();
            let median = if top.is_empty() {
                f64::NAN
            } else {
                top.sort_by(|a, b| a.partial_cmp(b).unwrap());
                let m = top.len();
                if m % 2 == 1 { top[m / 2] } else { 0.5 * (top[m / 2 - 1] + top[m / 2]) }
            };
            (median, n_high, gene)
        })
        .collect();
    // Median rank ascending (NaN last), then number of batches descending, then gene order (stable sort).
    key.sort_by(|a, b| {
        let r = match (a.0.is_nan(), b.0.is_nan()) {
            (true, true) => std::cmp::Ordering::Equal,
            (true, false) => std::cmp::Ordering::Greater,
            (false, true) => std::cmp::Ordering::Less,
            _ => a.0.partial_cmp(&b.0).unwrap(),
        };
        r.then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2))
    });
    let mut sel: Vec<usize> = key.iter().take(n_top).map(|k| k.2).collect();
    sel.sort_unstable();
    sel
}

fn nan_last_desc(a: f64, b: f64) -> std::cmp::Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Greater,
        (false, true) => std::cmp::Ordering::Less,
        _ => b.partial_cmp(&a).unwrap(),
    }
}

/// Seurat v3 normalised variance of every gene over the given cells.
pub fn batch_normalized_variance(counts: &Csr, rows: &[usize]) -> Vec<f64> {
    let g = counts.n_cols;
    let n = rows.len() as f64;
    let mut sum = vec![0f64; g];
    let mut sq = vec![0f64; g];
    for &r in rows {
        let (idx, val) = counts.row(r);
        for (&c, &v) in idx.iter().zip(val) {
            let v = v as f64;
            sum[c as usize] += v;
            sq[c as usize] += v * v;
        }
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let var: Vec<f64> = (0..g).map(|j| ((sq[j] - n * mean[j] * mean[j]) / (n - 1.0)).max(0.0)).collect();
    let not_const: Vec<usize> = (0..g).filter(|&j| var[j] > 0.0).collect();
    let mut est = vec![0f64; g]; // log10 of the fitted variance; 0 (variance 1) for constant genes, as scanpy
    if !not_const.is_empty() {
        let x: Vec<f64> = not_const.iter().map(|&j| mean[j].log10()).collect();
        let y: Vec<f64> = not_const.iter().map(|&j| var[j].log10()).collect();
        let fit = loess_quadratic(&x, &y, 0.3);
        for (k, &j) in not_const.iter().enumerate() {
            est[j] = fit[k];
        }
    }
    let reg_std: Vec<f64> = est.iter().map(|e| 10f64.powf(*e).sqrt()).collect();
    let clip: Vec<f64> = (0..g).map(|j| reg_std[j] * n.sqrt() + mean[j]).collect();
    let mut csum = vec![0f64; g];
    let mut csq = vec![0f64; g];
    for &r in rows {
        let (idx, val) = counts.row(r);
        for (&c, &v) in idx.iter().zip(val) {
            let c = c as usize;
            let v = (v as f64).min(clip[c]);
            csum[c] += v;
            csq[c] += v * v;
        }
    }
    (0..g).map(|j| (n * mean[j] * mean[j] + csq[j] - 2.0 * csum[j] * mean[j]) / ((n - 1.0) * reg_std[j] * reg_std[j])).collect()
}

/// Loess with degree 2 and tricube weights over the `floor(span·n)` nearest points, evaluated at every x.
pub fn loess_quadratic(x: &[f64], y: &[f64], span: f64) -> Vec<f64> {
    let n = x.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| x[a].partial_cmp(&x[b]).unwrap().then(a.cmp(&b)));
    let xs: Vec<f64> = order.iter().map(|&i| x[i]).collect();
    let ys: Vec<f64> = order.iter().map(|&i| y[i]).collect();
    let q = ((span * n as f64).floor() as usize).clamp(1, n);
    let mut out = vec![0f64; n];
    let mut lo = 0usize;
    for i in 0..n {
        let x0 = xs[i];
        // Slide the q-point window so that it holds the q nearest neighbours of x0.
        while lo + q < n && x0 - xs[lo] > xs[lo + q] - x0 {
            lo += 1;
        }
        let hi = lo + q; // exclusive
        let h = (x0 - xs[lo]).max(xs[hi - 1] - x0);
        let (mut s, mut t) = ([0f64; 5], [0f64; 3]);
        let mut wsum = 0.0;
        let mut wy = 0.0;
        for k in lo..hi {
            let u = xs[k] - x0;
            let w = if h > 0.0 {
                let d = (u.abs() / h).min(1.0);
                let a = 1.0 - d * d * d;
                a * a * a
            } else {
                1.0
            };
            if w == 0.0 {
                continue;
            }
            wsum += w;
            wy += w * ys[k];
            let u2 = u * u;
            s[0] += w;
            s[1] += w * u;
            s[2] += w * u2;
            s[3] += w * u2 * u;
            s[4] += w * u2 * u2;
            t[0] += w * ys[k];
            t[1] += w * u * ys[k];
            t[2] += w * u2 * ys[k];
        }
        let fitted = solve3_intercept(&s, &t).unwrap_or(if wsum > 0.0 { wy / wsum } else { ys[i] });
        out[order[i]] = fitted;
    }
    out
}

/// Intercept of the weighted quadratic fit from its normal equations (Cramer's rule on the 3x3 system).
fn solve3_intercept(s: &[f64; 5], t: &[f64; 3]) -> Option<f64> {
    let m = [[s[0], s[1], s[2]], [s[1], s[2], s[3]], [s[2], s[3], s[4]]];
    let det = |a: &[[f64; 3]; 3]| {
        a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1]) - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
            + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0])
    };
    let d = det(&m);
    let scale = s[0] * s[2] * s[4];
    if !d.is_finite() || d.abs() <= 1e-12 * scale.abs().max(f64::MIN_POSITIVE) {
        return None;
    }
    let mut m0 = m;
    for r in 0..3 {
        m0[r][0] = t[r];
    }
    Some(det(&m0) / d)
}
