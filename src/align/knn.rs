//! Data-level nearest neighbours (spec §4.1): cosine distance on log1p(raw counts) of the homologous
//! genes, exact, from every target cell to the context. Blocked: a band of target rows against a band
//! of context rows at a time (dense f64 GEMM on normalised rows), with a streaming top-k, so memory is
//! O(block² + n_target·k), never n_target x n_context.
//!
//! Semantics as sklearn's brute-force cosine: distance = 1 − x·y/(‖x‖‖y‖); an all-zero row has distance
//! exactly 1 to everything; results ascend by distance, ties by ascending context index.

use crate::data::Csr;
use crate::engine::ops::gemm;
use rayon::prelude::*;

const TARGET_BLOCK: usize = 256;
const CONTEXT_BLOCK: usize = 1024;

/// Dense, L2-normalised log1p rows [rows.len() × cols.len()] (a zero row stays zero).
fn normalised_block(m: &Csr, rows: std::ops::Range<usize>, col_map: &[u32], width: usize) -> Vec<f64> {
    let n = rows.len();
    let mut out = vec![0f64; n * width];
    out.par_chunks_mut(width.max(1)).zip(rows.into_par_iter()).for_each(|(row, r)| {
        let (idx, val) = m.row(r);
        for (&c, &v) in idx.iter().zip(val) {
            let k = col_map[c as usize];
            if k != u32::MAX {
                row[k as usize] = (v as f64).ln_1p();
            }
        }
        let norm = row.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|x| *x /= norm);
        }
    });
    out
}

/// For every target cell, the `k` nearest context cells: (indices [n_target × k], distances).
/// `ctx_cols[h]` and `tgt_cols[h]` are the columns of homologous gene h in each matrix.
pub fn cosine_knn(context: &Csr, ctx_cols: &[usize], target: &Csr, tgt_cols: &[usize], k: usize) -> (Vec<u32>, Vec<f32>) {
    assert_eq!(ctx_cols.len(), tgt_cols.len());
    let h = ctx_cols.len();
    let k = k.min(context.n_rows);
    let map = |n: usize, cols: &[usize]| {
        let mut m = vec![u32::MAX; n];
        for (i, &c) in cols.iter().enumerate() {
            m[c] = i as u32;
        }
        m
    };
    let (cmap, tmap) = (map(context.n_cols, ctx_cols), map(target.n_cols, tgt_cols));
    let nt = target.n_rows;
    // Current best (distance, index) per target row, kept sorted ascending.
    let mut best: Vec<Vec<(f64, u32)>> = vec![Vec::with_capacity(k); nt];
    let mut sims = vec![0f64; TARGET_BLOCK * CONTEXT_BLOCK];
    for c0 in (0..context.n_rows).step_by(CONTEXT_BLOCK) {
        let c1 = (c0 + CONTEXT_BLOCK).min(context.n_rows);
        let cb = normalised_block(context, c0..c1, &cmap, h);
        let cn = c1 - c0;
        for t0 in (0..nt).step_by(TARGET_BLOCK) {
            let t1 = (t0 + TARGET_BLOCK).min(nt);
            let tb = normalised_block(target, t0..t1, &tmap, h);
            let tn = t1 - t0;
            // sims[tn × cn] = tb · cbᵀ
            gemm(tn, h, cn, &tb, h, 1, &cb, 1, h, &mut sims[..tn * cn], false);
            best[t0..t1].par_iter_mut().enumerate().for_each(|(r, list)| {
                let s = &sims[r * cn..(r + 1) * cn];
                for (j, &sim) in s.iter().enumerate() {
                    push_top_k(list, k, 1.0 - sim, (c0 + j) as u32);
                }
            });
        }
    }
    let mut idx = Vec::with_capacity(nt * k);
    let mut dist = Vec::with_capacity(nt * k);
    for list in best {
        for (d, i) in list {
            idx.push(i);
            dist.push(d as f32);
        }
    }
    (idx, dist)
}

/// Insert (d, i) into a sorted list of at most k, ordered by distance then index.
#[inline]
fn push_top_k(list: &mut Vec<(f64, u32)>, k: usize, d: f64, i: u32) {
    if list.len() == k {
        let last = list[k - 1];
        if d > last.0 || (d == last.0 && i > last.1) {
            return;
        }
        list.pop();
    }
    let pos = list.partition_point(|&(ld, li)| ld < d || (ld == d && li < i));
    list.insert(pos, (d, i));
}
