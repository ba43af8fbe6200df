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
    /// How each pair's zero-count part is computed (see [`zero_parts`]).
    #[serde(default)]
    pub scoring: Scoring,
}

/// `--transfer-scoring`: the zero-count part of each (target cell, candidate) score, the sum of every
/// gene's zero-count term, computed exactly for every pair or read from a polynomial in the library
/// size per decoded context row, checked against exact values ([`zero_parts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Scoring {
    #[default]
    Interpolated,
    Exact,
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig { candidates: 250, top: 25, unassigned_threshold: 2.0, novelty_neighbours: 25, scoring: Scoring::Interpolated }
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
    scoring: Scoring,
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
    // The stored rows give each pair's counts' part; the zero-count part comes from `zero_parts`.
    let mut stored = HostRows { counts_only: true, ..HostRows::all(data.counts) };
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
        let block = &order[start..end];
        let dist = model.cfg.distribution;
        let zero = zero_parts(
            block,
            scoring,
            |evals| zero_scores(be, dist, &rho, &theta, lg, b, n, evals),
            |p| ((pairs[p].1 - c0 as u32), lib_hat[pairs[p].0 as usize]),
        );
        for (k, group) in block.chunks(PAIR_GROUP).enumerate() {
            let g = group.len();
            let local: Vec<u32> = group.iter().map(|&p| pairs[p].1 - c0 as u32).collect();
            let cells: Vec<usize> = group.iter().map(|&p| pairs[p].0 as usize).collect();
            let lib: Vec<f64> = cells.iter().map(|&j| lib_hat[j]).collect();
            let mut nll = be.zeros(g);
            // The pairs point at their cells' stored counts: no copy per pair.
            stored.count_terms = Some(cells.iter().map(|&j| count_terms[j]).collect());
            stored.row_of = Some(cells.iter().map(|&j| j as u32).collect());
            be.likelihood_score(dist, &stored, &local, &vec![b; g], &rho, &theta, lg, &be.upload(&lib), n, &mut nll);
            for ((&p, v), z) in group.iter().zip(be.download(&nll)).zip(&zero[k * PAIR_GROUP..]) {
                d[p] = z + v - self_nll[pairs[p].0 as usize];
            }
        }
        start = end;
    }
    d
}

/// Chebyshev points of the zero-count part's interpolant, and the points between them where it is checked.
const ZERO_NODES: usize = 12;
const ZERO_CHECKS: usize = 2;
/// The most the interpolant may miss an exact value by at a check point, in half f32 ulps of the value:
/// the nodes carry the f32 rounding of the stored scores, and the polynomial spreads it (Lebesgue
/// constant ~2 for 12 nodes), so 4 is that rounding's own size, not an interpolation error.
const ZERO_CHECK_HALF_ULPS: f64 = 4.0;

