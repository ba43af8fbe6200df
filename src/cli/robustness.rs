//! `scspecies robustness`: the demo over a matrix of seeds × rounding variants, one child process per
//! run (the rounding variant is chosen per process through `SCSPECIES_SIMD`), and a table of the
//! balanced accuracy and per-type recall of every run with mean, min and max and the CPU model.
//! Finished runs (a `metrics.json` in their folder) are kept, so an interrupted matrix continues.

use crate::error::{Error, Result};
use crate::out;
use clap::Args;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

#[derive(Args, Debug, Clone)]
pub struct RobustnessArgs {
    /// Output folder: one run folder per (seed, variant), robustness.{tsv,json,md}.
    #[arg(long, default_value = "results/robustness")]
    pub out: PathBuf,
    /// Seeds, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2,3,4")]
    pub seeds: Vec<u64>,
    /// Rounding variants, comma-separated: `default` (the widest vector unit: the engine's AVX-512
    /// GEMM where the CPU has it) and `avx2` (capped at AVX2: matrixmultiply's GEMM, which sums in
    /// another order, as on a CPU without AVX-512).
    #[arg(long, value_delimiter = ',', default_value = "default,avx2")]
    pub variants: Vec<String>,
    /// Folder of the bundled demo data (default: data/baron-pancreas of this source tree).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Worker threads of each run.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Options passed to every `demo` run, after `--` (e.g. `-- --members 1 --top-percent 50`).
    #[arg(last = true)]
    pub demo_args: Vec<String>,
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|m| m.trim().to_string()))
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

fn read_json(p: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(p, e.to_string()))
}

pub fn robustness(a: &RobustnessArgs) -> Result<()> {
    for v in &a.variants {
        if v != "default" && v != "avx2" {
            return Err(Error::Config(format!("--variants: unknown rounding variant '{v}' (default, avx2)")));
        }
    }
    if a.seeds.is_empty() || a.variants.is_empty() {
        return Err(Error::Config("--seeds and --variants need at least one value each".into()));
    }
    let exe = std::env::current_exe().map_err(|e| Error::Config(format!("cannot find this program's path: {e}")))?;
    out::create_out_dir(&a.out)?;
    let cpu = cpu_model();
    let avx512 = crate::engine::simd::detected_capped() == crate::engine::simd::Level::Avx512;
    let mut runs = Vec::new();
    let total = a.seeds.len() * a.variants.len();
    for &seed in &a.seeds {
        for v in &a.variants {
            let dir = a.out.join(format!("seed{seed}-{v}"));
            let metrics = dir.join("metrics.json");
            if !metrics.is_file() {
                eprintln!("== run {} of {total}: seed {seed}, rounding {v} -> {}", runs.len() + 1, dir.display());
                let mut cmd = std::process::Command::new(&exe);
                cmd.arg("demo").arg("--out").arg(&dir).arg("--seed").arg(seed.to_string()).arg("--quiet");
                if let Some(d) = &a.data {
                    cmd.arg("--data").arg(d);
                }
                if let Some(t) = a.threads {
                    cmd.arg("--threads").arg(t.to_string());
                }
                cmd.args(&a.demo_args);
                match v.as_str() {
                    "avx2" => cmd.env("SCSPECIES_SIMD", "avx2"),
                    _ => cmd.env_remove("SCSPECIES_SIMD"),
                };
                let status = cmd.status().map_err(|e| Error::Config(format!("could not start {}: {e}", exe.display())))?;
                if !status.success() {
                    return Err(Error::Config(format!("the run for seed {seed}, variant {v} failed ({status}); see above")));
                }
            } else {
                eprintln!("== run {} of {total}: seed {seed}, rounding {v}: done before, kept ({})", runs.len() + 1, dir.display());
            }
            let m = read_json(&metrics)?;
            runs.push((seed, v.clone(), dir, m));
        }
    }
    let table = summarise(&runs, &cpu, avx512, &a.demo_args)?;
    out::write_json(&a.out.join("robustness.json"), &table.json)?;
    out::write_bytes_atomic(&a.out.join("robustness.tsv"), table.tsv.as_bytes())?;
    out::write_bytes_atomic(&a.out.join("robustness.md"), table.markdown.as_bytes())?;
    println!("{}", table.markdown);
    Ok(())
}

