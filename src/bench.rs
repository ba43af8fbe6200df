//! The pipeline's phases timed end to end (`scspecies bench`) on real shapes, as one JSON report: data
//! phases, the machine's measured GEMM peak, the decoder heads' share of it, one epoch of context
//! pre-training and of target fine-tuning (ms per step, cells per second), the data-level kNN, the label
//! transfer (cells per second), peak RSS, and, given the reference's metrics JSON from `run_ref.py`
//! (`--reference`), the measured speed-up of each phase over it.

use crate::engine::Backend;
use crate::error::Result;
use crate::pipeline::{Inputs, Observer, RunConfig, prepare};
use serde_json::json;
use std::path::Path;
use std::time::Instant;

/// The reference's figures from a `run_ref.py` metrics JSON: ms per training step of each phase and
/// the label transfer's wall time, with the thread count and shapes they were measured at.
struct Reference {
    context_ms: f64,
    target_ms: f64,
    transfer_s: Option<f64>,
    threads: Option<u64>,
    target_cells: Option<u64>,
    raw: serde_json::Value,
}

fn read_reference(path: &std::path::Path) -> Result<Reference> {
    use crate::error::Error;
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not JSON: {e}")))?;
    let num = |ptr: &str| v.pointer(ptr).and_then(|x| x.as_f64());
    let need = |ptr: &str| {
        num(ptr)
            .filter(|x| x.is_finite() && *x > 0.0)
            .ok_or_else(|| Error::format(path, format!("no positive number at {ptr} (expected the metrics JSON of run_ref.py)")))
    };
    let transfer_s = v
        .pointer("/phases_s")
        .and_then(|p| p.as_object())
        .and_then(|p| p.iter().find(|(k, _)| k.starts_with("label transfer")).and_then(|(_, x)| x.as_f64()));
    Ok(Reference {
        context_ms: need("/context_training/ms_per_iteration")?,
        target_ms: need("/target_training/ms_per_iteration")?,
        transfer_s,
        threads: v.pointer("/args/threads").and_then(|x| x.as_u64()),
        target_cells: v.pointer("/data/target_cells").and_then(|x| x.as_u64()),
        raw: json!({ "file": path, "versions": v.get("versions"), "data": v.get("data"), "threads": v.pointer("/args/threads") }),
    })
}

/// Best GFLOP/s of `reps` products [m×k]·[k×n] through the engine's GEMM.
fn gemm_gflops<B: Backend>(be: &B, m: usize, k: usize, n: usize, reps: usize) -> f64 {
    let x = be.upload(&(0..m * k).map(|i| ((i % 13) as f64 - 6.0) * 0.01).collect::<Vec<_>>());
    let w = be.upload(&(0..k * n).map(|i| ((i % 7) as f64 - 3.0) * 0.01).collect::<Vec<_>>());
    let b = be.zeros(n);
    let mut y = be.zeros(m * n);
    be.linear_fwd(&x, &w, &b, &mut y, m, k, n); // warm-up
    be.synchronize();
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        be.linear_fwd(&x, &w, &b, &mut y, m, k, n);
        be.synchronize();
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (m * k * n) as f64 / best / 1e9
}

