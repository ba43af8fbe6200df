//! CUDA C sources embedded at build time from `kernels/*.cu` (see `build.rs`).

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
