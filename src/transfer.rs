//! Latent label transfer (spec §8.1-8.2) and the flag for target cells of unknown type.
//!
//! For target cell j and context cell i, with the target decoder in eval mode, j's batch and library
//! l̂_j = exp(l_mu_j): d(j, i) = NLL(x_j | z_mu_ctx[i]) − NLL(x_j | z_mu_tgt[j]) (lower = more similar).
//! Candidates are the 250 context cells nearest to j in z_mu (Euclidean); the 25 with the smallest d
//! vote, ties to the smallest label. Context cells are decoded once per (chunk, target batch), and pairs
//! are scored through the backend in bounded groups.
//!
//! Unassigned cells (beyond the reference): scSpecies always names a context type. The aligned model
//! cannot tell a type the context lacks (alignment pulls such cells onto their nearest context type), so
//! the flag compares counts directly: the KL divergence per count of the cell's homologous-gene profile
//! from the pooled profile of its 25 nearest context cells, flagged above median + 2 robust SD over all
//! target cells.

use crate::engine::Backend;
use crate::engine::backend::HostRows;
use crate::engine::precision::ranking;
use crate::model::Model;
use crate::train::{Representation, TrainData};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferConfig {
    /// Euclidean latent candidates per target cell.
    pub candidates: usize,
    /// Candidates with the best likelihood similarity that vote.
    pub top: usize,
    /// Robust z-score (over all target cells) of the cross-species misfit above which a cell is flagged.
    pub unassigned_threshold: f64,
    /// Nearest context cells (in latent space) pooled for the misfit.
    pub novelty_neighbours: usize,
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig { candidates: 250, top: 25, unassigned_threshold: 2.0, novelty_neighbours: 25 }
    }
}

/// Homologous-gene counts of both species, for the cross-species misfit behind the unassigned flag.
pub struct HomologousCounts<'a> {
    pub context: &'a crate::data::Csr,
    pub context_cols: &'a [usize],
    pub target_cols: &'a [usize],
}

impl<'a> HomologousCounts<'a> {
    /// The context's counts and both species' homologous-gene columns of a prepared pair.
    pub fn of(pair: &'a crate::pipeline::PreparedPair) -> Self {
        HomologousCounts { context: &pair.context.data.counts, context_cols: &pair.homology.context, target_cols: &pair.homology.target }
    }
}

#[derive(Debug, Clone)]
pub struct Transfer {
    /// Predicted context label index per target cell.
    pub pred: Vec<u32>,
    /// Share of the `top` votes the predicted label got.
    pub vote_share: Vec<f64>,
    /// The smallest d(j, ·): the NLL difference to the best context match.
    pub best_similarity: Vec<f64>,
    /// best_similarity per observed count (comparable across library sizes).
    pub best_per_count: Vec<f64>,
    /// Cross-species misfit: KL divergence (per count) of the cell's homologous-gene profile from the
    /// pooled profile of its nearest context cells. High for cell types the context lacks.
    pub novelty: Vec<f64>,
    pub unassigned: Vec<bool>,
    /// Votes per context label, row-major [n_target × n_labels] (pooled over the members of a consensus).
    pub votes: Vec<u32>,
    /// Share of the consensus members whose own prediction is `pred` (1 for a single model).
    pub member_agreement: Vec<f64>,
    /// Per-cell confidence in [0, 1]: member agreement × vote share.
    pub confidence: Vec<f64>,
    /// Each member's own predictions (one entry for a single model).
    pub member_pred: Vec<Vec<u32>>,
}

/// The label with the most votes, ties to the smallest label; and its share of all votes.
fn majority(votes: &[u32]) -> (u32, f64) {
    let max = *votes.iter().max().unwrap_or(&0);
    let label = votes.iter().position(|&v| v == max).unwrap_or(0);
    let total: u32 = votes.iter().sum();
    (label as u32, if total == 0 { 0.0 } else { max as f64 / total as f64 })
}

