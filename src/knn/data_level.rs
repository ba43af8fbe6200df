//! Data-level nearest neighbours (spec §4.1): cosine distance on log-transformed counts of homologous
//! genes, exact, from every target cell to the context. Two feature spaces ([`KnnSpace`]): the
//! reference's log1p(raw counts) of all homologous genes, and (default) the field's usual neighbour
//! space: counts per 10,000 homologous counts, log1p, on the informative genes only. Blocked: a band of target rows against a band
//! of context rows at a time (an f32 GEMM on normalised rows screens the candidates, which are then
//! re-scored exactly in f64; see [`screening_error`]), so memory is O(block² + n_target·k + context
//! non-zeros), never n_target x n_context.
//!
//! Semantics as sklearn's brute-force cosine: distance = 1 − x·y/(‖x‖‖y‖); an all-zero row has distance
//! exactly 1 to everything; results ascend by distance, ties by ascending context index.

use crate::data::Csr;
use crate::engine::ops::gemm;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

const TARGET_BLOCK: usize = 512;
const CONTEXT_BLOCK: usize = 2048;

/// Why two passes: the similarities of all pairs are screened with an f32 GEMM (twice the f64 speed,
/// half the memory), keeping for each target cell every context cell whose screened similarity lies
/// within 2ε of the current k-th best, where ε bounds the f32 error of a dot product of two unit
/// vectors of length h: input rounding 2u plus accumulation γ_h ≤ h·u (u = 2⁻²⁴, any summation order).
/// Every true neighbour survives the screen, and the survivors are re-scored exactly in f64, so the
/// result is the exact f64 kNN.
fn screening_error(h: usize) -> f32 {
    let u = f64::powi(2.0, -24);
    ((h as f64 + 3.0) * u * 1.01) as f32
}

/// The feature of count `v` in a row with library scale `scale`: log1p(v · scale), in f64.
#[inline]
fn feature(v: f32, scale: f64) -> f64 {
    (v as f64 * scale).ln_1p()
}

/// Per row of `m`: its L2 norm over the mapped (homologous) columns of the features, in f64.
fn row_norms(m: &Csr, col_map: &[u32], scale: &[f64]) -> Vec<f64> {
    (0..m.n_rows)
        .into_par_iter()
        .map(|r| {
            let (idx, val) = m.row(r);
            idx.iter()
                .zip(val)
                .filter(|(c, _)| col_map[**c as usize] != u32::MAX)
                .map(|(_, &v)| feature(v, scale[r]).powi(2))
                .sum::<f64>()
                .sqrt()
        })
        .collect()
}

/// Dense, L2-normalised feature rows [rows.len() × width] in f32 (normalised in f64; a zero row stays zero).
fn normalised_block(m: &Csr, rows: std::ops::Range<usize>, col_map: &[u32], scale: &[f64], norms: &[f64], width: usize) -> Vec<f32> {
    let n = rows.len();
    let mut out = vec![0f32; n * width];
    out.par_chunks_mut(width.max(1)).zip(rows.into_par_iter()).for_each(|(row, r)| {
        if norms[r] > 0.0 {
            let (idx, val) = m.row(r);
            for (&c, &v) in idx.iter().zip(val) {
                let k = col_map[c as usize];
                if k != u32::MAX {
                    row[k as usize] = (feature(v, scale[r]) / norms[r]) as f32;
                }
            }
        }
    });
    out
}

/// Peak bytes the search holds besides its inputs and output, for the memory estimate: the context's
/// normalised f64 values (and gene indices) for the re-scoring, the screened candidates at their
/// initial cap, one f32 block of each side and the similarity block.
pub fn transient_bytes(context_nnz: usize, n_target: usize, homologous: usize, k: usize) -> u64 {
    let (b_t, b_c) = (TARGET_BLOCK as u64, CONTEXT_BLOCK as u64);
    context_nnz as u64 * 12 + n_target as u64 * (2 * k as u64 + 64) * 8 + (b_t + b_c) * homologous as u64 * 4 + b_t * b_c * 4
}

/// One target cell's screened candidates: (f32 similarity, context index), and the similarity below
/// which no candidate can be a true neighbour any more.
struct Screen {
    cand: Vec<(f32, u32)>,
    floor: f32,
    /// Prune when this many are held; doubled when a prune keeps most (many near-ties), so the cost
    /// stays linear.
    cap: usize,
}

