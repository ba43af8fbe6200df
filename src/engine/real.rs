//! The float type of a CPU backend: f32 for work, f64 for gradient checks. Same code for both.

use num_traits::Float;

pub trait Real: Float + Send + Sync + Default + std::fmt::Debug + std::iter::Sum + 'static {
    /// C = alpha·A·B + beta·C with arbitrary strides (matrixmultiply).
    ///
    /// # Safety
    /// The pointers with their strides must address valid m×k, k×n and m×n matrices.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );
    /// True for f32: fast-math paths are used only there, so f64 runs (gradient checks) stay exact.
    const IS_F32: bool;
    /// The slice itself when it is f32 (mutable), else None.
    fn as_f32_mut(s: &mut [Self]) -> Option<&mut [f32]>;
    /// The slice as f32 (borrowed when it already is).
    fn as_f32(s: &[Self]) -> std::borrow::Cow<'_, [f32]>;
    fn f(v: f64) -> Self {
        Self::from(v).unwrap()
    }
    fn d(self) -> f64 {
        self.to_f64().unwrap()
    }
}

impl Real for f32 {
    const IS_F32: bool = true;
    fn as_f32_mut(s: &mut [f32]) -> Option<&mut [f32]> {
        Some(s)
    }
    fn as_f32(s: &[f32]) -> std::borrow::Cow<'_, [f32]> {
        std::borrow::Cow::Borrowed(s)
    }
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: f32,
        a: *const f32,
        rsa: isize,
        csa: isize,
        b: *const f32,
        rsb: isize,
        csb: isize,
        beta: f32,
        c: *mut f32,
        rsc: isize,
        csc: isize,
    ) {
        unsafe { matrixmultiply::sgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) }
    }
}

impl Real for f64 {
    const IS_F32: bool = false;
    fn as_f32_mut(_: &mut [f64]) -> Option<&mut [f32]> {
        None
    }
    fn as_f32(s: &[f64]) -> std::borrow::Cow<'_, [f32]> {
        std::borrow::Cow::Owned(s.iter().map(|&v| v as f32).collect())
    }
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: f64,
        a: *const f64,
        rsa: isize,
        csa: isize,
        b: *const f64,
        rsb: isize,
        csb: isize,
        beta: f64,
        c: *mut f64,
        rsc: isize,
        csc: isize,
    ) {
        unsafe { matrixmultiply::dgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) }
    }
}
