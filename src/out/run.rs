//! The run folder: every file a finished [`Run`] leaves, written by [`write_run`].
//!
//! - `homologous_genes.tsv`, `cells_preprocessed.tsv` (and `<species>_preprocessed.h5ad` on request);
//! - `context_model.{json,safetensors}`, `context_training.tsv`;
//! - `target_model*.{json,safetensors}`, `target_predictions.tsv`;
//! - `latent.tsv` (latent means of both species), `results.h5ad`;
//! - `metrics.json`, written last.

use super::h5ad::{AnnData, Uns, Values};
use super::{create_out_dir, write_json, write_tsv};
use crate::data::Categorical;
use crate::engine::Backend;
use crate::error::Result;
use crate::pipeline::{AlignRun, PreparedPair, Run, member_stem};
use crate::preprocess::Prepared;
use crate::train::Representation;
use std::path::Path;
use std::time::Instant;

/// What to write besides the standard files.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// Each preprocessed dataset as `<name>_preprocessed.h5ad`.
    pub preprocessed_h5ad: bool,
    /// Keep the checkpoints of the run after it finished.
    pub keep_checkpoints: bool,
}

/// Write `run`'s folder `dir` (created if needed). Models already saved in `dir` (the ones a run
/// loaded from there) are not written again. The time taken is added to the metrics as `write`.
pub fn write_run<B: Backend>(be: &B, run: &mut Run<B>, dir: &Path, opts: &WriteOptions) -> Result<()> {
    let t = Instant::now();
    create_out_dir(dir)?;
    let pair = &run.pair;
    write_pair(pair, dir, opts.preprocessed_h5ad)?;
    if run.context_source.as_deref() != Some(dir) {
        crate::model::io::save(&run.context.model, be, &run.context.meta, &dir.join("context_model"))?;
    }
    if !run.context.history.is_empty() {
        write_context_training(dir, &run.context.history)?;
    }
    match &run.target {
        None => write_latent(&dir.join("latent.tsv"), &[(&pair.context, &run.context.repr)])?,
        Some(target) => {
            // Loaded models are written too when the folder is not the one they came from.
            if run.target_trained || run.context_source.as_deref() != Some(dir) {
                for (m, member) in target.members.iter().enumerate() {
                    crate::model::io::save(&member.model, be, &member.meta, &member_stem(dir, m))?;
                }
            }
            write_predictions(dir, pair, target)?;
            write_latent(&dir.join("latent.tsv"), &[(&pair.context, &run.context.repr), (&pair.target, target.repr())])?;
            results_anndata(pair, &run.context.repr, target, &run.inputs).write(&dir.join("results.h5ad"))?;
        }
    }
    run.metrics.add_time("write", t.elapsed().as_secs_f64(), run.started);
    write_json(&dir.join("metrics.json"), &run.metrics)?;
    if !opts.keep_checkpoints {
        remove_checkpoints(run);
    }
    Ok(())
}

/// After a successful run its checkpoints are no longer needed.
fn remove_checkpoints<B: Backend>(run: &Run<B>) {
    let Some(c) = &run.config.checkpoints else { return };
    let members = run.config.align.members;
    for phase in ["context", "target"] {
        let _ = std::fs::remove_file(c.dir.join(format!("{phase}.safetensors")));
    }
    for m in 1..members {
        let _ = std::fs::remove_file(c.dir.join(format!("target_member{m}.safetensors")));
    }
    let _ = std::fs::remove_dir(&c.dir);
}

/// `homologous_genes.tsv`, `cells_preprocessed.tsv` and, if asked, the preprocessed `.h5ad` files.
pub fn write_pair(pair: &PreparedPair, dir: &Path, h5ad: bool) -> Result<()> {
    let h = &pair.homology;
    write_tsv(
        &dir.join("homologous_genes.tsv"),
        &["name", "context_gene", "target_gene", "context_index", "target_index"],
        (0..h.len()).map(|k| {
            vec![
                h.names[k].clone(),
                pair.context.data.genes[h.context[k]].clone(),
                pair.target.data.genes[h.target[k]].clone(),
                h.context[k].to_string(),
                h.target[k].to_string(),
            ]
        }),
    )?;
    let rows = [&pair.context, &pair.target].into_iter().flat_map(|p| {
        (0..p.n_cells()).map(move |i| {
            vec![
                p.data.cells[i].clone(),
                p.name.clone(),
                p.batch_names[p.batch[i] as usize].clone(),
                p.labels.as_ref().and_then(|l| l.value(i)).unwrap_or("unknown").to_string(),
                format!("{}", p.library_log_mean[i]),
                format!("{}", p.library_log_std[i]),
                p.n_genes[i].to_string(),
            ]
        })
    });
    write_tsv(
        &dir.join("cells_preprocessed.tsv"),
        &["cell", "dataset", "batch", "label", "library_log_mean", "library_log_std", "n_genes"],
        rows,
    )?;
    if h5ad {
        for (p, hom) in [(&pair.context, &h.context), (&pair.target, &h.target)] {
            preprocessed_anndata(p, hom).write(&dir.join(format!("{}_preprocessed.h5ad", p.name)))?;
        }
    }
    Ok(())
}

