//! `scspecies bench`: the pipeline's phases timed end to end on real shapes, as one JSON report: data
//! phases, the machine's measured GEMM peak, the decoder heads' share of it, one epoch of context
//! pre-training and of target fine-tuning (ms per step, cells per second), the data-level kNN, the label
//! transfer (cells per second), peak RSS, and the speed-up over the reference's single-thread timings
//! (from the performance issue; compare at `--threads 1` for the same thread count).

use super::{BenchArgs, check_options, demo_inputs};
use crate::engine::Backend;
use crate::error::Result;
use crate::out;
use crate::pipeline::prepare;
use serde_json::json;
use std::time::Instant;

/// The reference (scspecies 0.1.4, PyTorch, one thread) on the Baron pair, as the issue states them.
const REF_CONTEXT_STEP_S: f64 = 0.5;
const REF_TARGET_STEP_S: f64 = 2.6;
const REF_TRANSFER_6000_CELLS_S: f64 = 300.0;

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

pub fn bench(a: &BenchArgs) -> Result<()> {
    check_options(&a.opts)?;
    refuse_unused(&a.opts)?;
    super::on_device!(&a.opts, be => bench_on(be, a))
}

fn bench_on<B: Backend>(be: &B, a: &BenchArgs) -> Result<()> {
    let inputs = demo_inputs(a.data.as_deref())?;
    let cfg = a.opts.preprocess_config();
    let quiet = a.opts.quiet;
    let say = |m: &str| {
        if !quiet {
            eprintln!("{m}");
        }
    };
    // Data phases.
    let mut runs = Vec::new();
    let mut pair = None;
    for _ in 0..a.repeat.max(1) {
        let t = Instant::now();
        let p = prepare(&inputs, &cfg, &mut |_| {})?;
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
        "candidate_chunk": heads(crate::resources::CANDIDATE_CHUNK as usize, tgt.data.n_genes()),
    });
    say(&format!("GEMM peak {peak:.0} GFLOP/s"));

    // One epoch of context pre-training.
    let mut tcfg = crate::train::TrainConfig::default_for(ctx.n_cells(), a.opts.seed);
    tcfg.epochs = 1;
    tcfg.adam.lr = a.opts.learning_rate;
    let t = Instant::now();
    let crun = crate::pipeline::pretrain(be, &pair, &tcfg, &mut |_| {})?;
    let ctx_epoch_s = t.elapsed().as_secs_f64();
    let ctx_ms = crun.history[0].ms_per_step;
    say(&format!("context step {ctx_ms:.1} ms"));

    // Data-level kNN and one epoch of target fine-tuning (inside align_and_transfer), then transfer of
    // a subset timed separately.
    let mut acfg = super::align_config(&a.opts, tgt.n_cells())?;
    acfg.epochs = 1;
    let tfcfg = crate::transfer::TransferConfig { unassigned_threshold: a.opts.unassigned_threshold, ..Default::default() };
    let arun = crate::pipeline::align_and_transfer(
        be,
        &pair,
        &crun.model,
        &crun.repr,
        &acfg,
        &tfcfg,
        None,
        &Default::default(),
        &mut |_| {},
        &mut |_| {},
    )?;
    let phase = |k: &str| arun.timings.iter().find(|(n, _)| n == k).map(|x| x.1).unwrap_or(f64::NAN);
    let tgt_ms = arun.history()[0].stats.ms_per_step;
    // Per member: the consensus repeats alignment and transfer once per member.
    let transfer_s = phase("transfer") / acfg.members as f64;
    let cells_per_s = tgt.n_cells() as f64 / transfer_s;
    say(&format!("target step {tgt_ms:.1} ms, transfer {transfer_s:.1} s"));

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
            "reference_ms_per_step_1_thread": REF_CONTEXT_STEP_S * 1000.0,
            "speedup_vs_reference": REF_CONTEXT_STEP_S * 1000.0 / ctx_ms,
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
            "reference_ms_per_step_1_thread": REF_TARGET_STEP_S * 1000.0,
            "speedup_vs_reference": REF_TARGET_STEP_S * 1000.0 / tgt_ms,
        },
        "data_knn_s": phase("data_knn"),
        "label_transfer": {
            "per_member": true,
            "cells": tgt.n_cells(),
            "seconds": transfer_s,
            "cells_per_s": cells_per_s,
            "reference_s_for_6000_cells_1_thread": REF_TRANSFER_6000_CELLS_S,
            "speedup_vs_reference": REF_TRANSFER_6000_CELLS_S / (6000.0 / cells_per_s),
        },
        "peak_rss_bytes": crate::resources::peak_rss(),
        "peak_rss_bytes_per_nonzero": bytes_per_nnz,
        "note": "speed-ups compare with the reference's single-thread timings: run with --threads 1 for the same thread count",
    });
    match &a.out {
        Some(p) => out::write_json(p, &report)?,
        None => println!("{}", serde_json::to_string_pretty(&report).unwrap()),
    }
    Ok(())
}

/// `bench` times one epoch of each phase on the bundled data: options about run length, checkpoints,
/// divergence handling, memory limits and extra outputs would not take effect, so they are refused.
fn refuse_unused(o: &super::RunOptions) -> Result<()> {
    let mut unused = Vec::new();
    let mut check = |used: bool, flag: &'static str| {
        if used {
            unused.push(flag);
        }
    };
    check(o.epochs_context.is_some(), "--epochs-context");
    check(o.epochs_target.is_some(), "--epochs-target");
    check(o.write_h5ad, "--write-h5ad");
    check(o.resume.is_some(), "--resume");
    check(o.checkpoint_every != 1, "--checkpoint-every");
    check(o.keep_checkpoints, "--keep-checkpoints");
    check(o.on_nan != super::NanPolicy::Stop, "--on-nan");
    check(o.rollback_lr_factor != 0.5, "--rollback-lr-factor");
    check(o.rollback_retries != 3, "--rollback-retries");
    check(o.max_memory.is_some(), "--max-memory");
    if unused.is_empty() {
        return Ok(());
    }
    Err(crate::error::Error::Config(format!(
        "bench does not use {}: it times one epoch of each phase, without checkpoints or a memory check",
        unused.join(", ")
    )))
}