/// Time the phases on `inputs` (`repeat` times for the data phases, one epoch of each training
/// phase) with the settings of `cfg`; `reference`: the reference's metrics JSON, for the speed-ups.
/// Returns the report.
pub fn bench<B: Backend>(
    be: &B,
    inputs: &Inputs,
    cfg: &RunConfig,
    repeat: usize,
    reference: Option<&Path>,
    obs: &dyn Observer,
) -> Result<serde_json::Value> {
    let reference = reference.map(read_reference).transpose()?;
    let say = |m: &str| obs.log(m);
    // Data phases.
    let mut runs = Vec::new();
    let mut pair = None;
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        let p = prepare(inputs, &cfg.preprocess, &crate::pipeline::Silent)?;
        let mut m: serde_json::Map<String, serde_json::Value> = p.timings.iter().map(|(k, v)| (format!("{k}_s"), json!(v))).collect();
        m.insert("total_s".into(), json!(t.elapsed().as_secs_f64()));
        m.insert("nonzeros".into(), json!(p.context.data.counts.nnz() + p.target.data.counts.nnz()));
        runs.push(serde_json::Value::Object(m));
        pair = Some(p);
    }
    let pair = pair.expect("at least one repetition");
    let (ctx, tgt) = (&pair.context, &pair.target);
    let threads = rayon::current_num_threads();
    say(&format!("bench on {threads} threads: data phases done"));

    // GEMM peak and the decoder heads.
    let peak = [(1024, 1024, 1024), (2048, 1024, 2048), (512, 2048, 4096)]
        .iter()
        .map(|&(m, k, n)| gemm_gflops(be, m, k, n, 3))
        .fold(0.0, f64::max);
    let hd = 300;
    let heads = |m: usize, n: usize| {
        let g = gemm_gflops(be, m, hd, n, 5);
        json!({ "shape": [m, hd, n], "gflops": g, "fraction_of_peak": g / peak })
    };
    let decoder = json!({
        "context_batch": heads(128, ctx.data.n_genes()),
        "target_batch": heads(128, tgt.data.n_genes()),
        "candidate_chunk": heads(crate::method::CANDIDATE_CHUNK, tgt.data.n_genes()),
    });
    say(&format!("GEMM peak {peak:.0} GFLOP/s"));

    // One epoch of context pre-training.
    let mut tcfg = cfg.train_config(ctx.n_cells());
    tcfg.epochs = 1;
    let t = Instant::now();
    let crun = crate::pipeline::pretrain(be, &pair, &tcfg, &crate::pipeline::Silent)?;
    let ctx_epoch_s = t.elapsed().as_secs_f64();
    let ctx_ms = crun.history[0].ms_per_step;
    say(&format!("context step {ctx_ms:.1} ms"));

    // Data-level kNN and one epoch of target fine-tuning (inside align_and_transfer), then transfer of
    // a subset timed separately.
    let mut acfg = cfg.align_config(tgt.n_cells())?;
    acfg.epochs = 1;
    let tfcfg = cfg.transfer.clone();
    let arun = crate::pipeline::align_and_transfer(be, &pair, &crun, &acfg, &tfcfg, &crate::pipeline::Silent)?;
    let phase = |k: &str| arun.timings.iter().find(|(n, _)| n == k).map(|x| x.1).unwrap_or(f64::NAN);
    let tgt_ms = arun.history()[0].stats.ms_per_step;
    // Per member: the consensus repeats alignment and transfer once per member.
    let transfer_s = phase("transfer") / acfg.members as f64;
    let cells_per_s = tgt.n_cells() as f64 / transfer_s;
    say(&format!("target step {tgt_ms:.1} ms, transfer {transfer_s:.1} s"));

    let transfers = Transfers::of(&pair, &crun, &arun)?;
    let agreement = ranking_agreement(be, &pair, &transfers, &acfg, &tfcfg, cfg.seed)?;
    say(&format!("bf16 against f32: {agreement}"));
    let scoring = scoring_agreement(be, &transfers, &tfcfg);
    say(&format!("interpolated against exact transfer scoring: {scoring}"));
    let ref_transfer = reference.as_ref().and_then(|r| r.transfer_s.zip(r.target_cells));
    let bytes_per_nnz = crate::resources::peak_rss().map(|b| b as f64 / (ctx.data.counts.nnz() + tgt.data.counts.nnz()) as f64);
    let report = json!({
        "scspecies_version": env!("CARGO_PKG_VERSION"),
        "data": inputs.context.parent(),
        "threads": threads,
        "backend": be.name(),
        "shapes": {
            "context": [ctx.n_cells(), ctx.data.n_genes(), ctx.data.counts.nnz()],
            "target": [tgt.n_cells(), tgt.data.n_genes(), tgt.data.counts.nnz()],
            "homologous_genes": pair.homology.len(),
            "batches": [ctx.n_batches(), tgt.n_batches()],
        },
        "data_phases": { "phases": ["read", "preprocess", "homology"], "runs": runs },
        "gemm_peak_gflops": peak,
        "decoder_heads": decoder,
        "context_training": {
            "ms_per_step": ctx_ms,
            "cells_per_s": 128.0 / (ctx_ms / 1000.0),
            "epoch_s": ctx_epoch_s,
            "reference_ms_per_step": reference.as_ref().map(|r| r.context_ms),
            "speedup_vs_reference": reference.as_ref().map(|r| r.context_ms / ctx_ms),
        },
        "target_training": {
            "ms_per_step": tgt_ms,
            "aligned_cells_per_step": arun.history()[0].aligned_per_step,
            "k": acfg.k,
            "top_percent": acfg.top_percent,
            "knn_space": acfg.knn_space,
            "candidates": acfg.candidates,
            "members": acfg.members,
            "epoch_s_all_members": phase("align"),
            "cells_per_s": 128.0 / (tgt_ms / 1000.0),
            "reference_ms_per_step": reference.as_ref().map(|r| r.target_ms),
            "speedup_vs_reference": reference.as_ref().map(|r| r.target_ms / tgt_ms),
        },
        "data_knn_s": phase("data_knn"),
        "label_transfer": {
            "per_member": true,
            "cells": tgt.n_cells(),
            "seconds": transfer_s,
            "cells_per_s": cells_per_s,
            // Per cell: the reference's preprocessing keeps a slightly different number of cells.
            "reference_s": ref_transfer.map(|r| r.0),
            "reference_cells": ref_transfer.map(|r| r.1),
            "speedup_vs_reference": ref_transfer.map(|(s, c)| s / c as f64 * cells_per_s),
        },
        "ranking_precision": agreement,
        "transfer_scoring": scoring,
        // Which kernels this CPU ran (the others cannot run here; their tests skip and say so).
        "paths": {
            "simd_level": format!("{:?}", crate::engine::simd::level()).to_lowercase(),
            "f32_gemm": if cfg!(target_arch = "x86_64") && crate::engine::simd::level() == crate::engine::simd::Level::Avx512 { "own avx512" } else { "matrixmultiply" },
            "bf16_gemm": if !be.name().starts_with("cpu") { "cuBLAS tensor cores (bf16 in, f32 accumulation)" } else { crate::engine::precision::bf16_kernel().unwrap_or("unavailable (f32 used)") },
            "amx": crate::engine::precision::amx_status(),
        },
        "peak_rss_bytes": crate::resources::peak_rss(),
        "peak_rss_bytes_per_nonzero": bytes_per_nnz,
        "reference": reference.as_ref().map(|r| &r.raw),
        "note": match &reference {
            None => "no --reference given: no speed-ups (run ../shared/reference/run_ref.py on this machine and pass its metrics JSON)".to_string(),
            Some(r) if r.threads != Some(threads as u64) => format!(
                "WARNING: the reference ran on {} threads, this bench on {threads}: the ratios are not at equal threads",
                r.threads.map_or("an unknown number of".to_string(), |t| t.to_string())
            ),
            Some(_) => "speed-ups at equal threads, against the reference measured on this machine".to_string(),
        },
    });
    Ok(report)
}

