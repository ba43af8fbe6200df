//! Moving parameters between models: the shared inner encoder from the context model into the
//! target model, and the optional decoder initialisation along the homologous genes.

use super::Model;
use crate::engine::Backend;

impl<B: Backend> Model<B> {
    /// Copy every parameter whose name starts with `prefix` from `other` (same shapes), e.g. the shared
    /// inner encoder from the context model into the target model.
    pub fn copy_params_from(&mut self, be: &B, other: &Model<B>, prefix: &str) -> usize {
        let mut n = 0;
        for i in 0..self.params.len() {
            if self.params[i].name.starts_with(prefix) {
                let j = other.param_index(&self.params[i].name).expect("same architecture");
                self.params[i].value = be.copy(&other.params[j].value);
                n += 1;
            }
        }
        n
    }

    /// Start this (target) decoder from the context decoder, so that from the first alignment step the
    /// candidates' context latents decode to the context's profiles on the homologous genes:
    /// - hidden blocks copied; the target batch columns of the first layer get the mean of the context
    ///   batch columns (the average context batch);
    /// - `rho_pre` / `pi_nlogit` rows and biases and the mean `log_alpha` over context batches copied
    ///   gene by gene along `pairs` (context gene, target gene);
    /// - the other target genes keep their bias but get zero weights, so their (separately normalised)
    ///   profile does not depend on z and cannot bias the first candidate choices.
    ///
    /// Returns the number of genes copied. Shapes other than the gene and batch axes must match.
    pub fn init_decoder_from(&mut self, be: &B, ctx: &Model<B>, pairs: &[(usize, usize)]) -> usize {
        assert_eq!(self.cfg.latent, ctx.cfg.latent, "latent dimensions differ");
        assert_eq!(self.cfg.decoder_dims, ctx.cfg.decoder_dims, "decoder dimensions differ");
        let (l, s_t, s_c) = (self.cfg.latent, self.cfg.n_batches, ctx.cfg.n_batches);
        let (n_t, n_c) = (self.cfg.n_genes, ctx.cfg.n_genes);
        for (i, b) in self.decoder.clone().iter().enumerate() {
            let cb = ctx.decoder[i];
            for (a, c) in [(b.lin.b, cb.lin.b), (b.gamma, cb.gamma), (b.beta, cb.beta)] {
                let v = ctx.get_torch(be, c);
                self.set_torch(be, a, &v);
            }
            let w = ctx.get_torch(be, cb.lin.w); // torch [out × in]
            if i == 0 {
                let (out, k_c, k_t) = (b.lin.n, l + s_c, l + s_t);
                let mut wt = vec![0.0; out * k_t];
                for o in 0..out {
                    let row = &w[o * k_c..(o + 1) * k_c];
                    let mean_batch = row[l..].iter().sum::<f64>() / s_c as f64;
                    wt[o * k_t..o * k_t + l].copy_from_slice(&row[..l]);
                    wt[o * k_t + l..(o + 1) * k_t].iter_mut().for_each(|x| *x = mean_batch);
                }
                self.set_torch(be, b.lin.w, &wt);
            } else {
                self.set_torch(be, b.lin.w, &w);
            }
        }
        let mut heads = vec![(self.rho, ctx.rho)];
        if let (Some(a), Some(c)) = (self.pi, ctx.pi) {
            heads.push((a, c));
        }
        for (a, c) in heads {
            let hd = a.k;
            let (wc, bc) = (ctx.get_torch(be, c.w), ctx.get_torch(be, c.b));
            let (mut wt, mut bt) = (vec![0.0; n_t * hd], self.get_torch(be, a.b));
            for &(gc, gt) in pairs {
                wt[gt * hd..(gt + 1) * hd].copy_from_slice(&wc[gc * hd..(gc + 1) * hd]);
                bt[gt] = bc[gc];
            }
            self.set_torch(be, a.w, &wt);
            self.set_torch(be, a.b, &bt);
        }
        let la_c = ctx.get_torch(be, ctx.log_alpha);
        let mut la_t = self.get_torch(be, self.log_alpha);
        for &(gc, gt) in pairs {
            let m = (0..s_c).map(|s| la_c[s * n_c + gc]).sum::<f64>() / s_c as f64;
            for s in 0..s_t {
                la_t[s * n_t + gt] = m;
            }
        }
        self.set_torch(be, self.log_alpha, &la_t);
        pairs.len()
    }
}
