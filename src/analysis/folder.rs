//! The analyses of a finished run folder: `evaluate`, `similarity`, `dge`, `lrp`. Each reads the
//! folder (models, predictions, and the inputs recorded in its metrics.json), preprocesses the same
//! data again (deterministic, seconds) and writes its tables and plots to `<run>/<analysis>/`.

use crate::analysis;
use crate::engine::Cpu;
use crate::error::{Error, Result};
use crate::out;
use crate::out::plot::{Scatter, heatmap};
use crate::pipeline::{Inputs, Observer, PreparedPair};
use crate::train::Representation;
use serde_json::json;
use std::path::{Path, PathBuf};

/// Which target labels define the target's cell types.
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LabelSource {
    /// The run's --target-label-key column where it was given, else the transferred labels.
    #[default]
    Auto,
    /// The target's own annotation (--target-label-key of the run).
    Truth,
    /// The labels transferred by the run (target_predictions.tsv).
    Predicted,
}

/// Where the run is, where to write, and what every analysis shares.
#[derive(Debug, Clone, Default)]
pub struct FolderOptions {
    /// The folder of a finished run (models, predictions, metrics.json).
    pub run: PathBuf,
    /// Where to write (None: `<run>/<analysis>`).
    pub out: Option<PathBuf>,
    pub target_labels: LabelSource,
    /// Random seed of the sampling in the analysis.
    pub seed: u64,
}

/// A finished run, loaded back.
pub struct Loaded {
    pub pair: PreparedPair,
    pub be: Cpu<f32>,
    pub ctx_model: crate::model::Model<Cpu<f32>>,
    pub tgt_model: crate::model::Model<Cpu<f32>>,
    pub ctx_repr: Representation,
    pub tgt_repr: Representation,
    /// Context cell-type name per context cell.
    pub ctx_labels: Vec<String>,
    /// Target cell-type name per target cell (truth or predicted, see `label_source`).
    pub tgt_labels: Vec<String>,
    pub label_source: &'static str,
    /// Transferred label per target cell and the true one where known.
    pub predicted: Vec<String>,
    pub truth: Option<Vec<String>>,
    pub out: PathBuf,
}

/// Load a finished run for the analysis `command`: re-read and preprocess its inputs, load both
/// models and their representations, and create the output folder.
pub fn load(a: &FolderOptions, command: &str, obs: &dyn Observer) -> Result<Loaded> {
    let mpath = a.run.join("metrics.json");
    let text = std::fs::read_to_string(&mpath).map_err(|e| Error::io(&mpath, e))?;
    let m: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::format(&mpath, format!("not valid JSON: {e}")))?;
    let inputs: Inputs = serde_json::from_value(m["inputs"].clone()).map_err(|e| {
        Error::format(&mpath, format!("the key 'inputs' does not describe the run's inputs ({e}); was this written by `scspecies run`?"))
    })?;
    let cfg: crate::preprocess::PreprocessConfig = serde_json::from_value(m["preprocess_config"].clone())
        .map_err(|e| Error::format(&mpath, format!("the key 'preprocess_config' is missing or damaged ({e})")))?;
    obs.log(&format!("{command}: re-reading the inputs of {}", a.run.display()));
    let pair = crate::pipeline::prepare(&inputs, &cfg, obs)?;
    let be = Cpu::<f32>::new();
    for stem in [a.run.join("context_model"), a.run.join("target_model")] {
        if !stem.with_extension("json").is_file() {
            return Err(Error::io(
                stem.with_extension("json"),
                std::io::Error::new(std::io::ErrorKind::NotFound, "no model here: --run must be the folder of a finished `scspecies run`"),
            ));
        }
    }
    // The run's own loaders: they check that the models fit the re-read data.
    let ctx = crate::pipeline::load_context(&be, &pair, &a.run)?;
    let tgt = crate::pipeline::load_targets(&be, &pair, &a.run, 1)?.swap_remove(0);
    let (ctx_model, ctx_repr, tgt_model, tgt_repr) = (ctx.model, ctx.repr, tgt.model, tgt.repr);
    let lab = |p: &crate::preprocess::Prepared| -> Option<Vec<String>> {
        p.labels.as_ref().map(|l| (0..p.n_cells()).map(|i| l.value(i).unwrap_or("unknown").to_string()).collect())
    };
    let ctx_labels = lab(&pair.context).ok_or_else(|| Error::Config("the context has no labels".into()))?;
    let truth = lab(&pair.target);
    let predicted = read_predictions(&a.run.join("target_predictions.tsv"), &pair.target.data.cells)?;
    let (tgt_labels, label_source) = match (a.target_labels, &truth) {
        (LabelSource::Truth, None) => {
            return Err(Error::Config(
                "--target-labels truth: the run was made without --target-label-key, so the target has no labels".into(),
            ));
        }
        (LabelSource::Truth | LabelSource::Auto, Some(t)) => (t.clone(), "truth"),
        _ => (predicted.clone(), "predicted"),
    };
    let out = a.out.clone().unwrap_or_else(|| a.run.join(command));
    out::create_out_dir(&out)?;
    Ok(Loaded { pair, be, ctx_model, tgt_model, ctx_repr, tgt_repr, ctx_labels, tgt_labels, label_source, predicted, truth, out })
}