impl Screen {
    /// Raise the floor to (k-th best screened similarity − 2ε) and drop what falls below it.
    fn prune(&mut self, k: usize, margin: f32) {
        if self.cand.len() <= k {
            return;
        }
        let (_, kth, _) = self.cand.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
        self.floor = self.floor.max(kth.0 - margin);
        let floor = self.floor;
        self.cand.retain(|c| c.0 >= floor);
        self.cap = self.cap.max(2 * self.cand.len());
    }
}

/// For every target cell, the `k` nearest context cells on log1p(raw counts) (the reference's space):
/// (indices [n_target × k], distances). `ctx_cols[h]` and `tgt_cols[h]` are the columns of homologous
/// gene h in each matrix.
pub fn cosine_knn(context: &Csr, ctx_cols: &[usize], target: &Csr, tgt_cols: &[usize], k: usize) -> (Vec<u32>, Vec<f32>) {
    cosine_knn_scaled(context, ctx_cols, &vec![1.0; context.n_rows], target, tgt_cols, &vec![1.0; target.n_rows], k)
}

/// [`cosine_knn`] on log1p(count · scale of its row): with scale 1 the reference's features, with
/// 10⁴ / library the log-normalised ones.
#[allow(clippy::too_many_arguments)]
pub fn cosine_knn_scaled(
    context: &Csr,
    ctx_cols: &[usize],
    ctx_scale: &[f64],
    target: &Csr,
    tgt_cols: &[usize],
    tgt_scale: &[f64],
    k: usize,
) -> (Vec<u32>, Vec<f32>) {
    cosine_knn_scaled_on(&crate::engine::Cpu::<f32>::new(), context, ctx_cols, ctx_scale, target, tgt_cols, tgt_scale, k)
}

/// The inputs of one search, mapped and normalised.
struct Search<'a> {
    context: &'a Csr,
    cmap: Vec<u32>,
    ctx_scale: &'a [f64],
    cnorm: Vec<f64>,
    h: usize,
}

impl Search<'_> {
    /// Screen target rows on the CPU: an f32 GEMM a band at a time, keeping what may be a neighbour.
    #[allow(clippy::too_many_arguments)]
    fn screen_cpu(&self, target: &Csr, tmap: &[u32], tgt_scale: &[f64], tnorm: &[f64], k: usize, margin: f32) -> Vec<Screen> {
        let (context, h) = (self.context, self.h);
        let nt = target.n_rows;
        let cap = 2 * k + 64;
        let mut screens: Vec<Screen> = (0..nt).map(|_| Screen { cand: Vec::with_capacity(cap), floor: f32::NEG_INFINITY, cap }).collect();
        let mut sims = vec![0f32; TARGET_BLOCK * CONTEXT_BLOCK];
        if k == 0 {
            return screens;
        }
        for c0 in (0..context.n_rows).step_by(CONTEXT_BLOCK) {
            let c1 = (c0 + CONTEXT_BLOCK).min(context.n_rows);
            let cb = normalised_block(context, c0..c1, &self.cmap, self.ctx_scale, &self.cnorm, h);
            let cn = c1 - c0;
            for t0 in (0..nt).step_by(TARGET_BLOCK) {
                let t1 = (t0 + TARGET_BLOCK).min(nt);
                let tb = normalised_block(target, t0..t1, tmap, tgt_scale, tnorm, h);
                let tn = t1 - t0;
                // sims[tn × cn] = tb · cbᵀ
                gemm(tn, h, cn, &tb, h, 1, &cb, 1, h, &mut sims[..tn * cn], false);
                screens[t0..t1].par_iter_mut().enumerate().for_each(|(r, sc)| {
                    if tnorm[t0 + r] == 0.0 {
                        return; // all distances are 1: resolved below without screening
                    }
                    for (j, &sim) in sims[r * cn..(r + 1) * cn].iter().enumerate() {
                        if sim >= sc.floor {
                            sc.cand.push((sim, (c0 + j) as u32));
                            if sc.cand.len() >= sc.cap {
                                sc.prune(k, margin);
                            }
                        }
                    }
                });
            }
        }
        screens
    }
}

