//! `report.html`: one self-contained page per run folder, made from the folder's files alone (so
//! `scspecies report --run DIR` works on any finished run). Figures are inline SVG, also written to
//! `<run>/figures/` as SVG and PNG; the page needs no network and no script.

use super::figures::{small_multiples, stacked_bars};
use super::plot::{Figure, Rgb, Scatter, category_colour, heatmap, viridis};
use crate::analysis::folder::{codes, file_stem, subsample};
use crate::data::text::read_tsv;
use crate::error::{Error, Result};
use crate::pipeline::{CONFIDENCE_BINS, Observer};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Cells drawn in the UMAPs at most (a seeded subsample beyond).
const UMAP_CELLS: usize = 20_000;

struct Fig {
    caption: String,
    svg: String,
}

/// Column names and rows of a TSV.
type Table = (Vec<String>, Vec<Vec<String>>);

/// A TSV with a header, or None when the file does not exist.
fn table(path: &Path) -> Result<Option<Table>> {
    if !path.is_file() {
        return Ok(None);
    }
    let t = read_tsv(path, true)?;
    Ok(Some((t.header.unwrap_or_default(), t.rows)))
}

fn column<'a>(path: &Path, header: &[String], rows: &'a [Vec<String>], name: &str) -> Result<Vec<&'a str>> {
    let k = header.iter().position(|h| h == name).ok_or_else(|| Error::format(path, format!("no column '{name}'")))?;
    Ok(rows.iter().map(|r| r[k].as_str()).collect())
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn num(v: &Value) -> String {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(x) if n.is_f64() => {
                if x.abs() >= 1000.0 || x == x.trunc() {
                    format!("{x:.0}")
                } else {
                    format!("{x:.3}")
                }
            }
            _ => n.to_string(),
        },
        Value::Null => "–".into(),
        Value::String(s) => esc(s),
        other => esc(&other.to_string()),
    }
}