/// The `predicted_label` column of a run's target_predictions.tsv, checked against the cell order.
fn read_predictions(path: &Path, cells: &[String]) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split('\t').collect();
    let col = header
        .iter()
        .position(|h| *h == "predicted_label")
        .ok_or_else(|| Error::format(path, "no 'predicted_label' column in the header"))?;
    let mut out = Vec::with_capacity(cells.len());
    for (i, line) in lines.enumerate() {
        let f: Vec<&str> = line.split('\t').collect();
        if i >= cells.len() || f.first() != Some(&cells[i].as_str()) || f.len() <= col {
            return Err(Error::format(path, format!("line {}: does not match the target's cell {} of the re-read data", i + 2, i + 1)));
        }
        out.push(f[col].to_string());
    }
    if out.len() != cells.len() {
        return Err(Error::format(path, format!("{} cells, but the re-read target has {}", out.len(), cells.len())));
    }
    Ok(out)
}

/// Codes for names (sorted distinct names).
pub fn codes<S: AsRef<str>>(names: &[S]) -> (Vec<usize>, Vec<String>) {
    let mut u: Vec<String> = names.iter().map(|n| n.as_ref().to_string()).collect();
    u.sort();
    u.dedup();
    (names.iter().map(|n| u.binary_search_by(|x| x.as_str().cmp(n.as_ref())).unwrap()).collect(), u)
}

/// Seeded subsample of at most `max` indices of 0..n, in ascending order.
pub(crate) fn subsample(n: usize, max: usize, seed: u64) -> Vec<usize> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let mut v: Vec<usize> = (0..n).collect();
    if n > max {
        let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(seed);
        v.shuffle(&mut rng);
        v.truncate(max);
        v.sort_unstable();
    }
    v
}

