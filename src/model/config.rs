//! The model's architecture and constants ([`ModelConfig`]), checked before a model is built.

use crate::engine::likelihood::Distribution;
use serde::{Deserialize, Serialize};

/// Architecture and constants of one species' model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelConfig {
    pub n_genes: usize,
    pub n_batches: usize,
    pub outer_dims: Vec<usize>,
    pub inner_dims: Vec<usize>,
    pub latent: usize,
    pub library_dims: Vec<usize>,
    pub decoder_dims: Vec<usize>,
    pub distribution: Distribution,
    pub dropout: f64,
    /// Constant added to the library mean head: round(mean log library prior, 5).
    pub lib_mu_add: f64,
    /// Gene indices of the homologous group of the split softmax.
    pub homologous: Vec<usize>,
}

impl ModelConfig {
    /// The reference's defaults (spec §2.2).
    pub fn scspecies(n_genes: usize, n_batches: usize, homologous: Vec<usize>, lib_mu_add: f64) -> Self {
        use crate::method::{HIDDEN_DIM, INTER_DIM, LATENT_DIM};
        ModelConfig {
            n_genes,
            n_batches,
            outer_dims: vec![INTER_DIM],
            inner_dims: vec![HIDDEN_DIM],
            latent: LATENT_DIM,
            library_dims: vec![HIDDEN_DIM],
            decoder_dims: vec![HIDDEN_DIM, INTER_DIM],
            distribution: Distribution::Zinb,
            dropout: 0.1,
            lib_mu_add,
            homologous,
        }
    }
    pub fn inter_dim(&self) -> usize {
        *self.outer_dims.last().unwrap()
    }

    /// Checks a configuration read from a file before anything is built from it.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (what, dims) in [
            ("outer_dims", &self.outer_dims),
            ("inner_dims", &self.inner_dims),
            ("library_dims", &self.library_dims),
            ("decoder_dims", &self.decoder_dims),
        ] {
            if dims.is_empty() || dims.contains(&0) {
                return Err(format!("{what} {dims:?} must list at least one layer width, all positive"));
            }
        }
        if self.n_genes == 0 || self.n_batches == 0 || self.latent == 0 {
            return Err(format!("n_genes {}, n_batches {} and latent {} must be positive", self.n_genes, self.n_batches, self.latent));
        }
        if let Some(&g) = self.homologous.iter().find(|&&g| g >= self.n_genes) {
            return Err(format!("homologous gene index {g} is outside the {} genes", self.n_genes));
        }
        if !(0.0..1.0).contains(&self.dropout) || !self.lib_mu_add.is_finite() {
            return Err(format!("dropout {} must be in [0, 1) and lib_mu_add {} finite", self.dropout, self.lib_mu_add));
        }
        Ok(())
    }

    /// The number of parameters the model has (saturating, for plausibility checks on untrusted configs).
    pub fn n_params(&self) -> u64 {
        let (n, s, l) = (self.n_genes as u64, self.n_batches as u64, self.latent as u64);
        let lin = |k: u64, m: u64| k.saturating_mul(m).saturating_add(m);
        let blocks = |first: u64, dims: &[usize]| -> u64 {
            let mut prev = first;
            let mut t = 0u64;
            for &d in dims {
                t = t.saturating_add(lin(prev, d as u64)).saturating_add(2 * d as u64);
                prev = d as u64;
            }
            t
        };
        let last = |d: &[usize]| *d.last().unwrap_or(&0) as u64;
        let heads = if self.distribution == Distribution::Zinb { 2 } else { 1 };
        [
            blocks(n + s, &self.outer_dims),
            blocks(last(&self.outer_dims), &self.inner_dims),
            2u64.saturating_mul(lin(last(&self.inner_dims), l)),
            blocks(n + s, &self.library_dims),
            2u64.saturating_mul(lin(last(&self.library_dims), 1)),
            s.saturating_mul(n),
            blocks(l + s, &self.decoder_dims),
            (heads as u64).saturating_mul(lin(last(&self.decoder_dims), n)),
        ]
        .iter()
        .fold(0u64, |a, &b| a.saturating_add(b))
    }
}