/// Write `<dir>/report.html` (and the figures in `<dir>/figures/`) for the run folder `dir`.
pub fn write_report(dir: &Path, obs: &dyn Observer) -> Result<PathBuf> {
    let mpath = dir.join("metrics.json");
    let text = std::fs::read_to_string(&mpath).map_err(|e| Error::io(&mpath, e))?;
    let m: Value = serde_json::from_str(&text).map_err(|e| Error::format(&mpath, format!("not valid JSON: {e}")))?;
    if m.get("inputs").is_none() {
        return Err(Error::format(
            &mpath,
            "no 'inputs': this is not the metrics.json of a single run (with several targets, report each target's folder)",
        ));
    }
    let fig_dir = dir.join("figures");
    super::create_out_dir(&fig_dir)?;
    let mut figs: Vec<(String, Fig)> = Vec::new();
    let mut add = |section: &str, name: &str, caption: String, f: Figure| -> Result<()> {
        f.save(&fig_dir.join(name))?;
        figs.push((section.to_string(), Fig { caption, svg: f.svg() }));
        Ok(())
    };
    let ctx_name = m["inputs"]["context_name"].as_str().unwrap_or("context").to_string();
    let tgt_name = m["inputs"]["target_name"].as_str().unwrap_or("target").to_string();

    // Training curves.
    let cpath = dir.join("context_training.tsv");
    if let Some((h, rows)) = table(&cpath)? {
        let col =
            |n: &str| -> Result<Vec<f64>> { Ok(column(&cpath, &h, &rows, n)?.iter().map(|v| v.parse().unwrap_or(f64::NAN)).collect()) };
        let series = vec![
            ("nELBO".to_string(), col("nelbo")?),
            ("NLL".to_string(), col("nll")?),
            ("KL(z)".to_string(), col("kl_z")?),
            ("KL(library)".to_string(), col("kl_l")?),
            ("beta".to_string(), col("beta")?),
        ];
        let title = format!("Context pre-training ({ctx_name}): per-epoch means");
        add(
            "training",
            "training_context",
            "Context pre-training: the loss and its terms per epoch.".into(),
            small_multiples(&title, "epoch", &col("epoch")?, &series),
        )?;
    }
    if let Some(hist) = m["align"]["history"].as_array().filter(|h| !h.is_empty()) {
        let get = |f: &dyn Fn(&Value) -> &Value| hist.iter().map(|e| f(e).as_f64().unwrap_or(f64::NAN)).collect::<Vec<f64>>();
        let x = get(&|e| &e["stats"]["epoch"]);
        let series = vec![
            ("loss".to_string(), get(&|e| &e["stats"]["nelbo"])),
            ("NLL".to_string(), get(&|e| &e["stats"]["nll"])),
            ("KL(z)".to_string(), get(&|e| &e["stats"]["kl_z"])),
            ("alignment term".to_string(), get(&|e| &e["align"])),
            ("candidate label agreement".to_string(), get(&|e| &e["candidate_label_agreement"])),
            ("aligned cells per step".to_string(), get(&|e| &e["aligned_per_step"])),
        ];
        let title = format!("Target alignment ({tgt_name}): per-epoch means");
        add(
            "training",
            "training_target",
            "Target fine-tuning: loss, its terms, the alignment term in the intermediate space, and the share of chosen candidates whose context label is the cell's data-level kNN label.".into(),
            small_multiples(&title, "epoch", &x, &series),
        )?;
    }

    // Predictions and the joint latent space.
    let ppath = dir.join("target_predictions.tsv");
    let pred_table = table(&ppath)?;
    let cells_path = dir.join("cells_preprocessed.tsv");
    let lpath = dir.join("latent.tsv");
    if let (Some((ph, prows)), Some((ch, crows)), Some((lh, lrows))) = (&pred_table, table(&cells_path)?, table(&lpath)?) {
        let pred = column(&ppath, ph, prows, "predicted_label")?;
        let conf: Vec<f64> = column(&ppath, ph, prows, "confidence")?.iter().map(|v| v.parse().unwrap_or(f64::NAN)).collect();
        let unassigned: Vec<bool> = column(&ppath, ph, prows, "unassigned")?.iter().map(|v| *v == "true").collect();
        let truth = column(&ppath, ph, prows, "true_label").ok();
        let datasets = column(&cells_path, &ch, &crows, "dataset")?;
        let labels = column(&cells_path, &ch, &crows, "label")?;
        let ctx_labels: Vec<&str> = datasets.iter().zip(&labels).filter(|(d, _)| **d == ctx_name).map(|(_, l)| *l).collect();
        let context_names = {
            let mut v: Vec<String> = ctx_labels.iter().map(|s| s.to_string()).collect();
            v.sort();
            v.dedup();
            v
        };
        // One colour per cell-type name, the same in every figure.
        let mut all_types: Vec<String> = context_names.clone();
        if let Some(t) = &truth {
            all_types.extend(t.iter().map(|s| s.to_string()));
        }
        all_types.sort();
        all_types.dedup();
        let type_colour = |name: &str| category_colour(all_types.iter().position(|t| t == name).unwrap_or(0));

        // UMAP of the latent means (context first, then target, as latent.tsv holds them).
        let nz = lh.len().saturating_sub(2);
        let n = lrows.len();
        let (nc, nt) = (ctx_labels.len(), prows.len());
        if nz > 0 && n == nc + nt {
            let keep = subsample(n, UMAP_CELLS, 0);
            let z: Vec<f64> = keep.iter().flat_map(|&i| lrows[i][2..].iter().map(|v| v.parse::<f64>().unwrap_or(0.0))).collect();
            obs.log(&format!("report: UMAP of {} cells", keep.len()));
            let y = crate::analysis::umap::umap(&z, nz, 15, 0);
            let (ux, uy): (Vec<f64>, Vec<f64>) = y.iter().map(|p| (p[0], p[1])).unzip();
            let is_tgt = |i: usize| i >= nc;
            // A scatter with its points reordered so that `front` cells are drawn last.
            let mut umap = |name: &str,
                            title: String,
                            caption: String,
                            group: Vec<usize>,
                            names: Vec<String>,
                            palette: Vec<Rgb>,
                            front: &dyn Fn(usize) -> bool| {
                let mut order: Vec<usize> = (0..keep.len()).filter(|&k| !front(keep[k])).collect();
                order.extend((0..keep.len()).filter(|&k| front(keep[k])));
                let (x, yv, g): (Vec<f64>, Vec<f64>, Vec<usize>) = (
                    order.iter().map(|&k| ux[k]).collect(),
                    order.iter().map(|&k| uy[k]).collect(),
                    order.iter().map(|&k| group[k]).collect(),
                );
                let f = Scatter {
                    title: &title,
                    x_label: "UMAP 1",
                    y_label: "UMAP 2",
                    x: &x,
                    y: &yv,
                    group: &g,
                    group_names: &names,
                    labels: &[],
                    point_size: 1.7,
                    axes: false,
                    palette: Some(&palette),
                }
                .figure();
                add("umap", name, caption, f)
            };
            umap(
                "umap_species",
                format!("Joint latent space: {ctx_name} and {tgt_name}"),
                "UMAP of the latent means of both species, coloured by species: well-aligned species mix within cell types.".into(),
                keep.iter().map(|&i| usize::from(is_tgt(i))).collect(),
                vec![ctx_name.clone(), tgt_name.clone()],
                vec![category_colour(0), category_colour(1)],
                &|i| is_tgt(i),
            )?;
            let label_of = |i: usize| if is_tgt(i) { pred[i - nc] } else { ctx_labels[i] };
            let (g, names) = codes(&keep.iter().map(|&i| label_of(i)).collect::<Vec<_>>());
            let pal: Vec<Rgb> = names.iter().map(|n| type_colour(n)).collect();
            umap(
                "umap_cell_type",
                format!("Cell types: {ctx_name} labels, {tgt_name} predicted"),
                format!(
                    "The same UMAP coloured by cell type: the context's own labels and the labels transferred to the {tgt_name} cells."
                ),
                g,
                names,
                pal,
                &|i| is_tgt(i),
            )?;
            if let Some(t) = &truth {
                let (g, names) = codes(&keep.iter().map(|&i| if is_tgt(i) { t[i - nc] } else { ctx_labels[i] }).collect::<Vec<_>>());
                let pal: Vec<Rgb> = names.iter().map(|n| type_colour(n)).collect();
                umap(
                    "umap_true_label",
                    format!("Cell types: {ctx_name} labels, {tgt_name} true labels"),
                    format!(
                        "Coloured by the {tgt_name} cells' own annotation (--target-label-key), for comparison with the transferred labels."
                    ),
                    g,
                    names,
                    pal,
                    &|i| is_tgt(i),
                )?;
            }
            let bins: Vec<String> = (0..CONFIDENCE_BINS.len() - 1)
                .map(|b| format!("{} confidence {:.1}-{:.1}", tgt_name, CONFIDENCE_BINS[b], CONFIDENCE_BINS[b + 1]))
                .collect();
            let mut names = vec![ctx_name.clone()];
            names.extend(bins);
            let mut pal = vec![Rgb::LIGHT];
            pal.extend((0..CONFIDENCE_BINS.len() - 1).map(|b| viridis(0.15 + 0.85 * b as f64 / (CONFIDENCE_BINS.len() - 2) as f64)));
            let bin_of = |c: f64| 1 + CONFIDENCE_BINS[1..CONFIDENCE_BINS.len() - 1].iter().filter(|&&e| c >= e).count();
            umap(
                "umap_confidence",
                format!("Confidence of the transferred labels ({tgt_name})"),
                "Per-cell confidence (member agreement x vote share); context cells in grey.".into(),
                keep.iter().map(|&i| if is_tgt(i) { bin_of(conf[i - nc]) } else { 0 }).collect(),
                names,
                pal,
                &|i| is_tgt(i),
            )?;
            umap(
                "umap_unassigned",
                format!("Unassigned {tgt_name} cells"),
                "Target cells flagged unassigned (their profile fits no context cell type: candidates for types the context lacks) in red."
                    .into(),
                keep.iter()
                    .map(|&i| {
                        if !is_tgt(i) {
                            0
                        } else if unassigned[i - nc] {
                            2
                        } else {
                            1
                        }
                    })
                    .collect(),
                vec![ctx_name.clone(), format!("{tgt_name}, assigned"), format!("{tgt_name}, unassigned")],
                vec![Rgb::LIGHT, Rgb(120, 160, 200), Rgb::RED],
                &|i| is_tgt(i) && unassigned[i - nc],
            )?;
        }

        // Assigned context labels per target type, and the confusion matrix.
        if let Some(t) = &truth {
            let (tcode, ttypes) = codes(t);
            let mut segments = context_names.clone();
            segments.push("unassigned".into());
            let mut colours: Vec<Rgb> = context_names.iter().map(|n| type_colour(n)).collect();
            colours.push(Rgb(235, 235, 235));
            let mut counts = vec![vec![0usize; segments.len()]; ttypes.len()];
            let mut confusion = vec![vec![0usize; context_names.len()]; ttypes.len()];
            for i in 0..nt {
                let p = context_names.iter().position(|c| c == pred[i]).unwrap_or(0);
                confusion[tcode[i]][p] += 1;
                counts[tcode[i]][if unassigned[i] { segments.len() - 1 } else { p }] += 1;
            }
            add(
                "labels",
                "assigned_labels",
                format!(
                    "For each {tgt_name} cell type (its own annotation), the shares of the context labels assigned to its cells; cells flagged unassigned in light grey (after the paper's Fig. 2)."
                ),
                stacked_bars(&format!("Context labels assigned to each {tgt_name} cell type"), &ttypes, &segments, &colours, &counts),
            )?;
            let values: Vec<f64> = confusion
                .iter()
                .flat_map(|row| {
                    let total: usize = row.iter().sum();
                    row.iter().map(move |&c| if total == 0 { f64::NAN } else { c as f64 / total as f64 })
                })
                .collect();
            let marks: Vec<(usize, usize, String)> = confusion
                .iter()
                .enumerate()
                .flat_map(|(r, row)| row.iter().enumerate().filter(|(_, c)| **c > 0).map(move |(c, n)| (r, c, n.to_string())))
                .collect();
            add(
                "labels",
                "confusion",
                "Confusion matrix: cell counts of each true type (rows) by predicted context label (columns), coloured by the row's share."
                    .into(),
                heatmap(
                    &format!("True {tgt_name} type vs transferred label"),
                    &ttypes,
                    &context_names,
                    &values,
                    &marks,
                    "share of the row",
                    false,
                    (&format!("{tgt_name} true cell type"), "transferred context label"),
                ),
            )?;
        }
    }

    // The analyses' own figures, when they were run.
    let dpath = dir.join("dge/summary.tsv");
    if let Some((dh, drows)) = table(&dpath)? {
        for (k, ty) in column(&dpath, &dh, &drows, "cell_type")?.iter().enumerate() {
            let stem = file_stem(ty);
            let gpath = dir.join("dge").join(format!("{stem}.tsv"));
            let Some((gh, grows)) = table(&gpath)? else { continue };
            let x: Vec<f64> = column(&gpath, &gh, &grows, "data_lfc")?.iter().map(|v| v.parse().unwrap_or(f64::NAN)).collect();
            let y: Vec<f64> = column(&gpath, &gh, &grows, "lfc")?.iter().map(|v| v.parse().unwrap_or(f64::NAN)).collect();
            let group: Vec<usize> = column(&gpath, &gh, &grows, "de")?.iter().map(|v| usize::from(*v == "true")).collect();
            let r = column(&dpath, &dh, &drows, "pearson_data_lfc")?[k];
            let title = format!("{ty}: model LFC vs data LFC (r = {r})");
            let f = Scatter {
                title: &title,
                x_label: &format!("data-level log2 fold change ({tgt_name} - {ctx_name})"),
                y_label: "model log2 fold change (median)",
                x: &x,
                y: &y,
                group: &group,
                group_names: &["not DE".to_string(), "DE".to_string()],
                labels: &[],
                point_size: 1.3,
                axes: true,
                palette: Some(&[Rgb::GREY, Rgb::RED]),
            }
            .figure();
            add(
                "analyses",
                &format!("lfc_{stem}"),
                format!("Homologous genes of {ty}: the model's LFC against the data's (scspecies dge)."),
                f,
            )?;
        }
    }

    let sim = dir.join("similarity/similarity.svg");
    if sim.is_file() {
        let svg = std::fs::read_to_string(&sim).map_err(|e| Error::io(&sim, e))?;
        let caption = "Cell-type similarity (scspecies similarity): for each target type, how well each context type explains its cells; 1 and 2 mark the best matches.";
        let at = figs.iter().position(|(s, _)| s == "analyses").unwrap_or(figs.len());
        figs.insert(at, ("analyses".into(), Fig { caption: caption.into(), svg }));
    }
    let html = page(dir, &m, &ctx_name, &tgt_name, &figs)?;
    let out = dir.join("report.html");
    super::write_bytes_atomic(&out, html.as_bytes())?;
    Ok(out)
}