/// `scspecies evaluate`: integration metrics of the joint latent space (species as the batch), the
/// same metrics for the unintegrated data (PCA of the homologous genes) as a baseline, and UMAPs.
pub fn evaluate(a: &FolderOptions, obs: &dyn Observer) -> Result<()> {
    let l = load(a, "evaluate", obs)?;
    let (ctx, tgt) = (&l.pair.context, &l.pair.target);
    let (nc, nt) = (ctx.n_cells(), tgt.n_cells());
    let keep = subsample(nc + nt, 50_000, a.seed);
    let d = l.ctx_repr.latent;
    let z_all: Vec<f64> = l.ctx_repr.z_mu.iter().chain(&l.tgt_repr.z_mu).map(|&v| v as f64).collect();
    let z: Vec<f64> = keep.iter().flat_map(|&i| z_all[i * d..(i + 1) * d].iter().copied()).collect();
    let label_names: Vec<String> = l.ctx_labels.iter().chain(&l.tgt_labels).cloned().collect();
    let label_names: Vec<String> = keep.iter().map(|&i| label_names[i].clone()).collect();
    let (labels, types) = codes(&label_names);
    let species: Vec<usize> = keep.iter().map(|&i| usize::from(i >= nc)).collect();
    // Unintegrated: normalise_total(1e4) + log1p on the homologous genes, PCA with 10 components.
    let hom = &l.pair.homology;
    // Column → homologous position, per species (u32::MAX: not homologous).
    let position = |n_cols: usize, cols: &[usize]| {
        let mut pos = vec![u32::MAX; n_cols];
        for (k, &c) in cols.iter().enumerate() {
            pos[c] = k as u32;
        }
        pos
    };
    let (ctx_pos, tgt_pos) = (position(ctx.data.n_genes(), &hom.context), position(tgt.data.n_genes(), &hom.target));
    let rows: Vec<Vec<(u32, f64)>> = keep
        .iter()
        .map(|&i| {
            let (p, r, pos) = if i < nc { (ctx, i, &ctx_pos) } else { (tgt, i - nc, &tgt_pos) };
            let (gi, gv) = p.data.counts.row(r);
            let tot: f64 = gv.iter().map(|&v| v as f64).sum::<f64>().max(1.0);
            gi.iter()
                .zip(gv)
                .filter(|(g, _)| pos[**g as usize] != u32::MAX)
                .map(|(g, &v)| (pos[*g as usize], (1e4 * v as f64 / tot).ln_1p()))
                .collect()
        })
        .collect();
    obs.log(&format!(
        "evaluate: {} cells ({} context, {} target), {} cell types ({} labels)",
        keep.len(),
        nc,
        nt,
        types.len(),
        l.label_source
    ));
    let (pre_scores, pre_var) = analysis::metrics::pca_sparse(&rows, hom.len(), 10, a.seed);
    let pcr_pre = analysis::metrics::pcr(&pre_scores, &pre_var, &species);
    let s = analysis::metrics::score_all(&z, d, &labels, &species, pcr_pre, a.seed);
    let base = analysis::metrics::score_all(&pre_scores, 10, &labels, &species, pcr_pre, a.seed);
    // Balanced accuracy of the transfer where the truth is known.
    let bas = l.truth.as_ref().map(|t| {
        let names = &l.ctx_model_labels();
        let pred: Vec<u32> = l.predicted.iter().map(|p| names.iter().position(|n| n == p).unwrap_or(usize::MAX) as u32).collect();
        let tr: Vec<&str> = t.iter().map(|s| s.as_str()).collect();
        crate::pipeline::balanced_accuracy(&tr, &pred, names).0
    });
    let rows_tsv = [
        ("balanced_accuracy", bas.unwrap_or(f64::NAN), f64::NAN),
        ("pcr_comparison", s.pcr_comparison, base.pcr_comparison),
        ("species_asw", s.species_asw, base.species_asw),
        ("kbet", s.kbet, base.kbet),
        ("graph_connectivity", s.graph_connectivity, base.graph_connectivity),
        ("ari", s.ari, base.ari),
        ("nmi", s.nmi, base.nmi),
        ("isolated_labels", s.isolated_labels, base.isolated_labels),
        ("cell_type_asw", s.cell_type_asw, base.cell_type_asw),
        ("species_mixing", s.species_mixing, base.species_mixing),
        ("bio_conservation", s.bio_conservation, base.bio_conservation),
        ("total", s.total, base.total),
    ];
    out::write_tsv(
        &l.out.join("metrics.tsv"),
        &["metric", "scspecies", "unintegrated_pca"],
        rows_tsv.iter().map(|(k, v, b)| vec![k.to_string(), format!("{v:.4}"), format!("{b:.4}")]),
    )?;
    out::write_json(
        &l.out.join("metrics.json"),
        &json!({
            "cells": keep.len(), "cell_type_labels": l.label_source, "scspecies": s, "unintegrated_pca": base,
            "balanced_accuracy": bas, "pcr_pre": pcr_pre,
            "notes": "species is the batch; Louvain (resolution 0.2..2.0, best NMI) stands in for Leiden; kBET searches neighbours in the embedding, not a diffusion map",
        }),
    )?;
    // UMAP of the joint latent space, coloured by species and by cell type.
    let y = analysis::umap::umap(&z, d, 15, a.seed);
    let species_names = vec![ctx.name.clone(), tgt.name.clone()];
    out::write_tsv(
        &l.out.join("umap.tsv"),
        &["cell", "species", "cell_type", "umap_1", "umap_2"],
        keep.iter().enumerate().map(|(k, &i)| {
            let cell = if i < nc { &ctx.data.cells[i] } else { &tgt.data.cells[i - nc] };
            vec![
                cell.clone(),
                species_names[species[k]].clone(),
                label_names[k].clone(),
                format!("{:.4}", y[k][0]),
                format!("{:.4}", y[k][1]),
            ]
        }),
    )?;
    let (ux, uy): (Vec<f64>, Vec<f64>) = y.iter().map(|p| (p[0], p[1])).unzip();
    let title_sp = format!("scSpecies latent space: {} and {}", ctx.name, tgt.name);
    for (file, group, names, title) in [
        ("umap_species", &species, &species_names, title_sp.as_str()),
        ("umap_cell_type", &labels, &types, &*format!("cell types ({} labels for {})", l.label_source, tgt.name)),
    ] {
        Scatter {
            title,
            x_label: "UMAP 1",
            y_label: "UMAP 2",
            x: &ux,
            y: &uy,
            group,
            group_names: names,
            labels: &[],
            point_size: 1.6,
            axes: false,
            palette: None,
        }
        .figure()
        .save(&l.out.join(file))?;
    }
    obs.log(&format!("{:<20} {:>10} {:>17}", "metric", "scspecies", "unintegrated PCA"));
    for (k, v, b) in rows_tsv {
        obs.log(&format!("{k:<20} {v:>10.3} {b:>17.3}"));
    }
    obs.log(&format!("wrote {}", l.out.display()));
    Ok(())
}

