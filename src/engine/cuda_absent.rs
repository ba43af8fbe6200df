//! Where the `cuda` feature is off: a `Cuda` type with no values. [`Cuda::new`] says why there is
//! no GPU, so callers pick their backend without `cfg`; the methods can never be called.

use super::backend::{Backend, HostRows, LikGradsMut};
use super::likelihood::Distribution;
use super::ops::AdamConfig;

/// The CUDA backend of a build without the `cuda` feature: it cannot be constructed.
pub enum Cuda {}

impl Cuda {
    /// Always an error naming the missing feature.
    pub fn new(_device: usize, _tf32: bool) -> Result<Cuda, String> {
        Err("this build has no CUDA support (built without the `cuda` feature)".into())
    }

    pub fn is_emulated(&self) -> bool {
        match *self {}
    }
}

impl Backend for Cuda {
    type Buf = Vec<f32>;
    type Sparse = ();

    fn name(&self) -> String {
        match *self {}
    }

    fn zeros(&self, _n: usize) -> Self::Buf {
        match *self {}
    }

    fn upload(&self, _v: &[f64]) -> Self::Buf {
        match *self {}
    }

    fn upload_f32(&self, _v: &[f32]) -> Self::Buf {
        match *self {}
    }

    fn download(&self, _b: &Self::Buf) -> Vec<f64> {
        match *self {}
    }

    fn download_f32(&self, _b: &Self::Buf) -> Option<Vec<f32>> {
        match *self {}
    }

    fn len(&self, _b: &Self::Buf) -> usize {
        match *self {}
    }

    fn copy(&self, _b: &Self::Buf) -> Self::Buf {
        match *self {}
    }

    fn upload_sparse(&self, _rows: usize, _cols: usize, _indptr: Vec<usize>, _indices: Vec<u32>, _values: Vec<f32>) -> Self::Sparse {
        match *self {}
    }

    #[allow(clippy::too_many_arguments)]
    fn linear_fwd(&self, _x: &Self::Buf, _w: &Self::Buf, _b: &Self::Buf, _y: &mut Self::Buf, _rows: usize, _k: usize, _n: usize) {
        match *self {}
    }

    #[allow(clippy::too_many_arguments)]
    fn linear_bwd(
        &self,
        _x: &Self::Buf,
        _w: &Self::Buf,
        _dy: &Self::Buf,
        _dx: Option<&mut Self::Buf>,
        _dw: &mut Self::Buf,
        _db: &mut Self::Buf,
        _rows: usize,
        _k: usize,
        _n: usize,
    ) {
        match *self {}
    }

    fn sparse_linear_fwd(&self, _x: &Self::Sparse, _w: &Self::Buf, _b: &Self::Buf, _y: &mut Self::Buf, _n: usize) {
        match *self {}
    }

    fn sparse_linear_bwd(&self, _x: &Self::Sparse, _dy: &Self::Buf, _dw: &mut Self::Buf, _db: &mut Self::Buf, _n: usize) {
        match *self {}
    }

    #[allow(clippy::too_many_arguments)]
    fn layernorm_fwd(
        &self,
        _x: &Self::Buf,
        _gamma: &Self::Buf,
        _beta: &Self::Buf,
        _y: &mut Self::Buf,
        _xhat: &mut Self::Buf,
        _rstd: &mut Self::Buf,
        _d: usize,
    ) {
        match *self {}
    }

    #[allow(clippy::too_many_arguments)]
    fn layernorm_bwd(
        &self,
        _dy: &Self::Buf,
        _xhat: &Self::Buf,
        _rstd: &Self::Buf,
        _gamma: &Self::Buf,
        _dx: &mut Self::Buf,
        _dgamma: &mut Self::Buf,
        _dbeta: &mut Self::Buf,
        _rows: usize,
        _d: usize,
    ) {
        match *self {}
    }

    fn relu_dropout_fwd(&self, _x: &Self::Buf, _mask: Option<&Self::Buf>, _relu_out: &mut Self::Buf, _y: &mut Self::Buf) {
        match *self {}
    }

    fn relu_dropout_bwd(&self, _dy: &Self::Buf, _relu_out: &Self::Buf, _mask: Option<&Self::Buf>, _dx: &mut Self::Buf) {
        match *self {}
    }