/// The zero-count part of each pair's score in `block` (pairs sorted by context cell). `at(p)` is pair
/// p's decoded row and library size; `eval` scores (row, library) without counts.
///
/// The part sums every gene's zero-count term, so it dominates the transfer's cost, yet for one decoded
/// row it is a smooth function of the library size alone, and a context cell meets ~70 target cells
/// per batch on Baron (250 when both species have as many cells). So a row met by more pairs than the interpolant needs is scored at [`ZERO_NODES`]
/// Chebyshev points in log library size over its pairs' range, and its pairs read the polynomial through
/// them. The polynomial is compared with exact values at [`ZERO_CHECKS`] points between nodes; where it
/// misses by more than the f32 rounding the scores are stored in, the range is halved and each half
/// tried again while it still holds enough pairs to pay, else its pairs are scored exactly. Each round
/// scores all its points in one `eval` call.
fn zero_parts(block: &[usize], scoring: Scoring, eval: impl Fn(&[(u32, f64)]) -> Vec<f64>, at: impl Fn(usize) -> (u32, f64)) -> Vec<f64> {
    /// Pairs (positions in `block`) of one row whose log libraries lie in [a, b].
    struct Piece {
        row: u32,
        pairs: Vec<usize>,
        a: f64,
        b: f64,
    }
    let u = |k: usize| log_lib(at(block[k]).1);
    let mut zero = vec![f64::NAN; block.len()];
    let mut exact: Vec<usize> = Vec::new();
    let mut pieces: Vec<Piece> = Vec::new();
    // A piece is worth interpolating if it holds more pairs than the points that check it.
    let place = |row: u32, pairs: Vec<usize>, exact: &mut Vec<usize>, pieces: &mut Vec<Piece>| {
        let (a, b) = pairs.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &k| (a.min(u(k)), b.max(u(k))));
        if scoring == Scoring::Interpolated && pairs.len() > ZERO_NODES + ZERO_CHECKS && b > a {
            pieces.push(Piece { row, pairs, a, b });
        } else {
            exact.extend(pairs);
        }
    };
    let mut s = 0;
    while s < block.len() {
        let row = at(block[s]).0;
        let e = s + block[s..].iter().position(|&p| at(p).0 != row).unwrap_or(block.len() - s);
        place(row, (s..e).collect(), &mut exact, &mut pieces);
        s = e;
    }
    while !pieces.is_empty() {
        let points: Vec<([f64; ZERO_NODES], [f64; ZERO_CHECKS])> = pieces.iter().map(|q| chebyshev(q.a, q.b)).collect();
        let evals: Vec<(u32, f64)> =
            pieces.iter().zip(&points).flat_map(|(q, (nodes, checks))| nodes.iter().chain(checks).map(|&x| (q.row, x.exp()))).collect();
        let vals = eval(&evals);
        let mut next = Vec::new();
        for ((q, (nodes, checks)), v) in pieces.into_iter().zip(&points).zip(vals.chunks_exact(ZERO_NODES + ZERO_CHECKS)) {
            let (f, at_checks) = v.split_at(ZERO_NODES);
            let w = bary_weights(nodes);
            let worst =
                checks.iter().zip(at_checks).map(|(&x, &v)| (barycentric(nodes, &w, f, x) - v).abs() / f32_half_ulp(v)).fold(0.0, f64::max);
            if worst <= ZERO_CHECK_HALF_ULPS {
                for &k in &q.pairs {
                    zero[k] = barycentric(nodes, &w, f, u(k));
                }
            } else {
                let mid = 0.5 * (q.a + q.b);
                let (lo, hi): (Vec<usize>, Vec<usize>) = q.pairs.iter().partition(|&&k| u(k) <= mid);
                place(q.row, lo, &mut exact, &mut next);
                place(q.row, hi, &mut exact, &mut next);
            }
        }
        pieces = next;
    }
    if !exact.is_empty() {
        let vals = eval(&exact.iter().map(|&k| at(block[k])).collect::<Vec<_>>());
        for (&k, v) in exact.iter().zip(vals) {
            zero[k] = v;
        }
    }
    zero
}

/// The zero-count part of the scores of (decoded row, library) pairs `evals`: rows without counts,
/// batch `batch`.
#[allow(clippy::too_many_arguments)]
fn zero_scores<B: Backend>(
    be: &B,
    dist: crate::engine::likelihood::Distribution,
    rho: &B::Buf,
    theta: &B::Buf,
    logit: Option<(&B::Buf, &B::Buf)>,
    batch: u32,
    n: usize,
    evals: &[(u32, f64)],
) -> Vec<f64> {
    let rows: Vec<u32> = evals.iter().map(|e| e.0).collect();
    let lib: Vec<f64> = evals.iter().map(|e| e.1).collect();
    let mut nll = be.zeros(evals.len());
    be.likelihood_score(
        dist,
        &HostRows::without_counts(evals.len()),
        &rows,
        &vec![batch; evals.len()],
        rho,
        theta,
        logit,
        &be.upload(&lib),
        n,
        &mut nll,
    );
    be.download(&nll)
}

/// The library size as the scoring kernel reads it (f32), in log.
fn log_lib(lib: f64) -> f64 {
    (lib as f32 as f64).ln()
}

/// Half the spacing of f32 values near `v`: the rounding of a score stored in f32.
fn f32_half_ulp(v: f64) -> f64 {
    let v = (v as f32).abs().max(f32::MIN_POSITIVE);
    (f32::from_bits(v.to_bits() + 1) - v) as f64 * 0.5
}