impl Loaded {
    /// Context label names in the model's order (the code order of the predictions).
    pub fn ctx_model_labels(&self) -> Vec<String> {
        codes(&self.ctx_labels).1
    }
}

/// Sampling of the similarity matrix.
#[derive(Debug, Clone)]
pub struct SimilarityOptions {
    /// Target cells sampled per target type.
    pub max_target_cells: usize,
    /// Context cells sampled per target cell and context type.
    pub context_per_cell: usize,
}

impl Default for SimilarityOptions {
    fn default() -> Self {
        SimilarityOptions { max_target_cells: 2000, context_per_cell: 50 }
    }
}

/// `scspecies similarity`: the cell-type similarity matrix as TSV and heatmap.
pub fn similarity(o: &FolderOptions, a: &SimilarityOptions, obs: &dyn Observer) -> Result<()> {
    if a.max_target_cells == 0 || a.context_per_cell == 0 {
        return Err(Error::Config("--max-target-cells and --context-per-cell must be at least 1".into()));
    }
    let l = load(o, "similarity", obs)?;
    let tgt = &l.pair.target;
    let data = crate::train::TrainData::of(tgt);
    let (tl, ttypes) = codes(&l.tgt_labels);
    let (cl, ctypes) = codes(&l.ctx_labels);
    let cfg =
        analysis::similarity::SimilarityConfig { max_target_cells: a.max_target_cells, context_per_cell: a.context_per_cell, seed: o.seed };
    let t = std::time::Instant::now();
    let m = analysis::similarity::similarity_matrix(&l.be, &l.tgt_model, &data, &l.tgt_repr, &l.ctx_repr, &tl, &ttypes, &cl, &ctypes, &cfg);
    let secs = t.elapsed().as_secs_f64();
    let nc = ctypes.len();
    let mut header = vec!["target_type".to_string()];
    header.extend(ctypes.iter().cloned());
    let header_ref: Vec<&str> = header.iter().map(|s| s.as_str()).collect();
    out::write_tsv(
        &l.out.join("similarity.tsv"),
        &header_ref,
        ttypes.iter().enumerate().map(|(r, name)| {
            let mut row = vec![name.clone()];
            row.extend((0..nc).map(|c| format!("{:.3}", m.values[r * nc + c])));
            row
        }),
    )?;
    let mut marks = Vec::new();
    let mut best_rows = Vec::new();
    for (r, name) in ttypes.iter().enumerate() {
        let rank = m.ranking(r);
        for (k, &c) in rank.iter().take(2).enumerate() {
            marks.push((r, c, (k + 1).to_string()));
        }
        best_rows.push(vec![
            name.clone(),
            rank.first().map(|&c| ctypes[c].clone()).unwrap_or_default(),
            rank.get(1).map(|&c| ctypes[c].clone()).unwrap_or_default(),
            ctypes.contains(name).to_string(),
        ]);
    }
    out::write_tsv(&l.out.join("best_matches.tsv"), &["target_type", "best", "second", "type_in_context"], best_rows)?;
    let title = format!("{} types ({} labels) vs {} types", tgt.name, l.label_source, l.pair.context.name);
    heatmap(
        &title,
        &ttypes,
        &ctypes,
        &m.values,
        &marks,
        "-mode of NLL difference",
        true,
        (&format!("{} cell type", tgt.name), &format!("{} cell type", l.pair.context.name)),
    )
    .save(&l.out.join("similarity"))?;
    let (top1, shared) = m.agreement(1);
    let (top2, _) = m.agreement(2);
    out::write_json(
        &l.out.join("similarity.json"),
        &json!({
            "config": cfg, "target_labels": l.label_source, "seconds": secs, "matrix": m,
            "agreement": {"target_types_in_context": shared, "own_type_best": top1, "own_type_best_or_second": top2},
        }),
    )?;
    obs.log(&format!(
        "similarity: of {shared} target types that the context has, {top1} have their own type as the best match and {top2} as best or second ({secs:.1} s)"
    ));
    obs.log(&format!("wrote {}", l.out.display()));
    Ok(())
}

