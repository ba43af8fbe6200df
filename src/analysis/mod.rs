//! Analysis: what comes after alignment. Integration [`metrics`] on the joint latent space (with the
//! neighbour [`graph`]s and clustering they need), a 2-D [`umap`] layout for plots.

pub mod dge;
pub mod folder;
pub mod graph;
pub mod lrp;
pub mod metrics;
pub mod similarity;
pub mod umap;