/// `context_training.tsv`: one row per pre-training epoch.
pub fn write_context_training(dir: &Path, history: &[crate::train::EpochStats]) -> Result<()> {
    write_tsv(
        &dir.join("context_training.tsv"),
        &["epoch", "beta", "nelbo", "nll", "kl_z", "kl_l", "ms_per_step"],
        history.iter().map(|e| {
            vec![
                e.epoch.to_string(),
                format!("{}", e.beta),
                format!("{}", e.nelbo),
                format!("{}", e.nll),
                format!("{}", e.kl_z),
                format!("{}", e.kl_l),
                format!("{:.3}", e.ms_per_step),
            ]
        }),
    )
}

/// `latent.tsv`: cell, dataset, z_1..z_L, for each (dataset, representation) block in turn.
pub fn write_latent(path: &Path, blocks: &[(&Prepared, &Representation)]) -> Result<()> {
    let l = blocks.first().map_or(0, |b| b.1.latent);
    let mut header: Vec<String> = vec!["cell".into(), "dataset".into()];
    header.extend((1..=l).map(|k| format!("z_{k}")));
    let header_ref: Vec<&str> = header.iter().map(|s| s.as_str()).collect();
    let rows = blocks.iter().flat_map(|(p, r)| {
        (0..p.n_cells()).map(move |i| {
            let mut row = vec![p.data.cells[i].clone(), p.name.clone()];
            row.extend(r.z_mu[i * l..(i + 1) * l].iter().map(|v| format!("{v}")));
            row
        })
    });
    write_tsv(path, &header_ref, rows)
}

/// The joint latent space of several targets aligned to one context: the context once (from the
/// first run), then every target. `runs` must hold a target each.
pub fn write_joint_latent<B: Backend>(path: &Path, runs: &[Run<B>]) -> Result<()> {
    let mut blocks: Vec<(&Prepared, &Representation)> = Vec::with_capacity(runs.len() + 1);
    if let Some(first) = runs.first() {
        blocks.push((&first.pair.context, &first.context.repr));
    }
    for r in runs {
        if let Some(t) = &r.target {
            blocks.push((&r.pair.target, t.repr()));
        }
    }
    write_latent(path, &blocks)
}

/// `target_predictions.tsv`: per target cell, the transferred label, its confidence and the
/// data-level kNN's view; `true_label` when the target has labels.
pub fn write_predictions<B: Backend>(dir: &Path, pair: &PreparedPair, run: &AlignRun<B>) -> Result<()> {
    let tgt = &pair.target;
    let names = &run.meta().labels;
    let (tr, knn) = (&run.transfer, &run.knn);
    let mut header = vec![
        "cell",
        "predicted_label",
        "confidence",
        "member_agreement",
        "vote_share",
        "best_similarity",
        "best_similarity_per_count",
        "novelty",
        "unassigned",
        "knn_label",
        "agreement",
        "top_percent",
        "aligned",
    ];
    if tgt.labels.is_some() {
        header.push("true_label");
    }
    write_tsv(
        &dir.join("target_predictions.tsv"),
        &header,
        (0..tgt.n_cells()).map(|i| {
            let mut r = vec![
                tgt.data.cells[i].clone(),
                names[tr.pred[i] as usize].clone(),
                format!("{:.4}", tr.confidence[i]),
                format!("{:.4}", tr.member_agreement[i]),
                format!("{:.4}", tr.vote_share[i]),
                format!("{:.4}", tr.best_similarity[i]),
                format!("{:.6}", tr.best_per_count[i]),
                format!("{:.5}", tr.novelty[i]),
                tr.unassigned[i].to_string(),
                names[knn.knn_label[i] as usize].clone(),
                knn.agreement[i].to_string(),
                format!("{}", knn.top_percent[i]),
                knn.aligned[i].to_string(),
            ];
            if let Some(l) = &tgt.labels {
                r.push(l.value(i).unwrap_or("unknown").to_string());
            }
            r
        }),
    )
}