struct Table {
    json: Value,
    tsv: String,
    markdown: String,
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn stats(x: &[f64]) -> (f64, f64, f64) {
    let mean = x.iter().sum::<f64>() / x.len() as f64;
    (mean, x.iter().copied().fold(f64::INFINITY, f64::min), x.iter().copied().fold(f64::NEG_INFINITY, f64::max))
}

fn summarise(runs: &[(u64, String, PathBuf, Value)], cpu: &str, avx512: bool, demo_args: &[String]) -> Result<Table> {
    let eval = |m: &Value, dir: &Path| -> Result<Value> {
        m.get("evaluation")
            .cloned()
            .ok_or_else(|| Error::format(dir.join("metrics.json"), "no evaluation (the demo data carry target labels)"))
    };
    let first = eval(&runs[0].3, &runs[0].2)?;
    let types: Vec<String> = first["recall_per_type"]
        .as_array()
        .map(|a| a.iter().filter_map(|t| t["type"].as_str().map(String::from)).collect())
        .unwrap_or_default();
    let mut tsv = format!("seed\tvariant\tbalanced_accuracy\tmember_balanced_accuracy\tdata_level_knn\tseconds\t{}\n", types.join("\t"));
    let mut rows = Vec::new();
    let (mut bas, mut member_bas, mut secs) = (Vec::new(), Vec::new(), Vec::new());
    let mut min_recall = vec![f64::INFINITY; types.len()];
    let mut bins: Vec<crate::pipeline::CalibrationBin> = Vec::new();
    for (seed, v, dir, m) in runs {
        let e = eval(m, dir)?;
        let b = f(&e["balanced_accuracy"]["latent_transfer"]);
        let knn = f(&e["balanced_accuracy"]["data_level_knn"]);
        let mb: Vec<f64> = e["members"].as_array().map(|a| a.iter().map(|x| f(&x["balanced_accuracy"])).collect()).unwrap_or_default();
        let t = f(&m["timings_s"]["total"]);
        let recall: Vec<f64> = types
            .iter()
            .map(|ty| {
                e["recall_per_type"]
                    .as_array()
                    .and_then(|a| a.iter().find(|x| x["type"] == ty.as_str()))
                    .map_or(f64::NAN, |x| f(&x["latent_transfer"]))
            })
            .collect();
        for (mr, r) in min_recall.iter_mut().zip(&recall) {
            *mr = mr.min(*r);
        }
        if let Ok(c) = serde_json::from_value::<Vec<crate::pipeline::CalibrationBin>>(e["calibration"].clone()) {
            if bins.is_empty() {
                bins = c;
            } else {
                for (acc, x) in bins.iter_mut().zip(c) {
                    acc.shared_cells += x.shared_cells;
                    acc.shared_correct += x.shared_correct;
                    acc.novel_cells += x.novel_cells;
                    acc.novel_unassigned += x.novel_unassigned;
                }
            }
        }
        bas.push(b);
        member_bas.extend(&mb);
        secs.push(t);
        let mbs = mb.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(",");
        tsv += &format!(
            "{seed}\t{v}\t{b:.4}\t{mbs}\t{knn:.4}\t{t:.0}\t{}\n",
            recall.iter().map(|r| format!("{r:.3}")).collect::<Vec<_>>().join("\t")
        );
        rows.push(json!({"seed": seed, "variant": v, "balanced_accuracy": b, "member_balanced_accuracy": mb,
                         "data_level_knn": knn, "seconds": t, "recall": types.iter().zip(&recall).map(|(t, r)| json!({"type": t, "recall": r})).collect::<Vec<_>>()}));
    }
    let (mean, min, max) = stats(&bas);
    let (tmean, _, _) = stats(&secs);
    let short = |t: &str| t.replace("pancreatic ", "").replace(" cell", "");
    let mut md = String::new();
    md += &format!(
        "Robustness matrix on {cpu} ({} threads; AVX-512 {}), {} runs: seeds {} x rounding variants {}{}.\n\n",
        rayon::current_num_threads(),
        if avx512 { "present: `avx2` runs matrixmultiply's GEMM" } else { "absent: `avx2` rounds as `default`" },
        runs.len(),
        runs.iter().map(|r| r.0.to_string()).collect::<std::collections::BTreeSet<_>>().into_iter().collect::<Vec<_>>().join(", "),
        runs.iter().map(|r| r.1.clone()).collect::<std::collections::BTreeSet<_>>().into_iter().collect::<Vec<_>>().join(", "),
        if demo_args.is_empty() { String::new() } else { format!("; demo options `{}`", demo_args.join(" ")) }
    );
    md += &format!(
        "| seed | rounding | balanced accuracy | members | kNN | {} | minutes |\n",
        types.iter().map(|t| short(t)).collect::<Vec<_>>().join(" | ")
    );
    md += &format!("|---|---|---|---|---|{}---|\n", "---|".repeat(types.len()));
    for r in &rows {
        md += &format!(
            "| {} | {} | {:.3} | {} | {:.3} | {} | {:.1} |\n",
            r["seed"],
            r["variant"].as_str().unwrap_or(""),
            f(&r["balanced_accuracy"]),
            r["member_balanced_accuracy"]
                .as_array()
                .map(|a| a.iter().map(|x| format!("{:.3}", f(x))).collect::<Vec<_>>().join(" / "))
                .unwrap_or_default(),
            f(&r["data_level_knn"]),
            r["recall"]
                .as_array()
                .map(|a| a.iter().map(|x| format!("{:.2}", f(&x["recall"]))).collect::<Vec<_>>().join(" | "))
                .unwrap_or_default(),
            f(&r["seconds"]) / 60.0
        );
    }
    md += &format!(
        "\nBalanced accuracy: mean **{mean:.3}**, min {min:.3}, max {max:.3}; lowest recall per type over the runs: {}. Mean run time {:.1} min.\n",
        types.iter().zip(&min_recall).map(|(t, r)| format!("{} {r:.2}", short(t))).collect::<Vec<_>>().join(", "),
        tmean / 60.0
    );
    if !member_bas.is_empty() {
        let (mm, mmin, mmax) = stats(&member_bas);
        md += &format!(
            "Single target models (each member on its own): mean {mm:.3}, min {mmin:.3}, max {mmax:.3} over {} models.\n",
            member_bas.len()
        );
    }
    if !bins.is_empty() {
        md += "\nCalibration, all runs pooled (confidence = member agreement x vote share):\n\n";
        md += "| confidence | cells of shared types | share correct | cells of types the context lacks | share flagged unassigned |\n|---|---|---|---|---|\n";
        for b in &bins {
            let pct = |a: usize, n: usize| if n == 0 { "-".to_string() } else { format!("{:.1} %", 100.0 * a as f64 / n as f64) };
            md += &format!(
                "| {:.1}-{:.1} | {} | {} | {} | {} |\n",
                b.low,
                b.high,
                b.shared_cells,
                pct(b.shared_correct, b.shared_cells),
                b.novel_cells,
                pct(b.novel_unassigned, b.novel_cells)
            );
        }
    }
    let json = json!({"cpu": cpu, "avx512": avx512, "threads": rayon::current_num_threads(), "demo_args": demo_args, "runs": rows,
                      "balanced_accuracy": {"mean": mean, "min": min, "max": max},
                      "min_recall_per_type": types.iter().zip(&min_recall).map(|(t, r)| json!({"type": t, "recall": r})).collect::<Vec<_>>(),
                      "single_models": member_bas, "calibration": bins});
    Ok(Table { json, tsv, markdown: md })
}
