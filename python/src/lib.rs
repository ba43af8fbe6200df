//! `scspecies_rs._native`: the Python module's shell over [`scspecies::pipeline`]. The Python side
//! (`python/scspecies_rs/__init__.py`) turns AnnData objects into CSR parts and label columns and
//! back; this side runs the pipeline with the GIL released, reports progress to a Python callback,
//! and maps errors to Python exceptions carrying the CLI's messages.

use clap::Parser;
use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use scspecies::cli::{Device, RunOptions};
use scspecies::data::Dataset;
use scspecies::engine::Cpu;
use scspecies::error::Error;
use scspecies::homology::OrthologTable;
use scspecies::pipeline::{self, Inputs, Observer, Stages};
use std::path::PathBuf;
use std::sync::Mutex;

type Be = Cpu<f32>;

/// A library error as the Python exception a user expects, with the message the CLI prints.
fn py_err(e: Error) -> PyErr {
    match e {
        Error::Interrupted => PyKeyboardInterrupt::new_err("interrupted; nothing was written"),
        Error::Device(m) => PyRuntimeError::new_err(m),
        Error::Write { .. } => PyOSError::new_err(e.to_string()),
        _ => PyValueError::new_err(e.to_string()),
    }
}

/// The run options, parsed by the CLI's own parser from `--flag value` words built from keyword
/// arguments: the same defaults, checks and messages as the command line.
#[derive(Parser)]
#[command(name = "scspecies_rs.align", no_binary_name = true)]
struct Options {
    #[command(flatten)]
    opts: RunOptions,
}

/// Progress and log lines to a Python callable `(kind, text, count, value)`; between events it
/// checks for Ctrl-C and asks the pipeline to stop.
struct PyObserver {
    callback: Option<Py<PyAny>>,
    /// The first exception raised by the callback or by a signal handler.
    error: Mutex<Option<PyErr>>,
}

impl PyObserver {
    fn send(&self, kind: &str, text: &str, count: u64, value: f64) {
        Python::attach(|py| {
            let mut failed = None;
            if let Some(cb) = &self.callback
                && let Err(e) = cb.call1(py, (kind, text, count, value))
            {
                failed = Some(e);
            }
            if failed.is_none()
                && let Err(e) = py.check_signals()
            {
                failed = Some(e);
            }
            if let Some(e) = failed {
                let mut slot = self.error.lock().unwrap();
                if slot.is_none() {
                    *slot = Some(e);
                }
                scspecies::interrupt::request();
            }
        });
    }
}

impl Observer for PyObserver {
    fn log(&self, line: &str) {
        self.send("log", line, 0, 0.0);
    }
    fn warn(&self, line: &str) {
        self.send("warning", line, 0, 0.0);
    }
    fn phase(&self, name: &str, steps: u64) {
        self.send("phase", name, steps, 0.0);
    }
    fn step(&self, p: &scspecies::train::Progress) {
        self.send("step", &format!("epoch {}/{}", p.epoch + 1, p.epochs), 1, p.running[0]);
    }
    fn phase_done(&self) {
        self.send("done", "", 0, 0.0);
    }
}