/// The label transfer on the models just trained, its inputs gathered once for the bench's comparisons.
struct Transfers<'a, B: Backend> {
    crun: &'a crate::pipeline::ContextRun<B>,
    arun: &'a crate::pipeline::AlignRun<B>,
    data: crate::train::TrainData<'a>,
    hom: crate::transfer::HomologousCounts<'a>,
    ctx_labels: Vec<u32>,
    n_labels: usize,
}

impl<'a, B: Backend> Transfers<'a, B> {
    fn of(
        pair: &'a crate::pipeline::PreparedPair,
        crun: &'a crate::pipeline::ContextRun<B>,
        arun: &'a crate::pipeline::AlignRun<B>,
    ) -> Result<Self> {
        let (ctx_labels, names) = crate::pipeline::context_label_codes(&pair.context)?;
        let (data, hom) = (crate::train::TrainData::of(&pair.target), crate::transfer::HomologousCounts::of(pair));
        Ok(Transfers { crun, arun, data, hom, ctx_labels, n_labels: names.len() })
    }

    /// The transfer with `cfg` and its time in seconds.
    fn run(&self, be: &B, cfg: &crate::transfer::TransferConfig) -> (crate::transfer::Transfer, f64) {
        let (a, c) = (self.arun, &self.crun.repr);
        let t = Instant::now();
        let tr = crate::transfer::transfer(be, a.model(), &self.data, a.repr(), c, &self.ctx_labels, self.n_labels, &self.hom, cfg);
        (tr, t.elapsed().as_secs_f64())
    }
}

