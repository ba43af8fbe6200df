//! The data-level kNN's predicted label, its agreement count and the aligned-cell selection
//! (spec §4.2, exact package semantics, f64).

/// For each target cell: the majority context label among its first `k` neighbours (ties: the label
/// whose first occurrence is nearest) and that label's count.
pub fn predict(knn: &[u32], stored: usize, k: usize, context_labels: &[u32], n_labels: usize) -> (Vec<u32>, Vec<u32>) {
    let n = knn.len() / stored;
    let k = k.min(stored);
    let mut pred = Vec::with_capacity(n);
    let mut cnt = Vec::with_capacity(n);
    let mut counts = vec![0u32; n_labels];
    for i in 0..n {
        counts.iter_mut().for_each(|c| *c = 0);
        let row = &knn[i * stored..i * stored + k];
        for &j in row {
            counts[context_labels[j as usize] as usize] += 1;
        }
        // Counter order is first appearance; the first label reaching the maximum wins.
        let max = *counts.iter().max().unwrap();
        let label = row.iter().map(|&j| context_labels[j as usize]).find(|&l| counts[l as usize] == max).unwrap();
        pred.push(label);
        cnt.push(max);
    }
    (pred, cnt)
}

/// `top_percent_i = 1 − (r+1)/n_g` where r is the cell's rank within its predicted label after a stable
/// ascending sort by count (input order = cell index, so ties put the higher index later, i.e. higher).
pub fn top_percent(pred: &[u32], cnt: &[u32], n_labels: usize) -> Vec<f64> {
    let mut out = vec![0f64; pred.len()];
    for l in 0..n_labels as u32 {
        let mut cells: Vec<usize> = (0..pred.len()).filter(|&i| pred[i] == l).collect();
        cells.sort_by_key(|&i| cnt[i]); // stable
        let n = cells.len() as f64;
        for (r, &i) in cells.iter().enumerate() {
            out[i] = 1.0 - (r as f64 + 1.0) / n;
        }
    }
    out
}

/// Aligned iff `top_percent_i < p/100` (with the reference's float boundary behaviour).
pub fn aligned(top: &[f64], p: f64) -> Vec<bool> {
    top.iter().map(|&t| t < p / 100.0).collect()
}
