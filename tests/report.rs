//! `report.html` of a small simulated run: written by `run` (and by `report --run`), self-contained,
//! and loaded in a real headless Chromium without errors, every figure drawn with a non-zero size.

use std::path::{Path, PathBuf};
use std::process::Command;

fn scspecies(args: &[&str]) -> (i32, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_scspecies")).args(args).output().unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stderr).to_string())
}

/// A finished run of a simulated pair (3 shared types; target labels given), with its report.
fn run(dir: &Path) -> PathBuf {
    let (sim, out) = (dir.join("sim"), dir.join("run"));
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (code, err) = scspecies(&[
        "simulate",
        "--out",
        &s(&sim),
        "--context-cells",
        "300",
        "--target-cells",
        "260",
        "--genes",
        "300",
        "--shared-types",
        "3",
    ]);
    assert_eq!(code, 0, "{err}");
    #[rustfmt::skip]
    let args = ["run", "--context", &s(&sim.join("context")), "--target", &s(&sim.join("target")), "--homology", &s(&sim.join("homology.tsv")),
        "--context-batch-key", "batch", "--context-label-key", "cell_type", "--target-batch-key", "batch", "--target-label-key", "cell_type",
        "--epochs-context", "3", "--epochs-target", "3", "--quiet", "--out", &s(&out)];
    let (code, err) = scspecies(&args);
    assert_eq!(code, 0, "{err}");
    assert!(err.is_empty(), "--quiet prints nothing but errors: {err}");
    out
}

/// Chromium, or None with a loud message (in CI, where `.ci/run` installs it, a failure).
fn chromium() -> Option<PathBuf> {
    let found = std::env::var_os("SCSPECIES_CHROMIUM").map(PathBuf::from).or_else(|| {
        ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"].iter().map(PathBuf::from).find(|p| p.is_file())
    });
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("no Chromium (set SCSPECIES_CHROMIUM): CI must run the report in a browser");
        }
        eprintln!("SKIPPED report_loads_in_a_browser: no Chromium found (install Debian's chromium or set SCSPECIES_CHROMIUM)");
    }
    found
}

/// Load `html` with a checking script in front: the page's errors (script errors, resources that
/// fail to load, console.error) and the size of each figure's drawing, as JSON.
fn load_in_browser(browser: &Path, html: &Path, dir: &Path) -> serde_json::Value {
    const CHECK: &str = r#"<script>
window.__errors=[];
window.addEventListener('error',function(e){__errors.push(String(e.message||(e.target&&(e.target.src||e.target.href))||'error'));},true);
window.addEventListener('unhandledrejection',function(e){__errors.push('unhandled rejection: '+e.reason);});
(function(){var oe=console.error;console.error=function(){__errors.push(Array.prototype.join.call(arguments,' '));oe.apply(console,arguments);};})();
window.addEventListener('load',function(){
 var figs=Array.prototype.map.call(document.querySelectorAll('figure'),function(f){var el=f.querySelector('svg,img');var r=el?el.getBoundingClientRect():{width:0,height:0};
  var ok=el&&(el.tagName.toLowerCase()!=='img'||(el.complete&&el.naturalWidth>0));return {width:r.width,height:r.height,ok:!!ok};});
 var pre=document.createElement('pre');pre.id='scspecies-check';pre.textContent=JSON.stringify({errors:__errors,figures:figs});document.body.appendChild(pre);
});
</script>"#;
    let page = std::fs::read_to_string(html).unwrap();
    assert!(page.contains("<head>"));
    let checked = dir.join("checked.html");
    std::fs::write(&checked, page.replacen("<head>", &format!("<head>{CHECK}"), 1)).unwrap();
    let profile = tempfile::tempdir().unwrap();
    let o = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", profile.path().display()),
            "--virtual-time-budget=5000",
            "--dump-dom",
            &format!("file://{}", checked.display()),
        ])
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&o.stdout);
    let start = dom
        .find("<pre id=\"scspecies-check\">")
        .unwrap_or_else(|| panic!("the page did not finish loading in Chromium; stderr: {}", String::from_utf8_lossy(&o.stderr)))
        + "<pre id=\"scspecies-check\">".len();
    let end = start + dom[start..].find("</pre>").unwrap();
    let json = dom[start..end].replace("&quot;", "\"").replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">");
    serde_json::from_str(&json).unwrap()
}

#[test]
fn run_writes_a_self_contained_report_with_the_figures() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(tmp.path());
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    // Self-contained: no resource is fetched (the only URL is the SVG namespace).
    for bad in ["src=\"http", "href=\"http", "<link", "@import", "url(http"] {
        assert!(!html.contains(bad), "report.html refers to an outside resource ({bad})");
    }
    for section in [
        "Inputs and settings",
        "Preprocessing and homology",
        "Training",
        "Accuracy against the target",
        "Transferred labels",
        "Joint latent space",
        "Timings and memory",
    ] {
        assert!(html.contains(section), "no section '{section}'");
    }
    let figures = [
        "training_context",
        "training_target",
        "umap_species",
        "umap_cell_type",
        "umap_true_label",
        "umap_confidence",
        "umap_unassigned",
        "assigned_labels",
        "confusion",
    ];
    assert_eq!(html.matches("<figure>").count(), figures.len());
    for f in figures {
        let png = out.join("figures").join(format!("{f}.png"));
        assert!(scspecies::out::plot::is_png(&png).unwrap(), "{f}.png");
        assert!(out.join("figures").join(format!("{f}.svg")).is_file(), "{f}.svg");
    }
    // `report --run` writes the same page again from the folder alone.
    std::fs::remove_file(out.join("report.html")).unwrap();
    let (code, err) = scspecies(&["report", "--run", out.to_str().unwrap(), "--quiet"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read_to_string(out.join("report.html")).unwrap().matches("<figure>").count(), figures.len());
    // A folder without a run is a clear error.
    let (code, err) = scspecies(&["report", "--run", tmp.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("metrics.json") && !err.contains("panicked"), "{err}");
}

#[test]
fn report_loads_in_a_browser() {
    let Some(browser) = chromium() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = run(tmp.path());
    let r = load_in_browser(&browser, &out.join("report.html"), tmp.path());
    assert_eq!(r["errors"], serde_json::json!([]), "errors while loading the report");
    let figs = r["figures"].as_array().unwrap();
    assert_eq!(figs.len(), 9);
    for f in figs {
        assert!(f["ok"].as_bool().unwrap() && f["width"].as_f64().unwrap() > 50.0 && f["height"].as_f64().unwrap() > 50.0, "{f}");
    }
    // The check itself can fail: a figure whose image is missing is reported.
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let broken = tmp.path().join("broken.html");
    std::fs::write(&broken, html.replacen("<figure>", "<figure><img src=\"figures/missing.png\">", 1)).unwrap();
    let r = load_in_browser(&browser, &broken, tmp.path());
    assert!(!r["errors"].as_array().unwrap().is_empty() && !r["figures"][0]["ok"].as_bool().unwrap(), "{r}");
}