/// Pool the label transfers of several target models aligned to one context model (a consensus).
///
/// Each cell's votes are summed over the members (every member gives `top` votes), and the label with
/// the most votes wins (ties to the smallest label). Pooling votes rather than counting member labels
/// keeps a cell's evidence from every member, so a member that is unsure moves the result less than
/// one that is sure. `member_agreement` is the share of members whose own call is the consensus label,
/// `confidence` = member agreement × pooled vote share. The misfit behind the unassigned flag is
/// averaged over the members before the flag is set (each member's latent neighbours differ);
/// `best_similarity` is the first member's.
pub fn consensus(members: Vec<Transfer>, n_labels: usize, unassigned_threshold: f64) -> Transfer {
    assert!(!members.is_empty(), "a consensus needs at least one member");
    let m = members.len();
    let nt = members[0].pred.len();
    let mut votes = vec![0u32; nt * n_labels];
    for t in &members {
        for (v, &x) in votes.iter_mut().zip(&t.votes) {
            *v += x;
        }
    }
    let mut pred = vec![0u32; nt];
    let mut share = vec![0f64; nt];
    let mut agree = vec![0f64; nt];
    for j in 0..nt {
        let (l, s) = majority(&votes[j * n_labels..(j + 1) * n_labels]);
        pred[j] = l;
        share[j] = s;
        agree[j] = members.iter().filter(|t| t.pred[j] == l).count() as f64 / m as f64;
    }
    let novelty: Vec<f64> = (0..nt).map(|j| members.iter().map(|t| t.novelty[j]).sum::<f64>() / m as f64).collect();
    let unassigned = if m == 1 { members[0].unassigned.clone() } else { flag_outliers(&novelty, unassigned_threshold) };
    let confidence = agree.iter().zip(&share).map(|(a, s)| a * s).collect();
    let member_pred = members.iter().flat_map(|t| t.member_pred.iter().cloned()).collect();
    let first = members.into_iter().next().unwrap();
    Transfer {
        pred,
        vote_share: share,
        best_similarity: first.best_similarity,
        best_per_count: first.best_per_count,
        novelty,
        unassigned,
        votes,
        member_agreement: agree,
        confidence,
        member_pred,
    }
}

/// Pairs scored per backend call.
const PAIR_GROUP: usize = 512;
/// Context cells decoded at a time.
const CONTEXT_CHUNK: usize = 256;