/// Settings of the cross-species differential expression.
#[derive(Debug, Clone)]
pub struct DgeOptions {
    /// Latent samples per cell type (the package uses 50,000).
    pub samples: usize,
    /// |log2 fold change| threshold δ.
    pub lfc_delta: f64,
    /// A gene is differentially expressed when |median LFC| > δ and P(|LFC| > δ) exceeds this.
    pub min_probability: f64,
    /// Sample latents with Uniform[0,1) noise, as the package does (a bug), instead of Gaussian.
    pub uniform_noise: bool,
    /// Only these cell types (empty: every type found in both species).
    pub cell_types: Vec<String>,
}

impl Default for DgeOptions {
    fn default() -> Self {
        DgeOptions { samples: 10_000, lfc_delta: 1.0, min_probability: 0.9, uniform_noise: false, cell_types: Vec::new() }
    }
}

/// A file-name-safe version of a label.
pub(crate) fn file_stem(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

/// `scspecies dge`: cross-species log2 fold changes per shared cell type.
pub fn dge(o: &FolderOptions, a: &DgeOptions, obs: &dyn Observer) -> Result<()> {
    if a.samples == 0 || a.lfc_delta.is_nan() || a.lfc_delta < 0.0 || !(0.0..=1.0).contains(&a.min_probability) {
        return Err(Error::Config("--samples must be at least 1, --lfc-delta at least 0, --min-probability in [0, 1]".into()));
    }
    let l = load(o, "dge", obs)?;
    let (ctx, tgt) = (&l.pair.context, &l.pair.target);
    let mut all: Vec<String> = l.ctx_labels.iter().chain(&l.tgt_labels).cloned().collect();
    all.sort();
    all.dedup();
    let code = |v: &[String]| -> Vec<usize> { v.iter().map(|n| all.binary_search(n).unwrap()).collect() };
    let (cl, tl) = (code(&l.ctx_labels), code(&l.tgt_labels));
    let mut shared: Vec<usize> = (0..all.len()).filter(|&k| cl.contains(&k) && tl.contains(&k)).collect();
    if !a.cell_types.is_empty() {
        for t in &a.cell_types {
            if !shared.iter().any(|&k| &all[k] == t) {
                return Err(Error::Config(format!(
                    "--cell-type '{t}' is not a cell type of both species; shared types: {}",
                    shared.iter().map(|&k| all[k].as_str()).collect::<Vec<_>>().join(", ")
                )));
            }
        }
        shared.retain(|&k| a.cell_types.contains(&all[k]));
    }
    if shared.is_empty() {
        return Err(Error::Config(format!("no cell type is found in both species ({} labels for the target)", l.label_source)));
    }
    let hom = &l.pair.homology;
    let cfg = analysis::dge::DgeConfig {
        samples: a.samples,
        lfc_delta: a.lfc_delta,
        min_probability: a.min_probability,
        uniform_noise: a.uniform_noise,
        seed: o.seed,
        ..Default::default()
    };
    let cs = analysis::dge::Side { model: &l.ctx_model, repr: &l.ctx_repr, batch: &ctx.batch, labels: &cl, homologous: &hom.context };
    let ts = analysis::dge::Side { model: &l.tgt_model, repr: &l.tgt_repr, batch: &tgt.batch, labels: &tl, homologous: &hom.target };
    let gene_names: Vec<String> = hom.target.iter().map(|&g| tgt.data.genes[g].clone()).collect();
    let ctx_gene_names: Vec<String> = hom.context.iter().map(|&g| ctx.data.genes[g].clone()).collect();
    let mut summary = Vec::new();
    let mut summary_json = Vec::new();
    for &k in &shared {
        let t0 = std::time::Instant::now();
        let r = analysis::dge::lfc_for_type(&l.be, &cs, &ts, k, &cfg);
        let c_cells: Vec<usize> = (0..cl.len()).filter(|&i| cl[i] == k).collect();
        let t_cells: Vec<usize> = (0..tl.len()).filter(|&i| tl[i] == k).collect();
        let dl = analysis::dge::data_lfc(&ctx.data.counts, &c_cells, &hom.context, &tgt.data.counts, &t_cells, &hom.target);
        let model_lfc: Vec<f64> = r.genes.iter().map(|g| g.lfc).collect();
        let (pe, sp) = (analysis::dge::pearson(&model_lfc, &dl), analysis::dge::spearman(&model_lfc, &dl));
        let stem = file_stem(&all[k]);
        let is_de = |g: &analysis::dge::GeneStats| g.lfc.abs() > cfg.lfc_delta && g.p > cfg.min_probability;
        out::write_tsv(
            &l.out.join(format!("{stem}.tsv")),
            &[
                "gene",
                "context_gene",
                "lfc",
                "p",
                "de",
                "lfc_rand",
                "p_rand",
                "rho_median_context",
                "mu_median_context",
                "rho_median_target",
                "mu_median_target",
                "data_lfc",
            ],
            r.genes.iter().enumerate().map(|(i, g)| {
                vec![
                    gene_names[i].clone(),
                    ctx_gene_names[i].clone(),
                    format!("{:.4}", g.lfc),
                    format!("{:.4}", g.p),
                    is_de(g).to_string(),
                    format!("{:.4}", g.lfc_rand),
                    format!("{:.4}", g.p_rand),
                    format!("{:.4e}", g.rho_median_context),
                    format!("{:.4e}", g.mu_median_context),
                    format!("{:.4e}", g.rho_median_target),
                    format!("{:.4e}", g.mu_median_target),
                    format!("{:.4}", dl[i]),
                ]
            }),
        )?;
        // Plot: median LFC against probability; the 6 DE genes with the largest |LFC| on each side labelled.
        let mut top = Vec::new();
        for sign in [-1.0, 1.0] {
            let mut side: Vec<usize> = (0..r.genes.len()).filter(|&i| is_de(&r.genes[i]) && r.genes[i].lfc * sign > 0.0).collect();
            side.sort_by(|&x, &y| r.genes[y].lfc.abs().total_cmp(&r.genes[x].lfc.abs()).then(r.genes[y].p.total_cmp(&r.genes[x].p)));
            top.extend(side.into_iter().take(6));
        }
        let x: Vec<f64> = r.genes.iter().map(|g| g.lfc).collect();
        let y: Vec<f64> = r.genes.iter().map(|g| g.p).collect();
        let group: Vec<usize> = r.genes.iter().map(|g| usize::from(is_de(g))).collect();
        let labels: Vec<(usize, String)> = top.iter().map(|&i| (i, gene_names[i].clone())).collect();
        let title = format!("{}: {} vs {} ({} DE of {})", all[k], tgt.name, ctx.name, r.de_genes, r.genes.len());
        let x_label = format!("median log2 fold change ({} - {})", tgt.name, ctx.name);
        let y_label = format!("P(|LFC| > {})", cfg.lfc_delta);
        Scatter {
            title: &title,
            x_label: &x_label,
            y_label: &y_label,
            x: &x,
            y: &y,
            group: &group,
            group_names: &["not DE".to_string(), "DE".to_string()],
            labels: &labels,
            point_size: 1.3,
            axes: true,
            palette: None,
        }
        .figure()
        .save(&l.out.join(format!("{stem}_lfc")))?;
        let secs = t0.elapsed().as_secs_f64();
        obs.log(&format!(
            "dge {}: {} of {} homologous genes DE ({:.1} %, random-pair baseline {:.1} %), r(model LFC, data LFC) = {:.2} ({:.1} s)",
            all[k],
            r.de_genes,
            r.genes.len(),
            100.0 * r.de_fraction,
            100.0 * r.de_fraction_random,
            pe,
            secs
        ));
        summary.push(vec![
            all[k].clone(),
            format!("{}/{}", r.target_cells_kept, r.target_cells),
            format!("{}/{}", r.context_cells_kept, r.context_cells),
            r.samples.to_string(),
            r.de_genes.to_string(),
            format!("{:.4}", r.de_fraction),
            format!("{:.4}", r.de_fraction_random),
            format!("{pe:.3}"),
            format!("{sp:.3}"),
        ]);
        summary_json.push(json!({"cell_type": all[k], "result": r, "pearson_data_lfc": pe, "spearman_data_lfc": sp, "seconds": secs}));
    }
    out::write_tsv(
        &l.out.join("summary.tsv"),
        &[
            "cell_type",
            "target_cells_kept",
            "context_cells_kept",
            "samples",
            "de_genes",
            "de_fraction",
            "de_fraction_random",
            "pearson_data_lfc",
            "spearman_data_lfc",
        ],
        summary,
    )?;
    out::write_json(&l.out.join("summary.json"), &json!({"config": cfg, "target_labels": l.label_source, "types": summary_json}))?;
    obs.log(&format!("wrote {}", l.out.display()));
    Ok(())
}

/// Settings of the relevance analysis.
#[derive(Debug, Clone)]
pub struct LrpOptions {
    /// γ of the LRP-γ rule.
    pub gamma: f64,
    /// Cells sampled per cell type (all if fewer).
    pub max_cells: usize,
    /// Genes listed per type in summary.tsv.
    pub top: usize,
}

impl Default for LrpOptions {
    fn default() -> Self {
        LrpOptions { gamma: 0.25, max_cells: 500, top: 10 }
    }
}

/// `scspecies lrp`: which input genes drive the latent mean, per cell type and species.
pub fn lrp(o: &FolderOptions, a: &LrpOptions, obs: &dyn Observer) -> Result<()> {
    if a.gamma.is_nan() || a.gamma < 0.0 || a.max_cells == 0 {
        return Err(Error::Config("--gamma must be at least 0 and --max-cells at least 1".into()));
    }
    let l = load(o, "lrp", obs)?;
    let hom = &l.pair.homology;
    let mut summary = Vec::new();
    let mut summary_json = Vec::new();
    for (p, model, labels, hom_cols) in
        [(&l.pair.context, &l.ctx_model, &l.ctx_labels, &hom.context), (&l.pair.target, &l.tgt_model, &l.tgt_labels, &hom.target)]
    {
        let w = analysis::lrp::EncoderWeights::from_model(&l.be, model);
        let mut is_hom = vec![false; p.data.n_genes()];
        for &g in hom_cols.iter() {
            is_hom[g] = true;
        }
        let (codes_, types) = codes(labels);
        for (k, t) in types.iter().enumerate() {
            let all: Vec<usize> = (0..codes_.len()).filter(|&i| codes_[i] == k).collect();
            let pick = subsample(all.len(), a.max_cells, o.seed ^ k as u64);
            let cells: Vec<usize> = pick.iter().map(|&i| all[i]).collect();
            let (rel, batch_share) = analysis::lrp::mean_relevance(&w, &p.data.counts, &p.batch, &cells, a.gamma);
            // Mean log1p expression of each gene over the same cells.
            let mut expr = vec![0f64; p.data.n_genes()];
            for &c in &cells {
                let (gi, gv) = p.data.counts.row(c);
                for (g, v) in gi.iter().zip(gv) {
                    expr[*g as usize] += (*v as f64).ln_1p() / cells.len() as f64;
                }
            }
            let (sp, pe) = (analysis::dge::spearman(&rel, &expr), analysis::dge::pearson(&rel, &expr));
            let mut order: Vec<usize> = (0..rel.len()).collect();
            order.sort_by(|&x, &y| rel[y].total_cmp(&rel[x]).then(x.cmp(&y)));
            out::write_tsv(
                &l.out.join(format!("{}_{}.tsv", file_stem(&p.name), file_stem(t))),
                &["rank", "gene", "relevance_share", "mean_log1p_count", "homologous"],
                order.iter().enumerate().map(|(r, &g)| {
                    vec![
                        (r + 1).to_string(),
                        p.data.genes[g].clone(),
                        format!("{:.6e}", rel[g]),
                        format!("{:.4}", expr[g]),
                        is_hom[g].to_string(),
                    ]
                }),
            )?;
            let top: Vec<String> = order.iter().take(a.top).map(|&g| p.data.genes[g].clone()).collect();
            summary.push(vec![
                p.name.clone(),
                t.clone(),
                cells.len().to_string(),
                format!("{batch_share:.4}"),
                format!("{sp:.3}"),
                format!("{pe:.3}"),
                top.join(","),
            ]);
            summary_json.push(json!({"species": p.name, "cell_type": t, "cells": cells.len(), "batch_share": batch_share,
                "spearman_expression": sp, "pearson_expression": pe, "top_genes": top}));
        }
    }
    out::write_tsv(
        &l.out.join("summary.tsv"),
        &["species", "cell_type", "cells", "batch_share", "spearman_expression", "pearson_expression", "top_genes"],
        summary.clone(),
    )?;
    out::write_json(&l.out.join("summary.json"), &json!({"gamma": a.gamma, "target_labels": l.label_source, "types": summary_json}))?;
    for r in &summary {
        obs.log(&format!("lrp {} {}: Spearman(relevance, expression) {} ; top: {}", r[0], r[1], r[4], r[6]));
    }
    obs.log(&format!("wrote {}", l.out.display()));
    Ok(())
}

/// Every analysis with its defaults on a finished run folder.
pub fn all(run: &Path, obs: &dyn Observer) -> Result<()> {
    let o = FolderOptions { run: run.to_path_buf(), ..Default::default() };
    evaluate(&o, obs)?;
    similarity(&o, &SimilarityOptions::default(), obs)?;
    dge(&o, &DgeOptions::default(), obs)?;
    lrp(&o, &LrpOptions::default(), obs)
}
