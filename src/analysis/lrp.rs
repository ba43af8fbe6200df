//! Layer-wise relevance propagation (paper Fig. S9; no reference code exists, choices from
//! `decisions.md`): relevance of the input genes for the latent mean, from μ_z back through the inner
//! and outer encoder with the γ-rule
//!     R_j = Σ_k a_j (w_jk + γ w⁺_jk) / (Σ_j a_j (w_jk + γ w⁺_jk) + b_k + γ b⁺_k) · R_k,
//! the bias acting as an input a_0 = 1 (so it absorbs its share). LayerNorm is a fixed linear rescale
//! with the cell's own statistics, folded into the Linear before it (w'_jk = γ_k r w_jk, b'_k =
//! γ_k r (b_k − mean) + β_k); ReLU passes relevance where active; dropout is off (eval). The start is
//! R_k = |μ_z,k|: the latent mean's magnitude, summed over the latent dimensions. Relevance reaching
//! the batch one-hot inputs is reported separately from the genes.

use crate::engine::Backend;
use crate::model::{Linear, Model};
use rayon::prelude::*;

/// One γ-rule step through a linear layer: `a` [k] inputs (non-negative), `w` [k×n] row-major, `b` [n],
/// `r_out` [n] → relevance of the inputs [k]. Only inputs with a_j ≠ 0 can receive relevance.
pub fn gamma_rule(a: &[f64], w: &[f64], b: &[f64], n: usize, r_out: &[f64], gamma: f64) -> Vec<f64> {
    let k = a.len();
    let active: Vec<usize> = (0..k).filter(|&j| a[j] != 0.0).collect();
    let wp = |v: f64| v + gamma * v.max(0.0);
    let mut denom: Vec<f64> = b.iter().map(|&v| wp(v)).collect();
    for &j in &active {
        for q in 0..n {
            denom[q] += a[j] * wp(w[j * n + q]);
        }
    }
    let s: Vec<f64> = denom.iter().zip(r_out).map(|(d, r)| if d.abs() > 1e-12 { r / d } else { 0.0 }).collect();
    let mut r = vec![0f64; k];
    for &j in &active {
        r[j] = a[j] * (0..n).map(|q| wp(w[j * n + q]) * s[q]).sum::<f64>();
    }
    r
}

/// Host copies of the encoder path to μ_z: per block (w [k×n], b, γ, β), then the μ_z head.
/// One encoder block on the host: Linear (w [k×n], b) then LayerNorm (γ, β).
type HostBlock = (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, usize, usize);
/// A layer as LRP sees it: its input, the LayerNorm-folded weights and bias, and its width.
type FoldedLayer = (Vec<f64>, Vec<f64>, Vec<f64>, usize);

pub struct EncoderWeights {
    blocks: Vec<HostBlock>,
    head: (Vec<f64>, Vec<f64>, usize, usize),
    pub n_genes: usize,
    pub n_batches: usize,
}

impl EncoderWeights {
    pub fn from_model<B: Backend>(be: &B, m: &Model<B>) -> Self {
        let get = |i: usize| be.download(&m.params[i].value);
        let lin = |l: &Linear| (get(l.w), get(l.b), l.k, l.n);
        let blocks = m
            .outer
            .iter()
            .chain(&m.inner)
            .map(|blk| {
                let (w, b, k, n) = lin(&blk.lin);
                (w, b, get(blk.gamma), get(blk.beta), k, n)
            })
            .collect();
        EncoderWeights { blocks, head: lin(&m.z_mu), n_genes: m.cfg.n_genes, n_batches: m.cfg.n_batches }
    }

    /// Relevance of each input (genes then batch one-hot) for one cell with counts `(genes, values)`
    /// and batch `batch`; also returns μ_z.
    pub fn relevance(&self, genes: &[u32], values: &[f32], batch: u32, gamma: f64) -> (Vec<f64>, Vec<f64>) {
        let mut a = vec![0f64; self.n_genes + self.n_batches];
        for (&g, &v) in genes.iter().zip(values) {
            a[g as usize] = v as f64;
        }
        a[self.n_genes + batch as usize] = 1.0;
        // Forward, keeping each layer's input and its LayerNorm-folded weights.
        let mut layers: Vec<FoldedLayer> = Vec::new();
        for (w, b, g, be, k, n) in &self.blocks {
            let (k, n) = (*k, *n);
            let mut pre = b.clone();
            for j in 0..k {
                if a[j] != 0.0 {
                    let aj = a[j];
                    for q in 0..n {
                        pre[q] += aj * w[j * n + q];
                    }
                }
            }
            let mean = pre.iter().sum::<f64>() / n as f64;
            let var = pre.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
            let r = 1.0 / (var + crate::engine::ops::LN_EPS).sqrt();
            let wf: Vec<f64> = (0..k * n).map(|i| if a[i / n] != 0.0 { g[i % n] * r * w[i] } else { 0.0 }).collect();
            let bf: Vec<f64> = (0..n).map(|q| g[q] * r * (b[q] - mean) + be[q]).collect();
            let out: Vec<f64> = (0..n).map(|q| (g[q] * (pre[q] - mean) * r + be[q]).max(0.0)).collect();
            layers.push((std::mem::replace(&mut a, out), wf, bf, n));
        }
        let (hw, hb, k, n) = &self.head;
        let z: Vec<f64> = (0..*n).map(|q| hb[q] + (0..*k).map(|j| a[j] * hw[j * n + q]).sum::<f64>()).collect();
        // Backward.
        let mut r = gamma_rule(&a, hw, hb, *n, &z.iter().map(|v| v.abs()).collect::<Vec<_>>(), gamma);
        for (input, wf, bf, n) in layers.iter().rev() {
            r = gamma_rule(input, wf, bf, *n, &r, gamma);
        }
        (r, z)
    }
}

/// Mean per-cell relevance shares over `cells`: each cell's gene relevance divided by the total
/// relevance reaching its inputs (genes and batch), so every cell weighs the same. Returns the gene
/// shares [n_genes] and the mean share that went to the batch inputs.
pub fn mean_relevance(w: &EncoderWeights, counts: &crate::data::Csr, batch: &[u32], cells: &[usize], gamma: f64) -> (Vec<f64>, f64) {
    let n = w.n_genes;
    let (sum, batch_share) = cells
        .par_iter()
        .map(|&c| {
            let (g, v) = counts.row(c);
            let (r, _) = w.relevance(g, v, batch[c], gamma);
            let tot: f64 = r.iter().sum();
            let mut genes = vec![0f64; n];
            if tot.abs() > 0.0 {
                for (&gi, _) in g.iter().zip(v) {
                    genes[gi as usize] = r[gi as usize] / tot;
                }
                let b: f64 = r[n..].iter().sum::<f64>() / tot;
                (genes, b)
            } else {
                (genes, 0.0)
            }
        })
        .reduce(
            || (vec![0f64; n], 0.0),
            |(mut a, x), (b, y)| {
                a.iter_mut().zip(&b).for_each(|(p, q)| *p += q);
                (a, x + y)
            },
        );
    let m = cells.len().max(1) as f64;
    (sum.into_iter().map(|v| v / m).collect(), batch_share / m)
}
