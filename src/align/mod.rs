//! Alignment of the target to the context: the data-level kNN on homologous genes, the agreement
//! ranking that selects the cells to align, and the target fine-tuning with argmax-likelihood candidates.

pub mod agreement;
pub mod knn;