/// [`ZERO_NODES`] Chebyshev points of the second kind on [a, b] (both ends included), and
/// [`ZERO_CHECKS`] points halfway between neighbouring nodes, one near an end and the others inside.
/// Each is moved to the log of the f32 library size the kernel will read for it, so that the values
/// belong to the points the polynomial goes through.
fn chebyshev(a: f64, b: f64) -> ([f64; ZERO_NODES], [f64; ZERO_CHECKS]) {
    let node = |t: f64| log_lib((0.5 * (a + b) + 0.5 * (b - a) * (std::f64::consts::PI * t / (ZERO_NODES - 1) as f64).cos()).exp());
    let nodes = std::array::from_fn(|j| node(j as f64));
    let checks = std::array::from_fn(|c| node(0.5 + (c * (ZERO_NODES - 1) / ZERO_CHECKS) as f64));
    (nodes, checks)
}

/// The barycentric weights of `nodes`: 1/Π_{k≠j}(x_j − x_k).
fn bary_weights(nodes: &[f64; ZERO_NODES]) -> [f64; ZERO_NODES] {
    std::array::from_fn(|j| 1.0 / nodes.iter().enumerate().filter(|&(k, _)| k != j).map(|(_, &xk)| nodes[j] - xk).product::<f64>())
}