/// d(j, i) = NLL(x_j | z_mu_ctx[i]) − NLL(x_j | z_mu_tgt[j]) for each pair (target j, context i) of
/// `pairs` (spec §8.1): the target decoder in eval mode, j's batch, library exp(l_mu_j). Context cells
/// are decoded once per (chunk of 256, target batch); pairs are scored in groups of 512.
/// d is only ranked (the vote takes the `top` smallest), so the decoding runs in the ranking precision.
pub fn similarities<B: Backend>(
    be: &B,
    model: &Model<B>,
    data: &TrainData,
    tgt: &Representation,
    ctx_z_mu: &[f32],
    pairs: &[(u32, u32)],
) -> Vec<f64> {
    let (l, n) = (tgt.latent, model.cfg.n_genes);
    let nt = data.n_cells();
    let nc = ctx_z_mu.len() / l;
    let lib_hat: Vec<f64> = tgt.l_mu.iter().map(|&m| (m as f64).exp()).collect();
    // NLL at the cell's own latent mean.
    let mut self_nll = vec![0f64; nt];
    let theta = model.theta_table(be);
    let theta_host: Vec<f32> = be.download(&theta).iter().map(|&v| v as f32).collect();
    // Each target cell's count-only terms, computed once: at scale a cell meets few of its candidates
    // in any one context chunk, so the scoring kernel could not share them between rows.
    let mut count_terms = vec![0f64; nt];
    for c0 in (0..nt).step_by(PAIR_GROUP) {
        let cells: Vec<usize> = (c0..(c0 + PAIR_GROUP).min(nt)).collect();
        let z: Vec<f64> = cells.iter().flat_map(|&c| tgt.z_mu[c * l..(c + 1) * l].iter().map(|&v| v as f64)).collect();
        let batch: Vec<u32> = cells.iter().map(|&c| data.batch[c]).collect();
        let lib: Vec<f64> = cells.iter().map(|&c| lib_hat[c]).collect();
        let x = HostRows::gather(data.counts, &cells);
        let ct = crate::engine::ops::count_terms(&x.ptr, &x.idx, &x.val, &batch, &theta_host, n);
        count_terms[c0..c0 + cells.len()].copy_from_slice(&ct);
        let nll = ranking(|| be.download(&model.decode_nll(be, &be.upload(&z), &batch, &be.upload(&lib), &x, None)));
        self_nll[c0..c0 + cells.len()].copy_from_slice(&nll);
    }
    // Pairs ordered by (target batch, context chunk, context cell), stable: consecutive pairs then score
    // against the same decoded row, which stays in cache (each pair's value does not depend on the order).
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.sort_by_key(|&p| (data.batch[pairs[p].0 as usize], pairs[p].1 as usize / CONTEXT_CHUNK, pairs[p].1));
    let mut d = vec![f64::NAN; pairs.len()];
    let mut stored = HostRows::all(data.counts);
    let mut start = 0;
    while start < order.len() {
        let (j0, i0) = pairs[order[start]];
        let b = data.batch[j0 as usize];
        let chunk = i0 as usize / CONTEXT_CHUNK;
        let mut end = start;
        while end < order.len() && {
            let (j, i) = pairs[order[end]];
            data.batch[j as usize] == b && i as usize / CONTEXT_CHUNK == chunk
        } {
            end += 1;
        }
        let (c0, c1) = (chunk * CONTEXT_CHUNK, ((chunk + 1) * CONTEXT_CHUNK).min(nc));
        let z: Vec<f64> = ctx_z_mu[c0 * l..c1 * l].iter().map(|&v| v as f64).collect();
        let (rho, logit) = ranking(|| model.decode(be, &be.upload(&z), b, c1 - c0));
        let sp = logit.as_ref().map(|lg| be.softplus(lg));
        let lg = logit.as_ref().zip(sp.as_ref());
        for group in order[start..end].chunks(PAIR_GROUP) {
            let g = group.len();
            let local: Vec<u32> = group.iter().map(|&p| pairs[p].1 - c0 as u32).collect();
            let cells: Vec<usize> = group.iter().map(|&p| pairs[p].0 as usize).collect();
            let lib: Vec<f64> = cells.iter().map(|&j| lib_hat[j]).collect();
            let mut nll = be.zeros(g);
            // The pairs point at their cells' stored counts: no copy per pair.
            stored.count_terms = Some(cells.iter().map(|&j| count_terms[j]).collect());
            stored.row_of = Some(cells.iter().map(|&j| j as u32).collect());
            be.likelihood_score(model.cfg.distribution, &stored, &local, &vec![b; g], &rho, &theta, lg, &be.upload(&lib), n, &mut nll);
            for (&p, v) in group.iter().zip(be.download(&nll)) {
                d[p] = v - self_nll[pairs[p].0 as usize];
            }
        }
        start = end;
    }
    d
}

/// Label transfer. `data` is the target (counts, batches), `tgt`/`ctx` the eval-mode representations.
#[allow(clippy::too_many_arguments)]
pub fn transfer<B: Backend>(
    be: &B,
    model: &Model<B>,
    data: &TrainData,
    tgt: &Representation,
    ctx: &Representation,
    ctx_labels: &[u32],
    n_labels: usize,
    hom: &HomologousCounts,
    cfg: &TransferConfig,
) -> Transfer {
    let l = tgt.latent;
    let nt = data.n_cells();
    let nc = ctx.z_mu.len() / l;
    let nk = cfg.candidates.min(nc);
    let cand = crate::knn::latent_knn_on(be, &ctx.z_mu, &tgt.z_mu, l, nk);
    let pairs: Vec<(u32, u32)> = (0..nt).flat_map(|j| cand[j * nk..(j + 1) * nk].iter().map(move |&c| (j as u32, c))).collect();
    let d = similarities(be, model, data, tgt, &ctx.z_mu, &pairs);
    // Vote among the `top` most similar candidates.
    let top = cfg.top.min(nk).max(1);
    let mut pred = vec![0u32; nt];
    let mut share = vec![0f64; nt];
    let mut best = vec![0f64; nt];
    let mut votes = vec![0u32; nt * n_labels];
    for j in 0..nt {
        let mut order: Vec<usize> = (0..nk).collect();
        order.sort_by(|&a, &b| d[j * nk + a].partial_cmp(&d[j * nk + b]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b)));
        let v = &mut votes[j * n_labels..(j + 1) * n_labels];
        for &s in &order[..top] {
            v[ctx_labels[cand[j * nk + s] as usize] as usize] += 1;
        }
        (pred[j], share[j]) = majority(v); // ties: smallest label
        best[j] = d[j * nk + order[0]];
    }
    let totals = data.counts.row_sums();
    let per_count: Vec<f64> = best.iter().zip(&totals).map(|(b, t)| b / t.max(1.0)).collect();
    let nn = cfg.novelty_neighbours.min(nk).max(1);
    let novelty = cross_species_misfit(hom, data.counts, &cand, nk, nn);
    let unassigned = flag_outliers(&novelty, cfg.unassigned_threshold);
    let confidence = share.clone();
    let member_pred = vec![pred.clone()];
    Transfer {
        pred,
        vote_share: share,
        best_similarity: best,
        best_per_count: per_count,
        novelty,
        unassigned,
        votes,
        member_agreement: vec![1.0; nt],
        confidence,
        member_pred,
    }
}