fn kv_table(rows: &[(&str, String)]) -> String {
    let mut s = String::from("<table class=\"kv\">");
    for (k, v) in rows {
        let _ = write!(s, "<tr><th>{}</th><td>{}</td></tr>", esc(k), v);
    }
    s.push_str("</table>");
    s
}

fn grid_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = String::from("<table><tr>");
    for h in header {
        let _ = write!(s, "<th>{}</th>", esc(h));
    }
    s.push_str("</tr>");
    for r in rows {
        s.push_str("<tr>");
        for c in r {
            let _ = write!(s, "<td>{c}</td>");
        }
        s.push_str("</tr>");
    }
    s.push_str("</table>");
    s
}

fn page(dir: &Path, m: &Value, ctx: &str, tgt: &str, figs: &[(String, Fig)]) -> Result<String> {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>scSpecies report: {} to {}</title><style>{}</style></head><body>",
        esc(ctx),
        esc(tgt),
        STYLE
    );
    let _ = write!(
        h,
        "<h1>scSpecies: {} (context) to {} (target)</h1><p class=\"sub\">scspecies {} &middot; {} &middot; {}</p>",
        esc(ctx),
        esc(tgt),
        num(&m["scspecies_version"]),
        esc(&dir.display().to_string()),
        num(&m["backend"])
    );
    let section = |h: &mut String, name: &str| {
        for (_, f) in figs.iter().filter(|(s, _)| s == name) {
            let _ = write!(h, "<figure>{}<figcaption>{}</figcaption></figure>", f.svg, esc(&f.caption));
        }
    };

    // Inputs and settings.
    let i = &m["inputs"];
    let a = &m["align"]["config"];
    h.push_str("<h2>Inputs and settings</h2>");
    h.push_str(&kv_table(&[
        (
            "context",
            format!(
                "{} ({}; labels '{}', batches '{}')",
                num(&i["context"]),
                esc(ctx),
                num(&i["context_label_key"]),
                num(&i["context_batch_key"])
            ),
        ),
        (
            "target",
            format!(
                "{} ({}; batches '{}', labels '{}')",
                num(&i["target"]),
                esc(tgt),
                num(&i["target_batch_key"]),
                num(&i["target_label_key"])
            ),
        ),
        ("homology", format!("{} (fill: {})", num(&i["homology"]), num(&i["homology_fill"]))),
        ("seed", num(&m["seed"])),
        ("device / backend", format!("{} / {}", num(&m["device"]), num(&m["backend"]))),
        (
            "GEMM precision (ranking / training)",
            format!("{} / {}", num(&m["precision"]["ranking_gemms"]), num(&m["precision"]["training_gemms"])),
        ),
        ("epochs (context / target)", format!("{} / {}", num(&m["pretrain"]["epochs"]), num(&m["align"]["epochs"]))),
        (
            "alignment",
            format!(
                "{} space, top {} % aligned, k = {}, candidates: {}, kNN space: {}, {} member(s)",
                num(&a["space"]),
                num(&a["top_percent"]),
                num(&a["k"]),
                num(&a["candidates"]),
                num(&a["knn_space"]),
                num(&a["members"])
            ),
        ),
    ]));

    // Preprocessing and homology.
    h.push_str("<h2>Preprocessing and homology</h2>");
    let mut rows = Vec::new();
    for name in [ctx, tgt] {
        let p = &m["preprocessing"][name];
        let rare: Vec<String> = p["rare_cell_types_removed"]
            .as_array()
            .map(|v| v.iter().map(|t| format!("{} ({})", num(&t[0]), num(&t[1]))).collect())
            .unwrap_or_default();
        rows.push(vec![
            esc(name),
            format!("{} x {}", num(&p["cells_in"]), num(&p["genes_in"])),
            num(&p["zero_count_cells_removed"]),
            num(&p["cells_in_small_batches"]),
            num(&p["cells_below_min_genes"]),
            format!("{}{}", num(&p["cells_in_rare_types"]), if rare.is_empty() { String::new() } else { format!(": {}", rare.join(", ")) }),
            format!("{} x {}", num(&p["cells_out"]), num(&p["genes_out"])),
        ]);
    }
    h.push_str(&grid_table(
        &[
            "species",
            "cells x genes in",
            "zero-count cells",
            "cells in small batches",
            "cells below min genes",
            "cells of rare types",
            "cells x genes kept",
        ],
        &rows,
    ));
    let hm = &m["homology"];
    let _ = write!(
        h,
        "<p>Homologous genes: <b>{}</b> ({}); {} context genes, {} target genes{}.</p>",
        num(&hm["homologous_genes"]),
        num(&hm["method"]),
        num(&hm["context_genes"]),
        num(&hm["target_genes"]),
        if hm["symbol_matched_gaps"].as_u64().unwrap_or(0) > 0 {
            format!("; {} pairs matched by symbol where the table lists neither gene", num(&hm["symbol_matched_gaps"]))
        } else {
            String::new()
        }
    );

    h.push_str("<h2>Training</h2>");
    section(&mut h, "training");

    // Accuracy.
    let e = &m["evaluation"];
    if e.is_object() {
        h.push_str("<h2>Accuracy against the target's labels</h2>");
        let _ = write!(
            h,
            "<p>Balanced accuracy on target cells of types the context has: latent transfer <b>{}</b>, data-level kNN {}.</p>",
            num(&e["balanced_accuracy"]["latent_transfer"]),
            num(&e["balanced_accuracy"]["data_level_knn"])
        );
        let rows: Vec<Vec<String>> = e["recall_per_type"]
            .as_array()
            .map(|v| {
                v.iter().map(|r| vec![num(&r["type"]), num(&r["cells"]), num(&r["latent_transfer"]), num(&r["data_level_knn"])]).collect()
            })
            .unwrap_or_default();
        h.push_str(&grid_table(&["cell type", "cells", "recall: latent transfer", "recall: data-level kNN"], &rows));
        let rows: Vec<Vec<String>> = e["calibration"]
            .as_array()
            .map(|v| {
                v.iter()
                    .map(|b| {
                        let share = |a: &Value, n: &Value| match (a.as_f64(), n.as_f64()) {
                            (Some(a), Some(n)) if n > 0.0 => format!("{:.3}", a / n),
                            _ => "–".into(),
                        };
                        vec![
                            format!("{:.1}-{:.1}", b["low"].as_f64().unwrap_or(f64::NAN), b["high"].as_f64().unwrap_or(f64::NAN)),
                            num(&b["shared_cells"]),
                            share(&b["shared_correct"], &b["shared_cells"]),
                            num(&b["novel_cells"]),
                            share(&b["novel_unassigned"], &b["novel_cells"]),
                        ]
                    })
                    .collect()
            })
            .unwrap_or_default();
        h.push_str("<h3>Confidence calibration</h3>");
        h.push_str(&grid_table(
            &["confidence", "cells of shared types", "correct", "cells of types the context lacks", "flagged unassigned"],
            &rows,
        ));
    }
    h.push_str("<h2>Transferred labels</h2>");
    section(&mut h, "labels");
    if e.is_object() {
        let u = &e["unassigned"];
        let _ = write!(
            h,
            "<p>Unassigned rate: {} of {} cells of shared types ({}), {} of {} cells of types the context lacks ({}).</p>",
            num(&u["shared_types"]["unassigned"]),
            num(&u["shared_types"]["cells"]),
            num(&u["shared_types"]["rate"]),
            num(&u["types_absent_from_context"]["unassigned"]),
            num(&u["types_absent_from_context"]["cells"]),
            num(&u["types_absent_from_context"]["rate"])
        );
    } else if m["align"].is_object() {
        let _ = write!(
            h,
            "<p>{} target cells flagged unassigned. No target labels were given, so there is no accuracy.</p>",
            num(&m["align"]["unassigned_cells"])
        );
    }
    h.push_str("<h2>Joint latent space</h2>");
    section(&mut h, "umap");
    if figs.iter().any(|(s, _)| s == "analyses") {
        h.push_str("<h2>Analyses</h2>");
        section(&mut h, "analyses");
    }
    let ev = dir.join("evaluate/metrics.tsv");
    if let Some((eh, erows)) = table(&ev)? {
        h.push_str("<h3>Integration metrics (scspecies evaluate)</h3>");
        let hdr: Vec<&str> = eh.iter().map(|s| s.as_str()).collect();
        h.push_str(&grid_table(&hdr, &erows.iter().map(|r| r.iter().map(|c| esc(c)).collect()).collect::<Vec<_>>()));
    }

    // Timings and memory.
    h.push_str("<h2>Timings and memory</h2>");
    let mut rows: Vec<(&str, String)> = Vec::new();
    if let Some(t) = m["timings_s"].as_object() {
        for (k, v) in t {
            rows.push((k.as_str(), format!("{} s", v.as_f64().map(|x| format!("{x:.1}")).unwrap_or_default())));
        }
    }
    let gib = |v: &Value| v.as_f64().map(|b| format!("{:.2} GiB", b / 1024f64.powi(3))).unwrap_or_else(|| "–".into());
    rows.push(("peak memory (resident)", gib(&m["memory"]["peak_rss_bytes"])));
    rows.push(("estimated peak memory", gib(&m["memory"]["estimate_bytes"]["total"])));
    h.push_str(&kv_table(&rows));
    h.push_str("<p class=\"sub\">Figures as SVG and PNG: <code>figures/</code> beside this file.</p></body></html>\n");
    Ok(h)
}

const STYLE: &str = "body{font-family:'DejaVu Sans',Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}\
h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}.sub{color:#666}\
table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;font-size:.9em}\
table.kv th{background:#f6f6f6;width:16em}figure{display:inline-block;margin:.6em 1em .6em 0;vertical-align:top}\
figure svg{max-width:100%;height:auto}figcaption{font-size:.85em;color:#555;max-width:560px}";