/// One dataset from Python: (source name, genes, indptr int64 bytes, indices int32 bytes, data float64
/// bytes, cell names, gene names, [(obs key, values as strings)]).
type PyDataset<'py> =
    (String, usize, Bound<'py, PyBytes>, Bound<'py, PyBytes>, Bound<'py, PyBytes>, Vec<String>, Vec<String>, Vec<(String, Vec<String>)>);

fn dataset(d: PyDataset<'_>) -> Result<Dataset, Error> {
    let (source, n_genes, indptr, indices, data, cells, genes, obs) = d;
    let indptr: Vec<i64> = bytemuck::pod_collect_to_vec(indptr.as_bytes());
    let indptr = indptr
        .into_iter()
        .map(|x| usize::try_from(x).map_err(|_| Error::format(&source, format!("counts: indptr holds a negative offset ({x})"))))
        .collect::<Result<Vec<usize>, Error>>()?;
    let indices: Vec<i32> = bytemuck::pod_collect_to_vec(indices.as_bytes());
    let indices = indices
        .into_iter()
        .map(|x| u32::try_from(x).map_err(|_| Error::format(&source, format!("counts: a negative column index ({x})"))))
        .collect::<Result<Vec<u32>, Error>>()?;
    let data: Vec<f64> = bytemuck::pod_collect_to_vec(data.as_bytes());
    Dataset::from_memory(&source, n_genes, indptr, indices, data, cells, genes, obs)
}

/// Align `target` to `context` and transfer labels. `inputs_json` holds the keys and names
/// ([`Inputs`]), `args` the option words, `homology` the ortholog pairs (None: symbols), `models` a
/// folder whose saved models are used instead of training.
#[pyfunction]
#[pyo3(signature = (context, target, inputs_json, args, homology, models, progress))]
#[allow(clippy::too_many_arguments)]
fn align(
    py: Python<'_>,
    context: PyDataset<'_>,
    target: PyDataset<'_>,
    inputs_json: &str,
    args: Vec<String>,
    homology: Option<(String, Vec<(String, String)>)>,
    models: Option<PathBuf>,
    progress: Option<Py<PyAny>>,
) -> PyResult<NativeRun> {
    let o = Options::try_parse_from(&args)
        .map_err(|e| PyValueError::new_err(e.to_string().trim_end().replace("\n\nFor more information, try '--help'.", "")))?
        .opts;
    if o.device != Device::Cpu || o.tf32 {
        return Err(PyValueError::new_err("device: the Python package runs on the CPU; use the scspecies binary for --device cuda"));
    }
    if o.resume.is_some() || o.keep_checkpoints || o.write_h5ad || o.no_report {
        return Err(PyValueError::new_err(
            "resume, keep_checkpoints, write_h5ad and no_report belong to the command line; Result.save(dir) writes the run folder and its report",
        ));
    }
    let mut inputs: Inputs = serde_json::from_str(inputs_json).map_err(|e| PyValueError::new_err(format!("inputs: {e}")))?;
    inputs.homology_fill = o.homology_fill;
    let table = homology.map(|(source, pairs)| OrthologTable { path: PathBuf::from(source), pairs });
    let (ctx, tgt) = (dataset(context).map_err(py_err)?, dataset(target).map_err(py_err)?);
    let mut cfg = o.run_config(std::path::Path::new("."));
    cfg.checkpoints = None;
    let stages = match models {
        Some(dir) => Stages::Transfer { models: dir },
        None => Stages::All,
    };
    let threads = o.threads;
    if threads == Some(0) {
        return Err(PyValueError::new_err("invalid option: --threads must be at least 1"));
    }
    scspecies::engine::precision::set_ranking(o.precision.to_engine()).map_err(|m| py_err(Error::Config(m)))?;
    let obs = PyObserver { callback: progress, error: Mutex::new(None) };
    scspecies::interrupt::clear();
    let result = py.detach(|| {
        let be = Be::new();
        let work = || pipeline::run_datasets(&be, &ctx, &tgt, table.as_ref(), &inputs, &cfg, &stages, &obs);
        let run = match threads {
            Some(t) => rayon::ThreadPoolBuilder::new().num_threads(t).build().map_err(|e| Error::Config(e.to_string()))?.install(work),
            None => work(),
        };
        run.map(|r| (be, r))
    });
    scspecies::interrupt::clear();
    if let Some(e) = obs.error.lock().unwrap().take() {
        return Err(e);
    }
    let (be, run) = result.map_err(py_err)?;
    Ok(NativeRun { be, run })
}

/// A finished run, held in Rust; the Python `Result` reads its columns.
#[pyclass(module = "scspecies_rs._native")]
struct NativeRun {
    be: Be,
    run: pipeline::Run<Be>,
}

#[pymethods]
impl NativeRun {
    /// `metrics.json` as a string.
    fn metrics_json(&self) -> PyResult<String> {
        serde_json::to_string(&self.run.metrics).map_err(|e| PyRuntimeError::new_err(e.to_string()))
    }

    /// Per kept cell of `which` (`context` or `target`): its input row, latent mean (float32 bytes,
    /// row-major) and columns; and per input cell why preprocessing removed it (None: kept).
    fn cells<'py>(&self, py: Python<'py>, which: &str) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        use pyo3::types::PyDict;
        let r = &self.run;
        let d = PyDict::new(py);
        let (p, repr) = match which {
            "context" => (&r.pair.context, &r.context.repr),
            "target" => match &r.target {
                Some(t) => (&r.pair.target, t.repr()),
                None => return Err(PyValueError::new_err("this run has no target")),
            },
            _ => return Err(PyValueError::new_err(format!("cells: 'context' or 'target', not '{which}'"))),
        };
        d.set_item("input_rows", p.input_rows.iter().map(|&x| x as u64).collect::<Vec<_>>())?;
        d.set_item("removed", p.removed.clone())?;
        d.set_item("latent_dim", repr.latent)?;
        d.set_item("latent", PyBytes::new(py, bytemuck::cast_slice(&repr.z_mu)))?;
        d.set_item("batch", p.batch.iter().map(|&b| p.batch_names[b as usize].clone()).collect::<Vec<_>>())?;
        if let Some(l) = &p.labels {
            d.set_item("label", (0..p.n_cells()).map(|i| l.value(i).unwrap_or("").to_string()).collect::<Vec<_>>())?;
        }
        if which == "target"
            && let Some(t) = &r.target
        {
            let names = &t.meta().labels;
            let tr = &t.transfer;
            d.set_item("predicted_label", tr.pred.iter().map(|&k| names[k as usize].clone()).collect::<Vec<_>>())?;
            d.set_item("confidence", tr.confidence.clone())?;
            d.set_item("member_agreement", tr.member_agreement.clone())?;
            d.set_item("vote_share", tr.vote_share.clone())?;
            d.set_item("best_similarity", tr.best_similarity.clone())?;
            d.set_item("novelty", tr.novelty.clone())?;
            d.set_item("unassigned", tr.unassigned.clone())?;
            d.set_item("knn_label", t.knn.knn_label.iter().map(|&k| names[k as usize].clone()).collect::<Vec<_>>())?;
            d.set_item("aligned", t.knn.aligned.clone())?;
        }
        Ok(d)
    }

    /// Write the run folder (models, tables, `results.h5ad`, `metrics.json`) to `dir`.
    fn save(&mut self, py: Python<'_>, dir: PathBuf) -> PyResult<()> {
        let NativeRun { be, run } = self;
        py.detach(|| scspecies::out::write_run(be, run, &dir, &Default::default())).map_err(py_err)
    }
}

/// Run a `scspecies` command in this process (the analyses of a saved run folder), GIL released.
#[pyfunction]
fn command(py: Python<'_>, args: Vec<String>) -> PyResult<()> {
    let mut argv = vec!["scspecies".to_string()];
    argv.extend(args);
    let cli = scspecies::cli::Cli::try_parse_from(&argv).map_err(|e| PyValueError::new_err(e.to_string()))?;
    py.detach(|| scspecies::cli::run(cli)).map_err(py_err)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(align, m)?)?;
    m.add_function(wrap_pyfunction!(command, m)?)?;
    m.add_class::<NativeRun>()?;
    Ok(())
}