/// The label transfer with each pair's zero-count part interpolated (the default) against computed
/// exactly for every pair (`--transfer-scoring`), on the models just trained: the share of predictions
/// and of vote shares that agree, the largest difference of the best similarity, and both times.
fn scoring_agreement<B: Backend>(be: &B, transfers: &Transfers<'_, B>, tfcfg: &crate::transfer::TransferConfig) -> serde_json::Value {
    use crate::transfer::{Scoring, TransferConfig};
    let run = |scoring: Scoring| transfers.run(be, &TransferConfig { scoring, ..tfcfg.clone() });
    let (exact, t_exact) = run(Scoring::Exact);
    let (interp, t_interp) = run(Scoring::Interpolated);
    let cells = exact.pred.len();
    let share = |same: usize| same as f64 / cells.max(1) as f64;
    json!({
        "transfer_cells": cells,
        "prediction_agreement": share(exact.pred.iter().zip(&interp.pred).filter(|(a, b)| a == b).count()),
        "vote_share_agreement": share(exact.vote_share.iter().zip(&interp.vote_share).filter(|(a, b)| a == b).count()),
        "max_best_similarity_difference": exact.best_similarity.iter().zip(&interp.best_similarity).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max),
        "transfer_s_exact": t_exact,
        "transfer_s_interpolated": t_interp,
    })
}

/// The ranking paths in bf16 against f32 on the models just trained: the share of candidate choices
/// (every aligned target cell, its k candidates, eval mode, the same latent samples) and of label
/// transfer predictions that agree, and both transfers' times. Null on a CPU without a bf16 GEMM.
fn ranking_agreement<B: Backend>(
    be: &B,
    pair: &crate::pipeline::PreparedPair,
    transfers: &Transfers<'_, B>,
    acfg: &crate::align::AlignConfig,
    tfcfg: &crate::transfer::TransferConfig,
    seed: u64,
) -> Result<serde_json::Value> {
    use crate::engine::precision::{self, Precision};
    use rand::SeedableRng;
    let on_cpu = be.name().starts_with("cpu");
    if on_cpu && !precision::bf16_available() {
        return Ok(serde_json::Value::Null);
    }
    // A GPU always has bf16 tensor cores; the CPU only with AMX or AVX512-BF16 (checked above).
    let set = |p: Precision| {
        if on_cpu {
            precision::set_ranking(p).expect("bf16 is available");
        } else {
            precision::set_ranking_gpu(p);
        }
    };
    let before = precision::ranking_precision();
    let (tgt, crun, arun) = (&pair.target, transfers.crun, transfers.arun);
    let repr = arun.repr();
    let queries: Vec<crate::align::candidates::Query> = (0..tgt.n_cells())
        .filter(|&j| arun.knn.aligned[j])
        .map(|j| crate::align::candidates::Query {
            cell: j,
            batch: tgt.batch[j],
            lib: (repr.l_mu[j] as f64).exp(),
            neighbours: &arun.knn.knn[j * arun.knn.stored..j * arun.knn.stored + acfg.k],
        })
        .collect();
    let run = |p: Precision| {
        set(p);
        let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(seed);
        let chosen = crate::align::candidates::choose(be, arun.model(), &crun.repr, &tgt.data.counts, &queries, false, &mut rng).0;
        let (tr, secs) = transfers.run(be, tfcfg);
        (chosen, tr.pred, secs)
    };
    let (c32, p32, t32) = run(Precision::F32);
    let (c16, p16, t16) = run(Precision::Bf16);
    set(before);
    let share = |a: &[usize], b: &[usize]| a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len().max(1) as f64;
    let p32: Vec<usize> = p32.iter().map(|&v| v as usize).collect();
    let p16: Vec<usize> = p16.iter().map(|&v| v as usize).collect();
    Ok(json!({
        "candidate_choices": queries.len(),
        "candidate_choice_agreement": share(&c32, &c16),
        "transfer_cells": p32.len(),
        "transfer_prediction_agreement": share(&p32, &p16),
        "transfer_s_f32": t32,
        "transfer_s_bf16": t16,
        "note": "after one epoch of each phase (bench); the run's own models give the figures in the README",
    }))
}
