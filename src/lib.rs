//! scspecies: cross-species alignment of single-cell RNA-seq data.
//!
//! The pipeline, one module per stage: [`data`] in, [`preprocess`], [`homology`], then (later)
//! model, training, alignment and analysis, and [`out`] for the files we write.

pub mod data;
pub mod error;
pub mod homology;
pub mod out;
pub mod preprocess;

pub use error::{Error, Result};
