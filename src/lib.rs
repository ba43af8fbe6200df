//! scspecies: cross-species alignment of single-cell RNA-seq data.
//!
//! The pipeline, one module per stage: [`data`] in, [`preprocess`], [`homology`], then (later)
//! model, training, alignment and analysis, and [`out`] for the files we write.

#[cfg(feature = "cli")]
pub mod cli;
pub mod data;
pub mod engine;
pub mod error;
pub mod homology;
pub mod kernels;
pub mod model;
pub mod out;
pub mod pipeline;
pub mod preprocess;
pub mod summary;
pub mod train;

pub use error::{Error, Result};

/// The README's Rust example is compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