/// [`cosine_knn_scaled`], screening on `be`'s device where it has a screen ([`Backend::knn_screen`]).
/// The device keeps each target row's best `l` = 2k + 64 by its own rounding (bounded by the error it
/// reports); a row is complete when its l-th is more than twice that bound below its k-th (nothing it
/// dropped can be a neighbour), and is screened again on the CPU otherwise. The survivors are re-scored
/// exactly in f64 either way, so the result is the same exact kNN.
#[allow(clippy::too_many_arguments)]
pub fn cosine_knn_scaled_on<B: crate::engine::Backend>(
    be: &B,
    context: &Csr,
    ctx_cols: &[usize],
    ctx_scale: &[f64],
    target: &Csr,
    tgt_cols: &[usize],
    tgt_scale: &[f64],
    k: usize,
) -> (Vec<u32>, Vec<f32>) {
    assert_eq!(ctx_cols.len(), tgt_cols.len());
    assert_eq!(ctx_scale.len(), context.n_rows);
    assert_eq!(tgt_scale.len(), target.n_rows);
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
    let (cnorm, tnorm) = (row_norms(context, &cmap, ctx_scale), row_norms(target, &tmap, tgt_scale));
    let nt = target.n_rows;
    let search = Search { context, cmap, ctx_scale, cnorm, h };
    let margin = 2.0 * screening_error(h);
    let l = (2 * k + 64).min(context.n_rows);
    let device = if k > 0 {
        let trows = |r: std::ops::Range<usize>| normalised_block(target, r, &tmap, tgt_scale, &tnorm, h);
        let crows = |r: std::ops::Range<usize>| normalised_block(context, r, &search.cmap, ctx_scale, &search.cnorm, h);
        be.knn_screen(nt, context.n_rows, h, l, &trows, &crows)
    } else {
        None
    };
    // The device's rounding may be coarser (TF32): its rows are pruned with its own margin.
    let margin = device.as_ref().map_or(margin, |d| margin.max(2.0 * d.error));
    let screens = match device {
        None => search.screen_cpu(target, &tmap, tgt_scale, &tnorm, k, margin),
        Some(dev) => {
            let mut again = Vec::new();
            let mut screens: Vec<Screen> = dev
                .best
                .chunks(l)
                .enumerate()
                .map(|(t, list)| {
                    let floor = list[k - 1].0 - margin;
                    if l < context.n_rows && list[l - 1].0 >= floor {
                        again.push(t);
                    }
                    let cand: Vec<(f32, u32)> = list.iter().copied().filter(|c| c.0 >= floor && c.1 != u32::MAX).collect();
                    Screen { cap: 2 * cand.len().max(l), cand, floor }
                })
                .collect();
            if !again.is_empty() {
                let sub = target.select_rows(&again);
                let pick = |v: &[f64]| again.iter().map(|&t| v[t]).collect::<Vec<f64>>();
                let redo = search.screen_cpu(&sub, &tmap, &pick(tgt_scale), &pick(&tnorm), k, 2.0 * screening_error(h));
                for (t, sc) in again.into_iter().zip(redo) {
                    screens[t] = sc;
                }
            }
            screens
        }
    };
    // Exact f64 re-scoring of the survivors: the context rows as normalised sparse f64 vectors against
    // the target row made dense.
    let mut ptr = Vec::with_capacity(context.n_rows + 1);
    let (mut genes, mut vals) = (Vec::new(), Vec::new());
    ptr.push(0);
    for (r, &norm) in search.cnorm.iter().enumerate() {
        if norm > 0.0 {
            let (idx, val) = context.row(r);
            for (&c, &v) in idx.iter().zip(val) {
                let g = search.cmap[c as usize];
                if g != u32::MAX {
                    genes.push(g);
                    vals.push(feature(v, ctx_scale[r]) / norm);
                }
            }
        }
        ptr.push(genes.len());
    }
    let lists: Vec<Vec<(f64, u32)>> = screens
        .into_par_iter()
        .enumerate()
        .map_init(
            || vec![0f64; h],
            |dense, (t, mut sc)| {
                if tnorm[t] == 0.0 {
                    // sklearn: a zero row has distance exactly 1 to everything; ties by index.
                    return (0..k as u32).map(|i| (1.0, i)).collect();
                }
                sc.prune(k, margin);
                let (idx, val) = target.row(t);
                for (&c, &v) in idx.iter().zip(val) {
                    let g = tmap[c as usize];
                    if g != u32::MAX {
                        dense[g as usize] = feature(v, tgt_scale[t]) / tnorm[t];
                    }
                }
                let mut list: Vec<(f64, u32)> = Vec::with_capacity(k);
                for &(_, j) in &sc.cand {
                    let (a, b) = (ptr[j as usize], ptr[j as usize + 1]);
                    let sim: f64 = genes[a..b].iter().zip(&vals[a..b]).map(|(&g, &v)| v * dense[g as usize]).sum();
                    push_top_k(&mut list, k, 1.0 - sim, j);
                }
                for &c in idx {
                    let g = tmap[c as usize];
                    if g != u32::MAX {
                        dense[g as usize] = 0.0;
                    }
                }
                list
            },
        )
        .collect();
    let mut idx = Vec::with_capacity(nt * k);
    let mut dist = Vec::with_capacity(nt * k);
    for list in lists {
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

/// The feature space of the data-level kNN.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum KnnSpace {
    /// Counts per 10,000 homologous counts, log1p, on the union of each species' most variable
    /// homologous genes ([`INFORMATIVE_GENES_PER_SPECIES`], Seurat v3, batch-aware): scanpy's usual
    /// neighbour space. Why: with all ~15,000 homologous genes the many lowly expressed ones (a count of
    /// 1 is worth log1p(1) = 0.69, a marker at 10 only 2.4) outweigh the markers that tell related
    /// types apart, and the log of raw counts mixes sequencing depth into the profile.
    #[default]
    Informative,
    /// log1p(raw counts) of all homologous genes (the reference, spec §4.1).
    Log1pCounts,
}

/// Most variable homologous genes taken from each species for [`KnnSpace::Informative`] (the usual
/// 2,000 of scanpy and Seurat; the union of both species' lists is used).
pub const INFORMATIVE_GENES_PER_SPECIES: usize = 2000;

/// The data-level kNN in the chosen space: (indices [n_target × k], distances, genes used). The screen
/// runs on `be`'s device where it has one (the result is the same exact kNN).
pub fn data_level_knn<B: crate::engine::Backend>(
    be: &B,
    context: &crate::preprocess::Prepared,
    target: &crate::preprocess::Prepared,
    homology: &crate::homology::Homology,
    k: usize,
    space: KnnSpace,
) -> (Vec<u32>, Vec<f32>, usize) {
    let (hc, ht) = (&homology.context, &homology.target);
    match space {
        KnnSpace::Log1pCounts => {
            let (c, t) = (&context.data.counts, &target.data.counts);
            let (i, d) = cosine_knn_scaled_on(be, c, hc, &vec![1.0; c.n_rows], t, ht, &vec![1.0; t.n_rows], k);
            (i, d, hc.len())
        }
        KnnSpace::Informative => {
            let genes = informative_genes(context, target, homology, INFORMATIVE_GENES_PER_SPECIES);
            let cols = |all: &[usize]| genes.iter().map(|&g| all[g]).collect::<Vec<usize>>();
            let (cc, tc) = (cols(hc), cols(ht));
            let (cs, ts) = (per_10k_scale(&context.data.counts, hc), per_10k_scale(&target.data.counts, ht));
            let (i, d) = cosine_knn_scaled_on(be, &context.data.counts, &cc, &cs, &target.data.counts, &tc, &ts, k);
            (i, d, genes.len())
        }
    }
}

/// Indices into the homologous-gene list: the union of each species' `n_top` most variable
/// homologous genes (Seurat v3 on counts, batch-aware), ascending.
pub fn informative_genes(
    context: &crate::preprocess::Prepared,
    target: &crate::preprocess::Prepared,
    homology: &crate::homology::Homology,
    n_top: usize,
) -> Vec<usize> {
    let top = |p: &crate::preprocess::Prepared, cols: &[usize]| {
        crate::preprocess::hvg::seurat_v3(&p.data.counts.select_cols(cols), &p.batch, p.n_batches(), n_top)
    };
    let mut genes = top(context, &homology.context);
    genes.extend(top(target, &homology.target));
    genes.sort_unstable();
    genes.dedup();
    genes
}

/// Per row: 10⁴ / (its counts over the columns `cols`), 0 for a row without any.
pub fn per_10k_scale(m: &Csr, cols: &[usize]) -> Vec<f64> {
    let mut keep = vec![false; m.n_cols];
    for &c in cols {
        keep[c] = true;
    }
    (0..m.n_rows)
        .map(|r| {
            let (idx, val) = m.row(r);
            let t: f64 = idx.iter().zip(val).filter(|(c, _)| keep[**c as usize]).map(|(_, &v)| v as f64).sum();
            if t > 0.0 { 1e4 / t } else { 0.0 }
        })
        .collect()
}
