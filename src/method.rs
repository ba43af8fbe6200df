//! The method's fixed numbers, in one place (sections of `scspecies-spec.md` in parentheses). Numbers a
//! user can change are options, whose defaults live with their configs (`AlignConfig`, `TrainConfig`,
//! `TransferConfig`); the last two here size work batches and change memory, not results.

/// Data-level neighbours stored per target cell: the candidate sets and the kNN label come from them (§4.1).
pub const KNN_STORED: usize = 250;
/// Of those, the nearest whose context labels vote for a target cell's data-level label (§4.2).
pub const KNN_LABEL_VOTERS: usize = 25;
/// Width of the intermediate space: the outer encoder's output, where the alignment acts (§2.2).
pub const INTER_DIM: usize = 300;
/// Hidden width of the inner encoder, the library encoder and the decoder's first layer (§2.2).
pub const HIDDEN_DIM: usize = 200;
/// Dimension of the latent space (§2.2).
pub const LATENT_DIM: usize = 10;
/// Cells per batch when the eval-mode representations (z, intermediate, library) are computed.
pub const REPRESENT_BATCH: usize = 1024;
/// (cell, candidate) rows decoded at once in the candidate choice.
pub const CANDIDATE_CHUNK: usize = 512;
/// The reference's default random seed.
pub const DEFAULT_SEED: u64 = 369963;
