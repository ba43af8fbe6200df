//! A synthetic cross-species pair for benchmarks and tests: two species whose genes are partly
//! orthologous (shared, with a species shift in baseline expression) and partly species-specific; cell
//! types defined by gene programs on the orthologous genes (so they are recognisable across species),
//! one type present only in the context and one only in the target; batch effects per batch and gene;
//! log-normal library sizes; zero-inflated negative binomial counts (gamma-Poisson with a dropout
//! probability). Seeded: the same settings give the same files, whatever the thread count.
//!
//! Written in the folder format the readers take: `context/` and `target/` with `counts.mtx`,
//! `genes.tsv`, `cells.tsv` (barcode, batch, cell_type), and `homology.tsv` (context gene, target gene).

use crate::data::Csr;
use crate::error::{Error, Result};
use rand::RngExt;
use rand_distr::{Distribution, Gamma, Normal, Poisson};
use rayon::prelude::*;
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Serialize)]
pub struct SimConfig {
    pub context_cells: usize,
    pub target_cells: usize,
    /// Genes per species.
    pub genes: usize,
    /// Fraction of each species' genes with a one-to-one ortholog in the other.
    pub orthologous_fraction: f64,
    /// Cell types shared by both species (plus one specific to each).
    pub shared_types: usize,
    /// Batches per species.
    pub batches: usize,
    /// Wanted fraction of non-zero counts; sets the library size.
    pub density: f64,
    /// Probability of an extra zero (the zero-inflation).
    pub dropout: f64,
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            context_cells: 2000,
            target_cells: 2000,
            genes: 2000,
            orthologous_fraction: 0.7,
            shared_types: 6,
            batches: 2,
            density: 0.1,
            dropout: 0.05,
            seed: 0,
        }
    }
}

/// What was written, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    pub config: SimConfig,
    pub orthologous_genes: usize,
    pub context_nonzeros: usize,
    pub target_nonzeros: usize,
    pub context_density: f64,
    pub target_density: f64,
    pub median_library: [f64; 2],
    pub cell_types: Vec<String>,
}

/// One species' generative parameters.
struct Species {
    /// Baseline log-expression per gene.
    base: Vec<f64>,
    /// Cell-type programs: (type, gene) log-fold changes, row-major types x genes.
    program: Vec<f64>,
    /// Batch effects: batches x genes.
    batch_shift: Vec<f64>,
    theta: Vec<f64>,
    types: Vec<usize>,
}

fn rng(seed: u64, purpose: u64, index: u64) -> rand::rngs::ChaCha8Rng {
    crate::train::stream(seed, 100 + purpose, index, 0)
}

/// Expected fraction of non-zero counts for a library size `lib` over the profiles of all types.
fn expected_density(sp: &Species, n_types: usize, lib: f64, dropout: f64) -> f64 {
    let g = sp.base.len();
    let mut tot = 0.0;
    for t in 0..n_types {
        let logits: Vec<f64> = (0..g).map(|j| sp.base[j] + sp.program[t * g + j]).collect();
        let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = logits.iter().map(|l| (l - m).exp()).sum();
        for (lg, &th) in logits.iter().zip(&sp.theta) {
            let mu = lib * (lg - m).exp() / z;
            let p0 = (th / (th + mu)).powf(th);
            tot += (1.0 - dropout) * (1.0 - p0);
        }
    }
    tot / (n_types * g) as f64
}