/// For each target cell: KL(q ‖ p) per count on the homologous genes, where q is the cell's own profile
/// and p the mean profile of its `nn` nearest context cells (latent space), smoothed by 0.1 % uniform.
/// The alignment cannot bend this: it compares counts of the two species directly.
pub fn cross_species_misfit(hom: &HomologousCounts, target: &crate::data::Csr, cand: &[u32], stride: usize, nn: usize) -> Vec<f64> {
    let h = hom.context_cols.len();
    let mut cmap = vec![u32::MAX; hom.context.n_cols];
    for (k, &c) in hom.context_cols.iter().enumerate() {
        cmap[c] = k as u32;
    }
    let mut tmap = vec![u32::MAX; target.n_cols];
    for (k, &c) in hom.target_cols.iter().enumerate() {
        tmap[c] = k as u32;
    }
    // Normalised homologous profiles of the context cells (sparse).
    let ctx_profiles: Vec<Vec<(u32, f64)>> = (0..hom.context.n_rows)
        .into_par_iter()
        .map(|r| {
            let (i, v) = hom.context.row(r);
            let mut p: Vec<(u32, f64)> =
                i.iter().zip(v).filter(|(c, _)| cmap[**c as usize] != u32::MAX).map(|(c, &x)| (cmap[*c as usize], x as f64)).collect();
            let t: f64 = p.iter().map(|x| x.1).sum();
            if t > 0.0 {
                p.iter_mut().for_each(|x| x.1 /= t);
            }
            p
        })
        .collect();
    (0..target.n_rows)
        .into_par_iter()
        .map(|j| {
            let mut pooled = vec![0f64; h];
            for &c in &cand[j * stride..j * stride + nn] {
                for &(g, v) in &ctx_profiles[c as usize] {
                    pooled[g as usize] += v / nn as f64;
                }
            }
            let (i, v) = target.row(j);
            let x: Vec<(usize, f64)> = i
                .iter()
                .zip(v)
                .filter(|(c, x)| tmap[**c as usize] != u32::MAX && **x > 0.0)
                .map(|(c, &x)| (tmap[*c as usize] as usize, x as f64))
                .collect();
            let n: f64 = x.iter().map(|e| e.1).sum();
            if n <= 0.0 {
                return 0.0;
            }
            let floor = 0.001 / h as f64;
            x.iter().map(|&(g, c)| c * ((c / n) / (0.999 * pooled[g] + floor)).ln()).sum::<f64>() / n
        })
        .collect()
}

/// Flag values more than `t` robust standard deviations (1.4826·MAD) above the median of all values.
pub fn flag_outliers(score: &[f64], t: f64) -> Vec<bool> {
    let median = |v: &mut Vec<f64>| -> f64 {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let m = v.len();
        if m == 0 {
            0.0
        } else if m % 2 == 1 {
            v[m / 2]
        } else {
            0.5 * (v[m / 2 - 1] + v[m / 2])
        }
    };
    let mut v = score.to_vec();
    let med = median(&mut v);
    let mut dev: Vec<f64> = score.iter().map(|x| (x - med).abs()).collect();
    let mad = 1.4826 * median(&mut dev);
    if mad <= 0.0 {
        return vec![false; score.len()];
    }
    score.iter().map(|&x| (x - med) / mad > t).collect()
}
