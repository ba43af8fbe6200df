//! scspecies: cross-species alignment of single-cell RNA-seq data.
//!
//! The pipeline, one module per stage: [`data`] in, [`preprocess`], [`homology`], the numerical
//! [`engine`], the [`model`], [`train`]ing, [`knn`] searches, [`align`]ment and [`transfer`] of labels,
//! [`analysis`], and [`out`] for the files we write. [`pipeline`] strings them together; `cli` is the
//! command line and the Python module (`python/`) another shell over [`pipeline::run`].
//!
//! The whole run on a small simulated pair, through to `results.h5ad`:
//!
//! ```
//! use scspecies::engine::Cpu;
//! use scspecies::pipeline::{self, RunConfig, Silent, Stages};
//! use scspecies::simulate::{SimConfig, simulate};
//!
//! # fn main() -> scspecies::Result<()> {
//! let dir = std::env::temp_dir().join(format!("scspecies-doc-{}", std::process::id()));
//! // Two species with 3 shared cell types (and one of their own each), 300 genes.
//! let sim = SimConfig { context_cells: 300, target_cells: 260, genes: 300, shared_types: 3, density: 0.2, ..Default::default() };
//! simulate(&sim, &dir.join("data"))?;
//! let inputs = scspecies::simulate::inputs(&dir.join("data"));
//!
//! let cfg = RunConfig { epochs_context: Some(30), epochs_target: Some(30), ..Default::default() };
//! let be = Cpu::<f32>::new();
//! let mut run = pipeline::run(&be, &inputs, &cfg, &Stages::All, &Silent)?;
//!
//! let target = run.target.as_ref().expect("the run aligned the target");
//! let names = &target.meta().labels;
//! println!("first target cell: {}", names[target.transfer.pred[0] as usize]);
//! let accuracy = run.evaluation.as_ref().expect("the simulated target has labels").balanced_accuracy.latent_transfer;
//! assert!(accuracy > 0.6, "balanced accuracy {accuracy}");
//!
//! scspecies::out::write_run(&be, &mut run, &dir.join("run"), &Default::default())?;
//! assert!(dir.join("run/results.h5ad").is_file() && dir.join("run/metrics.json").is_file());
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(())
//! # }
//! ```

pub mod align;
pub mod analysis;
pub mod bench;
#[cfg(feature = "cli")]
pub mod cli;
pub mod data;
pub mod engine;
pub mod error;
pub mod homology;
pub mod interrupt;
/// The CUDA sources and their parsed signatures (public for the kernel tests, not an API).
#[doc(hidden)]
pub mod kernels;
pub mod knn;
pub mod method;
pub mod model;
pub mod out;
pub mod pipeline;
pub mod preprocess;
pub mod resources;
pub mod simulate;
pub mod summary;
pub mod train;
pub mod transfer;

pub use error::{Error, Result};

/// The README's Rust example is compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