/// The polynomial through (`nodes`, `values`) at `x`, in the second barycentric form with the nodes'
/// weights `w` (stable at Chebyshev-like nodes).
fn barycentric(nodes: &[f64], w: &[f64], values: &[f64], x: f64) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for ((&xj, &wj), &fj) in nodes.iter().zip(w).zip(values) {
        let dx = x - xj;
        if dx == 0.0 {
            return fj;
        }
        let t = wj / dx;
        num += t * fj;
        den += t;
    }
    num / den
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
    let d = similarities(be, model, data, tgt, &ctx.z_mu, &pairs, cfg.scoring);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Cpu;
    use rand::{RngExt, SeedableRng};
    use std::cell::Cell;

    #[test]
    fn the_interpolant_reproduces_polynomials_of_its_degree() {
        let (a, b) = (4.0, 10.5);
        let (nodes, checks) = chebyshev(a, b);
        // The points sit at f32 library sizes: within a rounding of [a, b].
        assert!(nodes.iter().chain(&checks).all(|&x| (a - 1e-6..=b + 1e-6).contains(&x)));
        let p = |x: f64| (0..ZERO_NODES).fold(0.0, |acc, k| acc * (x - 7.0) + (k as f64 - 5.5) / (1.0 + k as f64));
        let f: Vec<f64> = nodes.iter().map(|&x| p(x)).collect();
        let w = bary_weights(&nodes);
        for i in 0..=200 {
            let x = a + (b - a) * i as f64 / 200.0;
            assert!((barycentric(&nodes, &w, &f, x) - p(x)).abs() <= 1e-9 * (1.0 + p(x).abs()), "x = {x}");
        }
        assert_eq!(barycentric(&nodes, &w, &f, nodes[3]), f[3]);
    }

    /// Pairs over `rows` decoded rows, `per_row` each (libraries log-uniform in 100..50,000), sorted by
    /// row as `similarities` sorts a block; returns (row, library) per pair.
    fn pairs(rows: u32, per_row: usize, seed: u64) -> Vec<(u32, f64)> {
        let mut r = rand::rngs::ChaCha8Rng::seed_from_u64(seed);
        (0..rows)
            .flat_map(|row| (0..per_row).map(move |_| row))
            .map(|row| (row, r.random_range(100f64.ln()..50_000f64.ln()).exp()))
            .collect()
    }

    /// zero_parts over `at` with `eval`, in both modes; also the number of (row, library) scored.
    /// Scores (row, library) without counts, as `similarities` passes to `zero_parts`.
    type Eval<'a> = &'a dyn Fn(&[(u32, f64)]) -> Vec<f64>;

    fn both(at: &[(u32, f64)], eval: Eval<'_>) -> (Vec<f64>, Vec<f64>, usize) {
        let block: Vec<usize> = (0..at.len()).collect();
        let scored = Cell::new(0);
        let counted = |e: &[(u32, f64)]| {
            scored.set(scored.get() + e.len());
            eval(e)
        };
        let interpolated = zero_parts(&block, Scoring::Interpolated, counted, |p| at[p]);
        let n = scored.get();
        let exact = zero_parts(&block, Scoring::Exact, eval, |p| at[p]);
        (interpolated, exact, n)
    }

    /// The zero-count part of a model's decoded rows (a fresh ZINB model, one batch), as the CPU
    /// backend scores it: the function the transfer interpolates.
    #[test]
    fn interpolated_zero_parts_match_exact_scores() {
        let be = Cpu::<f32>::new();
        let n = 2000;
        let hom: Vec<usize> = (0..n).filter(|g| g % 3 != 0).collect();
        let cfg = crate::model::ModelConfig::scspecies(n, 1, hom, 7.5);
        let model = Model::new(&be, cfg, &mut rand::rngs::ChaCha8Rng::seed_from_u64(1));
        let rows = 4;
        let mut r = rand::rngs::ChaCha8Rng::seed_from_u64(2);
        let z: Vec<f64> = (0..rows * model.cfg.latent).map(|_| r.random_range(-2.0..2.0)).collect();
        let (rho, logit) = model.decode(&be, &be.upload(&z), 0, rows);
        let sp = logit.as_ref().map(|l| be.softplus(l));
        let theta = model.theta_table(&be);
        let lg = logit.as_ref().zip(sp.as_ref());
        let eval = |e: &[(u32, f64)]| zero_scores(&be, model.cfg.distribution, &rho, &theta, lg, 0, n, e);
        let at = pairs(rows as u32, 150, 3);
        let (interpolated, exact, scored) = both(&at, &eval);
        eprintln!("{scored} (row, library) scored for {} pairs", at.len());
        assert!(scored * 3 <= at.len(), "{scored} scored for {} pairs", at.len());
        for (p, (i, e)) in interpolated.iter().zip(&exact).enumerate() {
            assert_eq!(e.to_bits(), eval(&[at[p]])[0].to_bits(), "exact mode scores each pair");
            assert!((i - e).abs() <= 2.0 * ZERO_CHECK_HALF_ULPS * f32_half_ulp(*e), "pair {p}: {i} vs {e}");
        }
    }

    /// A row whose part is not smooth in the library size (rounding noise of 5 units) fails every check,
    /// down to pieces too small to pay, and is scored exactly; a row met by too few pairs is scored
    /// exactly without trying; a smooth row passes at once.
    #[test]
    fn rows_the_polynomial_misses_are_scored_exactly() {
        let f = |row: u32, lib: f64| -> f64 {
            let u = log_lib(lib);
            (match row {
                1 => -5000.0 - 5.0 * ((lib.to_bits().wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as f64 / (1u64 << 24) as f64),
                _ => -3000.0 - 50.0 * u * u,
            }) as f32 as f64
        };
        let eval = |e: &[(u32, f64)]| e.iter().map(|&(r, l)| f(r, l)).collect::<Vec<f64>>();
        let mut at = pairs(2, 200, 4);
        at.extend(pairs(3, ZERO_NODES + ZERO_CHECKS, 5).into_iter().filter(|p| p.0 == 2));
        let (interpolated, exact, scored) = both(&at, &eval);
        // Row 0 at its first points; row 1 tried at halves down to pieces of ≤ 2 (K + C) pairs, then
        // exactly; row 2 exactly.
        assert!(scored >= (ZERO_NODES + ZERO_CHECKS) + 200 + (ZERO_NODES + ZERO_CHECKS), "{scored}");
        for (p, (i, e)) in interpolated.iter().zip(&exact).enumerate() {
            assert_eq!(e.to_bits(), f(at[p].0, at[p].1).to_bits());
            if at[p].0 == 0 {
                assert!((i - e).abs() <= 2.0 * ZERO_CHECK_HALF_ULPS * f32_half_ulp(*e), "pair {p}: {i} vs {e}");
            } else {
                assert_eq!(i.to_bits(), e.to_bits(), "pair {p} of row {}", at[p].0);
            }
        }
    }
}