/// Generate and write the pair into `dir` (created), returning what was written.
pub fn simulate(cfg: &SimConfig, dir: &Path) -> Result<SimReport> {
    if cfg.genes < 10 || cfg.context_cells == 0 || cfg.target_cells == 0 || cfg.shared_types == 0 || cfg.batches == 0 {
        return Err(Error::Config("simulate needs at least 10 genes, one cell per species, one shared type and one batch".into()));
    }
    let ok = (0.0..=1.0).contains(&cfg.orthologous_fraction) && cfg.density > 0.0 && cfg.density < 0.9 && (0.0..0.9).contains(&cfg.dropout);
    if !ok {
        return Err(Error::Config("orthologous fraction in [0, 1], density in (0, 0.9), dropout in [0, 0.9)".into()));
    }
    let g = cfg.genes;
    let n_orth = ((g as f64 * cfg.orthologous_fraction).round() as usize).min(g);
    let n_types = cfg.shared_types + 2; // + one context-only, one target-only
    let normal = |m: f64, s: f64| Normal::new(m, s).unwrap();
    // Shared structure: baseline and programs on the orthologous genes (indices 0..n_orth in both).
    let mut r = rng(cfg.seed, 0, 0);
    let shared_base: Vec<f64> = (0..n_orth).map(|_| normal(0.0, 1.2).sample(&mut r)).collect();
    let mut shared_program = vec![0.0; n_types * n_orth];
    for t in 0..n_types {
        for j in 0..n_orth {
            if r.random::<f64>() < 0.04 {
                shared_program[t * n_orth + j] = normal(2.0, 0.5).sample(&mut r);
            }
        }
    }
    let make = |sp_idx: u64, types_here: Vec<usize>| -> Species {
        let mut r = rng(cfg.seed, 1, sp_idx);
        let mut base = vec![0.0; g];
        let mut program = vec![0.0; n_types * g];
        for j in 0..g {
            base[j] = if j < n_orth { shared_base[j] + normal(0.0, 0.4).sample(&mut r) } else { normal(-0.5, 1.2).sample(&mut r) };
            for t in 0..n_types {
                program[t * g + j] = if j < n_orth {
                    shared_program[t * n_orth + j] * (1.0 + normal(0.0, 0.15).sample(&mut r))
                } else if r.random::<f64>() < 0.02 {
                    normal(1.5, 0.5).sample(&mut r)
                } else {
                    0.0
                };
            }
        }
        let batch_shift = (0..cfg.batches * g).map(|_| normal(0.0, 0.25).sample(&mut r)).collect();
        let theta = (0..g).map(|_| normal(0.7, 0.6).sample(&mut r).exp()).collect();
        Species { base, program, batch_shift, theta, types: types_here }
    };
    let shared: Vec<usize> = (0..cfg.shared_types).collect();
    let ctx = make(0, shared.iter().copied().chain([cfg.shared_types]).collect());
    let tgt = make(1, shared.iter().copied().chain([cfg.shared_types + 1]).collect());
    let type_names: Vec<String> = (0..n_types)
        .map(|t| match t {
            t if t < cfg.shared_types => format!("type_{t}"),
            t if t == cfg.shared_types => "context_only".to_string(),
            _ => "target_only".to_string(),
        })
        .collect();
    // Library size for the wanted density (bisection on the expected non-zero fraction).
    let lib_for = |sp: &Species| -> f64 {
        let (mut lo, mut hi) = (1.0f64, 1e8f64);
        for _ in 0..60 {
            let mid = (lo * hi).sqrt();
            if expected_density(sp, n_types, mid, cfg.dropout) < cfg.density { lo = mid } else { hi = mid }
        }
        (lo * hi).sqrt()
    };
    std::fs::create_dir_all(dir).map_err(|e| Error::write(dir, e))?;
    let gene_name = |sp: usize, j: usize| -> String {
        match (sp, j < n_orth) {
            (0, true) => format!("Orth{j}"),
            (_, true) => format!("ORTH{j}"),
            (0, false) => format!("Ctx{j}"),
            (_, false) => format!("TGT{j}"),
        }
    };
    let mut nnz = [0usize; 2];
    let mut med = [0f64; 2];
    for (s, (sp, n_cells, name)) in [(&ctx, cfg.context_cells, "context"), (&tgt, cfg.target_cells, "target")].into_iter().enumerate() {
        let lib = lib_for(sp);
        let counts = sample_counts(cfg, sp, s as u64, n_cells, lib);
        nnz[s] = counts.0.nnz();
        let mut totals = counts.0.row_sums();
        totals.sort_by(|a, b| a.partial_cmp(b).unwrap());
        med[s] = totals[totals.len() / 2];
        let d = dir.join(name);
        std::fs::create_dir_all(&d).map_err(|e| Error::write(&d, e))?;
        write_mtx(&d.join("counts.mtx"), &counts.0)?;
        crate::out::write_tsv(&d.join("genes.tsv"), &["gene"], (0..g).map(|j| vec![gene_name(s, j)]))?;
        crate::out::write_tsv(
            &d.join("cells.tsv"),
            &["barcode", "batch", "cell_type"],
            (0..n_cells).map(|i| vec![format!("{name}_{i}"), format!("{name}_b{}", counts.1[i]), type_names[counts.2[i]].clone()]),
        )?;
    }
    crate::out::write_tsv(
        &dir.join("homology.tsv"),
        &["context_gene", "target_gene"],
        (0..n_orth).map(|j| vec![gene_name(0, j), gene_name(1, j)]),
    )?;
    let report = SimReport {
        config: cfg.clone(),
        orthologous_genes: n_orth,
        context_nonzeros: nnz[0],
        target_nonzeros: nnz[1],
        context_density: nnz[0] as f64 / (cfg.context_cells * g) as f64,
        target_density: nnz[1] as f64 / (cfg.target_cells * g) as f64,
        median_library: med,
        cell_types: type_names,
    };
    crate::out::write_json(&dir.join("simulation.json"), &report)?;
    Ok(report)
}

