//! The numerical engine: hand-derived forward and backward passes, no autodiff.
//!
//! [`backend::Backend`] is the interface the model is written against; [`cpu::Cpu`] implements it with
//! the kernels in [`ops`], generic over the float type ([`Real`]: f32 for work, f64 for
//! finite-difference checks); `cuda::Cuda` (feature `cuda`) implements it on a GPU or on the emulated
//! device that runs the same kernels on the CPU. `likelihood` holds the per-count ZINB/NB terms,
//! `special` lgamma/digamma.
pub mod backend;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
/// Without the `cuda` feature: the same name, a backend that cannot be constructed.
#[cfg(not(feature = "cuda"))]
#[path = "cuda_absent.rs"]
pub mod cuda;
/// Fast f32 exp/ln used by the scoring kernels (public for their accuracy tests, not an API).
#[doc(hidden)]
pub mod fastmath;
#[cfg(target_arch = "x86_64")]
pub(crate) mod gemm512;
#[cfg(target_arch = "x86_64")]
pub mod gemm_amx;
#[cfg(target_arch = "x86_64")]
pub mod gemm_bf16;
pub mod likelihood;
pub mod ops;
pub mod precision;
pub mod real;
pub mod simd;
pub(crate) mod special;

pub use backend::Backend;
pub use cpu::Cpu;
pub use real::Real;
