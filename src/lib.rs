//! scspecies: cross-species alignment of single-cell RNA-seq data.
//!
//! The pipeline, one module per stage: [`data`] in, [`preprocess`], [`homology`], the numerical
//! [`engine`], the [`model`], [`train`]ing, [`align`]ment and [`transfer`] of labels, and [`out`] for
//! the files we write. [`pipeline`] strings them together; `cli` is the command line.

pub mod align;
pub mod analysis;
#[cfg(feature = "cli")]
pub mod cli;
pub mod data;
pub mod engine;
pub mod error;
pub mod homology;
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