/// Counts of `n` cells: (CSR, batch per cell, type per cell). Cells are generated in blocks, each from
/// its own seeded stream, so the result does not depend on the thread count.
fn sample_counts(cfg: &SimConfig, sp: &Species, species: u64, n: usize, lib: f64) -> (Csr, Vec<usize>, Vec<usize>) {
    const BLOCK: usize = 256;
    let g = sp.base.len();
    // Per block: row lengths, column indices, values, batch and type per cell.
    type Block = (Vec<usize>, Vec<u32>, Vec<f32>, Vec<usize>, Vec<usize>);
    let blocks: Vec<Block> = (0..n.div_ceil(BLOCK))
        .into_par_iter()
        .map(|b| {
            let mut r = rng(cfg.seed, 2 + species, b as u64);
            let lib_noise: Normal<f64> = Normal::new(0.0, 0.45).unwrap();
            let (mut lens, mut idx, mut val, mut batches, mut types) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let mut logits = vec![0f64; g];
            for i in b * BLOCK..((b + 1) * BLOCK).min(n) {
                let t = sp.types[i % sp.types.len()];
                let batch = (i / sp.types.len()) % cfg.batches;
                let (prog, shift) = (&sp.program[t * g..(t + 1) * g], &sp.batch_shift[batch * g..(batch + 1) * g]);
                for (((lg, b0), p), s) in logits.iter_mut().zip(&sp.base).zip(prog).zip(shift) {
                    *lg = b0 + p + s;
                }
                let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = logits.iter().map(|l| (l - m).exp()).sum();
                let li = lib * lib_noise.sample(&mut r).exp();
                let before = idx.len();
                for (j, (lg, &th)) in logits.iter().zip(&sp.theta).enumerate() {
                    let mu = li * (lg - m).exp() / z;
                    let lam = Gamma::new(th, mu / th).map(|d| d.sample(&mut r)).unwrap_or(0.0);
                    let x = if lam > 0.0 { Poisson::new(lam).map(|p| p.sample(&mut r)).unwrap_or(0.0) } else { 0.0 };
                    if x > 0.0 && r.random::<f64>() >= cfg.dropout {
                        idx.push(j as u32);
                        val.push(x.min(16_777_216.0) as f32);
                    }
                }
                // Every cell keeps at least one count (a cell without any is filtered by preprocessing).
                if idx.len() == before {
                    idx.push(0);
                    val.push(1.0);
                }
                lens.push(idx.len() - before);
                batches.push(batch);
                types.push(t);
            }
            (lens, idx, val, batches, types)
        })
        .collect();
    let mut indptr = vec![0usize];
    let (mut indices, mut data, mut batch, mut types) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (lens, idx, val, b, t) in blocks {
        for l in lens {
            indptr.push(indptr.last().unwrap() + l);
        }
        indices.extend(idx);
        data.extend(val);
        batch.extend(b);
        types.extend(t);
    }
    (Csr::from_parts(n, g, indptr, indices, data).expect("valid by construction"), batch, types)
}

/// Matrix Market, integer, 1-based, written atomically.
pub fn write_mtx(path: &Path, m: &Csr) -> Result<()> {
    crate::out::write_atomic(path, |w| {
        writeln!(w, "%%MatrixMarket matrix coordinate integer general")?;
        writeln!(w, "{} {} {}", m.n_rows, m.n_cols, m.nnz())?;
        let mut line = String::with_capacity(64);
        for r in 0..m.n_rows {
            let (idx, val) = m.row(r);
            for (&c, &v) in idx.iter().zip(val) {
                use std::fmt::Write as _;
                line.clear();
                let _ = writeln!(line, "{} {} {}", r + 1, c + 1, v as u64);
                w.write_all(line.as_bytes())?;
            }
        }
        Ok(())
    })
}

/// The inputs of a pair written by [`simulate`] in `dir`: `context/` and `target/` with `batch` and
/// `cell_type` columns, and `homology.tsv`.
pub fn inputs(dir: &Path) -> crate::pipeline::Inputs {
    crate::pipeline::Inputs {
        context: dir.join("context"),
        target: dir.join("target"),
        context_name: "context".into(),
        target_name: "target".into(),
        ..crate::pipeline::demo_like_inputs(dir)
    }
}