/// `results.h5ad`: both species, latent means in `obsm["X_scspecies"]`, predictions in `obs`;
/// var = homologous genes.
pub fn results_anndata<B: Backend>(
    pair: &PreparedPair,
    ctx_repr: &Representation,
    run: &AlignRun<B>,
    inputs: &crate::pipeline::Inputs,
) -> AnnData {
    let (ctx, tgt) = (&pair.context, &pair.target);
    let names = &run.meta().labels;
    let tr = &run.transfer;
    let l = ctx_repr.latent;
    let (nc, nt) = (ctx.n_cells(), tgt.n_cells());
    let both = |c: Vec<String>, t: Vec<String>| Values::Categorical(Categorical::from_strings(&[c, t].concat()));
    let ctx_l = ctx.labels.as_ref().expect("the context has labels");
    let ctx_labels: Vec<String> = (0..nc).map(|i| ctx_l.value(i).unwrap_or("unknown").to_string()).collect();
    let pad = |v: &[f64]| -> Values { Values::F64([vec![f64::NAN; nc], v.to_vec()].concat()) };
    let mut obs = vec![
        ("dataset".to_string(), both(vec![ctx.name.clone(); nc], vec![tgt.name.clone(); nt])),
        (
            "batch".to_string(),
            both(
                ctx.batch.iter().map(|&b| ctx.batch_names[b as usize].clone()).collect(),
                tgt.batch.iter().map(|&b| tgt.batch_names[b as usize].clone()).collect(),
            ),
        ),
        ("cell_type".to_string(), both(ctx_labels.clone(), tr.pred.iter().map(|&p| names[p as usize].clone()).collect())),
        ("confidence".into(), pad(&tr.confidence)),
        ("member_agreement".into(), pad(&tr.member_agreement)),
        ("vote_share".into(), pad(&tr.vote_share)),
        ("best_similarity".into(), pad(&tr.best_similarity)),
        ("novelty".into(), pad(&tr.novelty)),
        // Context cells carry their own labels: never unassigned.
        ("unassigned".into(), Values::Bool([vec![false; nc], tr.unassigned.clone()].concat())),
        ("knn_label".into(), both(vec![String::new(); nc], run.knn.knn_label.iter().map(|&k| names[k as usize].clone()).collect())),
    ];
    if let Some(tl) = &tgt.labels {
        obs.push(("true_label".into(), both(ctx_labels, (0..nt).map(|i| tl.value(i).unwrap_or("unknown").to_string()).collect())));
    }
    let mut obs_names: Vec<String> = ctx.data.cells.iter().map(|c| format!("{c}_{}", ctx.name)).collect();
    obs_names.extend(tgt.data.cells.iter().map(|c| format!("{c}_{}", tgt.name)));
    AnnData {
        x: None,
        obs_names,
        obs,
        var_names: pair.homology.names.clone(),
        var: vec![],
        obsm: vec![("X_scspecies".into(), l, [ctx_repr.z_mu.as_slice(), run.repr().z_mu.as_slice()].concat())],
        uns: vec![(
            "scspecies".into(),
            Uns::Dict(vec![
                ("version".into(), Uns::Str(env!("CARGO_PKG_VERSION").into())),
                ("context".into(), Uns::Str(inputs.context.display().to_string())),
                ("target".into(), Uns::Str(inputs.target.display().to_string())),
                ("context_labels".into(), Uns::Strings(names.clone())),
            ]),
        )],
    }
}

/// A preprocessed dataset as AnnData, with the keys the reference's `create_mdata` produces.
pub fn preprocessed_anndata(p: &Prepared, homologous: &[usize]) -> AnnData {
    let batch = Categorical { codes: p.batch.iter().map(|&b| Some(b)).collect(), categories: p.batch_names.clone() };
    let mut obs = vec![
        ("dataset".to_string(), Values::Strings(vec![p.name.clone(); p.n_cells()])),
        ("batch".to_string(), Values::Categorical(batch)),
        ("library_log_mean".to_string(), Values::F32(p.library_log_mean.clone())),
        ("library_log_std".to_string(), Values::F32(p.library_log_std.clone())),
        ("n_genes".to_string(), Values::I64(p.n_genes.iter().map(|&x| x as i64).collect())),
    ];
    if let Some(l) = &p.labels {
        obs.push(("label".to_string(), Values::Categorical(l.clone())));
    }
    let mut hom = vec![0i64; p.data.n_genes()];
    for &g in homologous {
        hom[g] = 1;
    }
    AnnData {
        x: Some(p.data.counts.clone()),
        obs_names: p.data.cells.iter().map(|c| format!("{c}_{}", p.name)).collect(),
        obs,
        var_names: p.data.genes.clone(),
        var: vec![("homologous".to_string(), Values::I64(hom))],
        obsm: vec![("batch_label_enc".to_string(), p.n_batches(), p.batch_one_hot())],
        uns: vec![(
            "metadata".to_string(),
            Uns::Dict(vec![
                ("name".into(), Uns::Str(p.name.clone())),
                ("source".into(), Uns::Str(p.data.source.display().to_string())),
                ("lib_mu_add".into(), Uns::F64(p.lib_mu_add)),
                ("scspecies_version".into(), Uns::Str(env!("CARGO_PKG_VERSION").into())),
            ]),
        )],
    }
}
