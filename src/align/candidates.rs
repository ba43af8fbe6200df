//! The argmax-likelihood choice among each aligned target cell's k context neighbours (spec §6.3,
//! forward only): sample each neighbour's latent z̃ ~ N(z_mu_ctx, z_sig_ctx²), decode it with the target
//! decoder, the target cell's batch and its sampled library, score the NLL at the target's counts and
//! keep the best (first minimum on ties). Candidates are decoded in chunks of at most `CHUNK_ROWS`
//! rows, so no (cells × k × genes) tensor larger than one chunk ever exists.

use crate::data::Csr;
use crate::engine::Backend;
use crate::engine::backend::HostRows;
use crate::model::Model;
use crate::train::Representation;
use rand::Rng;
use rand_distr::{Distribution as _, StandardNormal};

pub use crate::method::CANDIDATE_CHUNK as CHUNK_ROWS;

/// One aligned target cell of the minibatch.
pub struct Query<'a> {
    /// Row of the target cell in `counts`.
    pub cell: usize,
    pub batch: u32,
    /// Its sampled library size in this step.
    pub lib: f64,
    /// Its context neighbours (the first k of the data-level kNN).
    pub neighbours: &'a [u32],
}

/// For each query: the position (0..k) of the chosen neighbour, the candidates' NLLs, and the chosen
/// candidate's sampled latent z̃ (the target of the latent-space alignment).
/// `train_mode` draws decoder dropout masks like the reference (the decoder is in train mode there).
pub fn choose<B: Backend>(
    be: &B,
    model: &Model<B>,
    ctx: &Representation,
    counts: &Csr,
    queries: &[Query],
    train_mode: bool,
    rng: &mut impl Rng,
) -> (Vec<usize>, Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let l = model.cfg.latent;
    let mut chosen = Vec::with_capacity(queries.len());
    let mut all_nll = Vec::with_capacity(queries.len());
    let mut latents = Vec::with_capacity(queries.len());
    let mut start = 0;
    while start < queries.len() {
        // Whole queries up to CHUNK_ROWS candidate rows (at least one query).
        let mut end = start + 1;
        let mut rows = queries[start].neighbours.len();
        while end < queries.len() && rows + queries[end].neighbours.len() <= CHUNK_ROWS {
            rows += queries[end].neighbours.len();
            end += 1;
        }
        let chunk = &queries[start..end];
        start = end;
        let mut z = Vec::with_capacity(rows * l);
        let mut batch = Vec::with_capacity(rows);
        let mut lib = Vec::with_capacity(rows);
        let mut cells = Vec::with_capacity(rows);
        for q in chunk {
            for &j in q.neighbours {
                let j = j as usize;
                for d in 0..l {
                    let e: f64 = StandardNormal.sample(rng);
                    z.push(ctx.z_mu[j * l + d] as f64 + ctx.z_sig[j * l + d] as f64 * e);
                }
                batch.push(q.batch);
                lib.push(q.lib);
                cells.push(q.cell);
            }
        }
        let x = HostRows::gather(counts, &cells);
        let masks = train_mode.then(|| model.decoder_masks(be, rows, rng));
        // Only the ranking of the candidates is used: the decoding may run in the ranking precision.
        let nll = crate::engine::precision::ranking(|| {
            be.download(&model.decode_nll(be, &be.upload(&z), &batch, &be.upload(&lib), &x, masks.as_deref()))
        });
        let mut off = 0;
        for q in chunk {
            let v = nll[off..off + q.neighbours.len()].to_vec();
            let mut best = 0;
            for (j, &s) in v.iter().enumerate() {
                if s < v[best] {
                    best = j;
                }
            }
            chosen.push(best);
            latents.push(z[(off + best) * l..(off + best + 1) * l].to_vec());
            all_nll.push(v);
            off += q.neighbours.len();
        }
    }
    (chosen, all_nll, latents)
}