    fn split_softmax_fwd(&self, _r: &Self::Buf, _group: &[u8], _weight: [f64; 2], _rho: &mut Self::Buf, _n: usize) {
        match *self {}
    }

    fn split_softmax_bwd(&self, _rho: &Self::Buf, _group: &[u8], _weight: [f64; 2], _d: &mut Self::Buf, _n: usize) {
        match *self {}
    }

    fn gather_exp_rows(&self, _log_alpha: &Self::Buf, _batch: &[u32], _theta: &mut Self::Buf, _n: usize) {
        match *self {}
    }

    fn scatter_theta_grad(&self, _dtheta: &Self::Buf, _theta: &Self::Buf, _batch: &[u32], _dlog_alpha: &mut Self::Buf, _n: usize) {
        match *self {}
    }

    #[allow(clippy::too_many_arguments)]
    fn likelihood(
        &self,
        _dist: Distribution,
        _x: &Self::Buf,
        _rho: &Self::Buf,
        _theta: &Self::Buf,
        _logit: Option<&Self::Buf>,
        _lib: &Self::Buf,
        _n: usize,
        _scale: f64,
        _nll: &mut Self::Buf,
        _grads: Option<LikGradsMut<'_, Self>>,
    ) {
        match *self {}
    }

    #[allow(clippy::too_many_arguments)]
    fn likelihood_score(
        &self,
        _dist: Distribution,
        _x: &HostRows,
        _rows: &[u32],
        _batch: &[u32],
        _rho: &Self::Buf,
        _theta: &Self::Buf,
        _logit: Option<(&Self::Buf, &Self::Buf)>,
        _lib: &Self::Buf,
        _n: usize,
        _nll: &mut Self::Buf,
    ) {
        match *self {}
    }

    fn softplus(&self, _x: &Self::Buf) -> Self::Buf {
        match *self {}
    }

    fn reparam_fwd(&self, _mu: &Self::Buf, _ls: &Self::Buf, _eps: &Self::Buf, _z: &mut Self::Buf) {
        match *self {}
    }

    fn reparam_bwd(&self, _dz: &Self::Buf, _ls: &Self::Buf, _eps: &Self::Buf, _dmu: &mut Self::Buf, _dls: &mut Self::Buf) {
        match *self {}
    }

    fn kl_normal(
        &self,
        _mu: &Self::Buf,
        _ls: &Self::Buf,
        _l: usize,
        _kl: &mut Self::Buf,
        _grads: Option<(f64, &mut Self::Buf, &mut Self::Buf)>,
    ) {
        match *self {}
    }

    #[allow(clippy::too_many_arguments)]
    fn kl_library(
        &self,
        _m: &Self::Buf,
        _ls: &Self::Buf,
        _pm: &Self::Buf,
        _ps: &Self::Buf,
        _kl: &mut Self::Buf,
        _grads: Option<(f64, &mut Self::Buf, &mut Self::Buf)>,
    ) {
        match *self {}
    }

    fn exp_add(&self, _a: &Self::Buf, _c: f64, _y: &mut Self::Buf) {
        match *self {}
    }

    fn axpy(&self, _alpha: f64, _x: &Self::Buf, _y: &mut Self::Buf) {
        match *self {}
    }

    fn mul(&self, _x: &Self::Buf, _z: &Self::Buf, _y: &mut Self::Buf) {
        match *self {}
    }

    fn gather_rows(&self, _src: &Self::Buf, _rows: &[u32], _n: usize, _dst: &mut Self::Buf) {
        match *self {}
    }

    fn copy_cols(&self, _src: &Self::Buf, _cols: usize, _c0: usize, _w: usize, _dst: &mut Self::Buf) {
        match *self {}
    }

    fn set_cols(&self, _src: &Self::Buf, _cols: usize, _c0: usize, _w: usize, _dst: &mut Self::Buf) {
        match *self {}
    }

    fn adam(&self, _cfg: &AdamConfig, _t: u64, _p: &mut Self::Buf, _g: &Self::Buf, _m: &mut Self::Buf, _v: &mut Self::Buf) {
        match *self {}
    }

    fn all_finite(&self, _b: &Self::Buf) -> bool {
        match *self {}
    }
}
