//! CPU kernels, generic over the float type. Row-major everywhere; shapes in the comments use
//! B = rows (cells), K = input features, N = output features. Every forward sits beside its backward.
//! Parallel loops split work so that each output element is written by one thread in a fixed order:
//! results do not depend on the thread count's scheduling.

use super::Real;
use super::likelihood::{Distribution, nb, zinb};
use rayon::prelude::*;

/// Rows per parallel GEMM chunk: big enough to keep matrixmultiply's kernels busy.
const ROW_CHUNK: usize = 32;

/// C[m×n] = A[m×k]·B[k×n] (+ C if `acc`), A and B given with strides; parallel over row bands of C.
#[allow(clippy::too_many_arguments)]
pub fn gemm<F: Real>(
    m: usize,
    k: usize,
    n: usize,
    a: &[F],
    rsa: usize,
    csa: usize,
    b: &[F],
    rsb: usize,
    csb: usize,
    c: &mut [F],
    acc: bool,
) {
    assert!(c.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if F::IS_F32 && super::precision::gemm_in_bf16() && super::gemm_bf16::available() {
        use super::gemm512::View;
        let (a, b) = (
            View { ptr: a.as_ptr() as *const f32, rs: rsa as isize, cs: csa as isize },
            View { ptr: b.as_ptr() as *const f32, rs: rsb as isize, cs: csb as isize },
        );
        // SAFETY: as below; the bf16 kernel runs only where `available` says the CPU has it.
        unsafe { super::gemm_bf16::gemm(m, k, n, a, b, acc, c.as_mut_ptr() as *mut f32, n) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if F::IS_F32 && super::gemm512::available() {
        use super::gemm512::View;
        let (a, b) = (
            View { ptr: a.as_ptr() as *const f32, rs: rsa as isize, cs: csa as isize },
            View { ptr: b.as_ptr() as *const f32, rs: rsb as isize, cs: csb as isize },
        );
        // SAFETY: F is f32 (IS_F32); the views address the m×k and k×n operands the caller passed, and
        // C is a distinct m×n slice (checked above).
        unsafe { super::gemm512::gemm(m, k, n, a, b, acc, c.as_mut_ptr() as *mut f32, n) };
        return;
    }
    let beta = if acc { F::one() } else { F::zero() };
    let chunk = if m >= 2 * ROW_CHUNK { ROW_CHUNK.max(m.div_ceil(rayon::current_num_threads() * 2)) } else { m };
    c[..m * n].par_chunks_mut(chunk * n).enumerate().for_each(|(ci, cc)| {
        let r0 = ci * chunk;
        let rows = cc.len() / n;
        // SAFETY: every pointer stays inside its slice: rows r0..r0+rows of A, all of B, this band of C.
        unsafe {
            F::gemm(
                rows,
                k,
                n,
                F::one(),
                a.as_ptr().add(r0 * rsa),
                rsa as isize,
                csa as isize,
                b.as_ptr(),
                rsb as isize,
                csb as isize,
                beta,
                cc.as_mut_ptr(),
                n as isize,
                1,
            );
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Linear: y[B×N] = x[B×K]·w[K×N] + b[N]. (Weights are stored input-major, i.e. PyTorch's weight transposed.)

pub fn linear_fwd<F: Real>(x: &[F], w: &[F], b: &[F], y: &mut [F], bsz: usize, k: usize, n: usize) {
    gemm(bsz, k, n, x, k, 1, w, n, 1, y, false);
    y.par_chunks_mut(n).for_each(|row| row.iter_mut().zip(b).for_each(|(v, &bb)| *v = *v + bb));
}

/// dw[K×N] = xᵀ·dy, db[N] = Σ_rows dy, and (if wanted) dx[B×K] = dy·wᵀ.
#[allow(clippy::too_many_arguments)]
pub fn linear_bwd<F: Real>(x: &[F], w: &[F], dy: &[F], dx: Option<&mut [F]>, dw: &mut [F], db: &mut [F], bsz: usize, k: usize, n: usize) {
    gemm(k, bsz, n, x, 1, k, dy, n, 1, dw, false);
    col_sums(dy, db, bsz, n);
    if let Some(dx) = dx {
        gemm(bsz, n, k, dy, n, 1, w, 1, n, dx, false);
    }
}

/// out[N] = Σ over rows of a[B×N].
pub fn col_sums<F: Real>(a: &[F], out: &mut [F], rows: usize, n: usize) {
    // Bands of 256 columns, rows outer: contiguous reads that vectorise. Each column still sums its rows
    // in ascending order.
    out[..n].par_chunks_mut(256).enumerate().for_each(|(band, o)| {
        let j0 = band * 256;
        o.iter_mut().for_each(|v| *v = F::zero());
        let w = o.len();
        for r in 0..rows {
            for (v, &x) in o.iter_mut().zip(&a[r * n + j0..r * n + j0 + w]) {
                *v = *v + x;
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Sparse input layer: y[B×N] = X[B×K]·w[K×N] + b with X sparse (raw counts + batch one-hot).

/// A minibatch of sparse rows (CSR) and its transpose (CSC), the latter for the weight gradient.
#[derive(Debug, Clone)]
pub struct SparseBatch<F> {
    pub rows: usize,
    pub cols: usize,
    pub indptr: Vec<usize>,
    pub indices: Vec<u32>,
    pub values: Vec<F>,
    pub t_indptr: Vec<usize>,
    pub t_rows: Vec<u32>,
    pub t_values: Vec<F>,
}

impl<F: Real> SparseBatch<F> {
    pub fn new(rows: usize, cols: usize, indptr: Vec<usize>, indices: Vec<u32>, values: Vec<F>) -> Self {
        let mut t_indptr = vec![0usize; cols + 1];
        for &c in &indices {
            t_indptr[c as usize + 1] += 1;
        }
        for c in 0..cols {
            t_indptr[c + 1] += t_indptr[c];
        }
        let mut next = t_indptr.clone();
        let mut t_rows = vec![0u32; indices.len()];
        let mut t_values = vec![F::zero(); indices.len()];
        for r in 0..rows {
            for p in indptr[r]..indptr[r + 1] {
                let c = indices[p] as usize;
                t_rows[next[c]] = r as u32;
                t_values[next[c]] = values[p];
                next[c] += 1;
            }
        }
        SparseBatch { rows, cols, indptr, indices, values, t_indptr, t_rows, t_values }
    }
}

/// One row of y += v · W[k, :] over a row's non-zeros (f32, at the widest vector width). The row-by-row
/// reference for [`sparse_linear_fwd`]'s gene-by-gene path (same additions per element, same order).
#[inline(always)]
fn sparse_row_body(row: &mut [f32], idx: &[u32], val: &[f32], w: &[f32]) {
    let n = row.len();
    for (&k, &v) in idx.iter().zip(val) {
        let wr = &w[k as usize * n..][..n];
        for (o, &ww) in row.iter_mut().zip(wr) {
            *o += v * ww;
        }
    }
}
crate::multiversion!(fn sparse_row(row: &mut [f32], idx: &[u32], val: &[f32], w: &[f32]) => sparse_row_body);

/// Rows `y` [r×n] (bias already in place) += X·W over the rows' non-zeros, in blocks of `g` genes: a
/// block of W stays in cache while every row adds its non-zeros of that block, 64 columns at a time held
/// in registers. Each element adds its terms in ascending gene order, as the row-by-row loop does.
#[inline(always)]
fn sparse_rows_blocked_body(y: &mut [f32], indptr: &[usize], idx: &[u32], val: &[f32], w: &[f32], n: usize, g: usize) {
    const C: usize = 64;
    let rows = indptr.len() - 1;
    let mut cursor: Vec<usize> = indptr[..rows].to_vec();
    let k = w.len() / n.max(1);
    let full = n - n % C;
    for g0 in (0..k).step_by(g) {
        let g1 = g0 + g;
        for r in 0..rows {
            let p0 = cursor[r];
            let mut p1 = p0;
            while p1 < indptr[r + 1] && (idx[p1] as usize) < g1 {
                p1 += 1;
            }
            if p1 == p0 {
                continue;
            }
            cursor[r] = p1;
            let (ix, vx) = (&idx[p0..p1], &val[p0..p1]);
            let yr = &mut y[r * n..(r + 1) * n];
            for c in (0..full).step_by(C) {
                let acc: &mut [f32; C] = (&mut yr[c..c + C]).try_into().unwrap();
                let mut a = *acc;
                for (&j, &v) in ix.iter().zip(vx) {
                    let wr: &[f32; C] = w[j as usize * n + c..][..C].try_into().unwrap();
                    for q in 0..C {
                        a[q] += v * wr[q];
                    }
                }
                *acc = a;
            }
            for (&j, &v) in ix.iter().zip(vx) {
                for (o, &ww) in yr[full..].iter_mut().zip(&w[j as usize * n + full..][..n - full]) {
                    *o += v * ww;
                }
            }
        }
    }
}
crate::multiversion!(
    fn sparse_rows_blocked(y: &mut [f32], indptr: &[usize], idx: &[u32], val: &[f32], w: &[f32], n: usize, g: usize) => sparse_rows_blocked_body
);

// Rows per task and genes per block of the f32 sparse forward: 32 output rows of 300 (38 KB) stay in
// L1 and 128 weight rows (154 KB) in L2. Measured on the Baron input layer (128 x 16,413 -> 300, 2
// threads, Zen 5): 1.8 ms, against 3.5 ms row by row; 8-64 rows and 16-1,024 genes gave 1.8-3.5 ms.
const FWD_ROWS: usize = 32;
const FWD_GENES: usize = 128;

/// y[B×N] = X·W + b for a sparse X [B×K]. f32 runs in gene blocks (see [`sparse_rows_blocked`]): the
/// row-by-row order read a whole weight row from memory per non-zero (~300 MB per Baron minibatch).
/// The sums are the row-by-row loop's, bit for bit.
pub fn sparse_linear_fwd<F: Real>(x: &SparseBatch<F>, w: &[F], b: &[F], y: &mut [F], n: usize) {
    if let Some(y32) = F::as_f32_mut(&mut y[..x.rows * n]) {
        let (w32, b32, v32) = (F::as_f32(w), F::as_f32(b), F::as_f32(&x.values));
        y32.par_chunks_mut(FWD_ROWS * n).enumerate().for_each(|(ci, yc)| {
            let r0 = ci * FWD_ROWS;
            let rows = yc.len() / n;
            for row in yc.chunks_exact_mut(n) {
                row.copy_from_slice(&b32);
            }
            sparse_rows_blocked(yc, &x.indptr[r0..=r0 + rows], &x.indices, &v32, &w32, n, FWD_GENES);
        });
        return;
    }
    sparse_linear_fwd_rows(x, w, b, y, n);
}

/// The row-by-row forward: each row reads the weight row of each of its non-zeros. The reference for
/// [`sparse_linear_fwd`] (tested bit-identical) and its path for f64.
#[doc(hidden)]
pub fn sparse_linear_fwd_rows<F: Real>(x: &SparseBatch<F>, w: &[F], b: &[F], y: &mut [F], n: usize) {
    if let Some(y32) = F::as_f32_mut(&mut y[..x.rows * n]) {
        let (w32, b32, v32) = (F::as_f32(w), F::as_f32(b), F::as_f32(&x.values));
        y32.par_chunks_mut(n).enumerate().for_each(|(r, row)| {
            row.copy_from_slice(&b32);
            let (p0, p1) = (x.indptr[r], x.indptr[r + 1]);
            sparse_row(row, &x.indices[p0..p1], &v32[p0..p1], &w32);
        });
        return;
    }
    y[..x.rows * n].par_chunks_mut(n).enumerate().for_each(|(r, row)| {
        row.copy_from_slice(b);
        for p in x.indptr[r]..x.indptr[r + 1] {
            let v = x.values[p];
            let wr = &w[x.indices[p] as usize * n..][..n];
            for (o, &ww) in row.iter_mut().zip(wr) {
                *o = *o + v * ww;
            }
        }
    });
}

/// One weight-gradient row dw[j, :] = Σ_p v_p · dy[i_p, :] over gene j's non-zeros, 64 columns at a time
/// held in registers (the sum per element runs in the same order as a plain accumulation into the row).
#[inline(always)]
fn grad_row_body(row: &mut [f32], idx: &[u32], val: &[f32], dy: &[f32]) {
    const C: usize = 64;
    let n = row.len();
    let full = n - n % C;
    for c in (0..full).step_by(C) {
        let mut acc = [0f32; C];
        for (&i, &v) in idx.iter().zip(val) {
            let d: &[f32; C] = dy[i as usize * n + c..][..C].try_into().unwrap();
            for q in 0..C {
                acc[q] += v * d[q];
            }
        }
        row[c..c + C].copy_from_slice(&acc);
    }
    let tail = &mut row[full..];
    tail.fill(0.0);
    for (&i, &v) in idx.iter().zip(val) {
        for (o, &d) in tail.iter_mut().zip(&dy[i as usize * n + full..][..n - full]) {
            *o += v * d;
        }
    }
}
crate::multiversion!(fn grad_row(row: &mut [f32], idx: &[u32], val: &[f32], dy: &[f32]) => grad_row_body);

/// dw[K×N] = Xᵀ·dy (only rows of features present in the batch are non-zero), db = Σ_rows dy.
pub fn sparse_linear_bwd<F: Real>(x: &SparseBatch<F>, dy: &[F], dw: &mut [F], db: &mut [F], n: usize) {
    if let Some(dw32) = F::as_f32_mut(dw) {
        let (dy32, v32) = (F::as_f32(dy), F::as_f32(&x.t_values));
        dw32.par_chunks_mut(n).enumerate().for_each(|(j, row)| {
            let (p0, p1) = (x.t_indptr[j], x.t_indptr[j + 1]);
            grad_row(row, &x.t_rows[p0..p1], &v32[p0..p1], &dy32);
        });
        col_sums(dy, db, x.rows, n);
        return;
    }
    dw.par_chunks_mut(n).enumerate().for_each(|(j, row)| {
        row.iter_mut().for_each(|v| *v = F::zero());
        for p in x.t_indptr[j]..x.t_indptr[j + 1] {
            let v = x.t_values[p];
            let d = &dy[x.t_rows[p] as usize * n..][..n];
            for (o, &dd) in row.iter_mut().zip(d) {
                *o = *o + v * dd;
            }
        }
    });
    col_sums(dy, db, x.rows, n);
}

// ---------------------------------------------------------------------------------------------
// LayerNorm over the D features of each row (PyTorch: biased variance, eps inside the sqrt).
// y[B×D] = γ ⊙ x̂ + β, x̂ = (x − mean)·r, r = 1/√(var + eps). Saves x̂[B×D] and r[B].

pub const LN_EPS: f64 = 1e-5;

pub fn layernorm_fwd<F: Real>(x: &[F], gamma: &[F], beta: &[F], y: &mut [F], xhat: &mut [F], rstd: &mut [F], d: usize) {
    let df = F::f(d as f64);
    y.par_chunks_mut(d).zip(xhat.par_chunks_mut(d)).zip(rstd.par_iter_mut()).enumerate().for_each(|(r, ((yr, hr), rs))| {
        let xr = &x[r * d..][..d];
        let mean = xr.iter().copied().sum::<F>() / df;
        let var = xr.iter().map(|&v| (v - mean) * (v - mean)).sum::<F>() / df;
        let inv = F::one() / (var + F::f(LN_EPS)).sqrt();
        *rs = inv;
        for j in 0..d {
            hr[j] = (xr[j] - mean) * inv;
            yr[j] = gamma[j] * hr[j] + beta[j];
        }
    });
}

/// dγ = Σ dy⊙x̂, dβ = Σ dy, dx = r·(g − mean(g) − x̂·mean(g⊙x̂)) with g = dy⊙γ.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_bwd<F: Real>(
    dy: &[F],
    xhat: &[F],
    rstd: &[F],
    gamma: &[F],
    dx: &mut [F],
    dgamma: &mut [F],
    dbeta: &mut [F],
    rows: usize,
    d: usize,
) {
    let df = F::f(d as f64);
    dx.par_chunks_mut(d).enumerate().for_each(|(r, dxr)| {
        let (dyr, hr) = (&dy[r * d..][..d], &xhat[r * d..][..d]);
        let mut mg = F::zero();
        let mut mgh = F::zero();
        for j in 0..d {
            let g = dyr[j] * gamma[j];
            mg = mg + g;
            mgh = mgh + g * hr[j];
        }
        mg = mg / df;
        mgh = mgh / df;
        for j in 0..d {
            dxr[j] = rstd[r] * (dyr[j] * gamma[j] - mg - hr[j] * mgh);
        }
    });
    dgamma.par_iter_mut().zip(dbeta.par_iter_mut()).enumerate().for_each(|(j, (dg, db))| {
        let (mut a, mut b) = (F::zero(), F::zero());
        for r in 0..rows {
            a = a + dy[r * d + j] * xhat[r * d + j];
            b = b + dy[r * d + j];
        }
        *dg = a;
        *db = b;
    });
}

// ---------------------------------------------------------------------------------------------
// ReLU and dropout, fused: y = relu(x)·m/(1−p). The mask m[B×D] ∈ {0, 1/(1−p)} (all ones in eval mode)
// already holds the scale. Backward: dx = dy·m·[y_relu > 0]; the relu output is kept for its sign.

pub fn relu_dropout_fwd<F: Real>(x: &[F], mask: Option<&[F]>, relu_out: &mut [F], y: &mut [F]) {
    relu_out.par_iter_mut().zip(x.par_iter()).for_each(|(r, &v)| *r = v.max(F::zero()));
    match mask {
        Some(m) => y.par_iter_mut().zip(relu_out.par_iter()).zip(m.par_iter()).for_each(|((o, &r), &mm)| *o = r * mm),
        None => y.copy_from_slice(relu_out),
    }
}

pub fn relu_dropout_bwd<F: Real>(dy: &[F], relu_out: &[F], mask: Option<&[F]>, dx: &mut [F]) {
    dx.par_iter_mut().enumerate().for_each(|(i, o)| {
        let m = mask.map(|m| m[i]).unwrap_or(F::one());
        *o = if relu_out[i] > F::zero() { dy[i] * m } else { F::zero() };
    });
}

// ---------------------------------------------------------------------------------------------
// Split softmax over the genes of each row: group G ∈ {homologous, non-homologous} gets
// ρ_G = w_G·softmax(r_G) with w_G = |G|/N, so Σ_g ρ_g = 1. `group[g]` is 0 or 1.

pub fn split_softmax_fwd<F: Real>(r: &[F], group: &[u8], weight: [f64; 2], rho: &mut [F], n: usize) {
    if let Some(out32) = F::as_f32_mut(rho) {
        let r32 = F::as_f32(r);
        out32.par_chunks_mut(n).zip(r32.par_chunks(n)).for_each(|(o, ri)| simd::split_softmax_row(ri, group, weight, o));
        return;
    }
    rho.par_chunks_mut(n).enumerate().for_each(|(i, out)| {
        let ri = &r[i * n..][..n];
        let mut mx = [f64::NEG_INFINITY; 2];
        for g in 0..n {
            let k = group[g] as usize;
            mx[k] = mx[k].max(ri[g].d());
        }
        let mut sum = [0f64; 2];
        for g in 0..n {
            let k = group[g] as usize;
            let e = (ri[g].d() - mx[k]).exp();
            out[g] = F::f(e);
            sum[k] += e;
        }
        let scale = [weight[0] / sum[0], weight[1] / sum[1]];
        for g in 0..n {
            out[g] = F::f(out[g].d() * scale[group[g] as usize]);
        }
    });
}

/// dr_g = ρ_g·(dρ_g − Σ_{h∈G} ρ_h dρ_h / w_G). Overwrites `d` (dρ in, dr out).
pub fn split_softmax_bwd<F: Real>(rho: &[F], group: &[u8], weight: [f64; 2], d: &mut [F], n: usize) {
    d.par_chunks_mut(n).enumerate().for_each(|(i, dr)| {
        let ro = &rho[i * n..][..n];
        // Two register accumulators, each taking +0.0 for the other group's genes: a sum that starts at
        // +0.0 is never −0.0, so adding +0.0 leaves it unchanged, and the sums are the per-group ones in
        // gene order (an indexed array kept them in memory, one store-to-load round trip per gene).
        let (mut d0, mut d1) = (0f64, 0f64);
        for g in 0..n {
            let v = ro[g].d() * dr[g].d();
            let first = group[g] == 0;
            d0 += if first { v } else { 0.0 };
            d1 += if first { 0.0 } else { v };
        }
        let dot = [d0, d1];
        let c = [if weight[0] > 0.0 { dot[0] / weight[0] } else { 0.0 }, if weight[1] > 0.0 { dot[1] / weight[1] } else { 0.0 }];
        for g in 0..n {
            dr[g] = F::f(ro[g].d() * (dr[g].d() - c[group[g] as usize]));
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Likelihood of a minibatch. Inputs [B×N]: dense counts x, ρ, θ (from the cell's batch row of
// log_alpha), logits s (ZINB). Outputs: nll[B] = −Σ_g LL, and the gradients of L = scale·Σ_i nll_i
// (scale = 1/B for the batch mean) w.r.t. ρ, θ, s [B×N] and the library l[B].

pub struct LikelihoodGrads<'a, F> {
    pub d_rho: &'a mut [F],
    pub d_theta: &'a mut [F],
    pub d_logit: Option<&'a mut [F]>,
    pub d_lib: &'a mut [F],
}

#[allow(clippy::too_many_arguments)]
pub fn likelihood<F: Real>(
    dist: Distribution,
    x: &[F],
    rho: &[F],
    theta: &[F],
    logit: Option<&[F]>,
    lib: &[F],
    n: usize,
    scale: f64,
    nll: &mut [F],
    grads: Option<LikelihoodGrads<'_, F>>,
) {
    let rows = nll.len();
    match grads {
        None => nll.par_iter_mut().enumerate().for_each(|(i, out)| {
            let mut s = 0f64;
            for g in i * n..(i + 1) * n {
                let ll = match dist {
                    Distribution::Zinb => zinb(x[g].d(), theta[g].d(), rho[g].d(), lib[i].d(), logit.unwrap()[g].d()).ll,
                    Distribution::Nb => nb(x[g].d(), theta[g].d(), rho[g].d(), lib[i].d()).ll,
                };
                s -= ll;
            }
            *out = F::f(s);
        }),
        Some(gr) if F::IS_F32 && dist == Distribution::Zinb && logit.is_some() => {
            let LikelihoodGrads { d_rho, d_theta, d_logit, d_lib } = gr;
            let d_logit = d_logit.expect("ZINB needs the logit gradient");
            let (x32, rho32, theta32, logit32) = (F::as_f32(x), F::as_f32(rho), F::as_f32(theta), F::as_f32(logit.unwrap()));
            let (dr, dt, ds) =
                (F::as_f32_mut(d_rho).expect("f32"), F::as_f32_mut(d_theta).expect("f32"), F::as_f32_mut(d_logit).expect("f32"));
            zinb_grads_f32(&x32, &rho32, &theta32, &logit32, lib, n, scale, nll, d_lib, dr, dt, ds);
        }
        Some(gr) => {
            let LikelihoodGrads { d_rho, d_theta, d_logit, d_lib } = gr;
            let mut dummy = Vec::new();
            let d_logit: &mut [F] = match d_logit {
                Some(d) => d,
                None => {
                    dummy.resize(rows * n, F::zero());
                    &mut dummy
                }
            };
            nll.par_iter_mut()
                .zip(d_lib.par_iter_mut())
                .zip(d_rho.par_chunks_mut(n))
                .zip(d_theta.par_chunks_mut(n))
                .zip(d_logit.par_chunks_mut(n))
                .enumerate()
                .for_each(|(i, ((((out, dl), dr), dt), ds))| {
                    let (mut s, mut sl) = (0f64, 0f64);
                    for j in 0..n {
                        let g = i * n + j;
                        let r = match dist {
                            Distribution::Zinb => zinb(x[g].d(), theta[g].d(), rho[g].d(), lib[i].d(), logit.unwrap()[g].d()),
                            Distribution::Nb => nb(x[g].d(), theta[g].d(), rho[g].d(), lib[i].d()),
                        };
                        s -= r.ll;
                        dr[j] = F::f(-scale * r.d_rho);
                        dt[j] = F::f(-scale * r.d_theta);
                        ds[j] = F::f(-scale * r.d_logit);
                        sl -= scale * r.d_lib;
                    }
                    *out = F::f(s);
                    *dl = F::f(sl);
                });
        }
    }
}

/// The f32 ZINB likelihood with gradients, row by row: the zero-count branch of every gene in f32 fast
/// math (vectorised, ~90 % of the entries), then the genes with counts recomputed exactly in f64 by
/// [`zinb`]. Sums run in f32 within blocks of 256 genes and in f64 across blocks.
#[allow(clippy::too_many_arguments)]
fn zinb_grads_f32<F: Real>(
    x: &[f32],
    rho: &[f32],
    theta: &[f32],
    logit: &[f32],
    lib: &[F],
    n: usize,
    scale: f64,
    nll: &mut [F],
    d_lib: &mut [F],
    d_rho: &mut [f32],
    d_theta: &mut [f32],
    d_logit: &mut [f32],
) {
    nll.par_iter_mut()
        .zip(d_lib.par_iter_mut())
        .zip(d_rho.par_chunks_mut(n))
        .zip(d_theta.par_chunks_mut(n))
        .zip(d_logit.par_chunks_mut(n))
        .enumerate()
        .for_each_init(
            || (vec![0f32; n], vec![0f32; n]),
            |(ll, dl), (i, ((((out, out_dl), dr), dt), ds))| {
                let r0 = i * n;
                let (xr, ro, th, sr) = (&x[r0..r0 + n], &rho[r0..r0 + n], &theta[r0..r0 + n], &logit[r0..r0 + n]);
                let l = lib[i].d();
                zinb_zero_row(ro, th, sr, l as f32, scale as f32, ll, dl, dr, dt, ds);
                // Genes with counts: their terms replace the zero-count ones.
                zinb_count_genes(xr, ro, th, sr, l, scale, ll, dl, dr, dt, ds);
                let (mut s_ll, mut s_dl) = (0f64, 0f64);
                for (a, b) in ll.chunks(256).zip(dl.chunks(256)) {
                    s_ll += a.iter().sum::<f32>() as f64;
                    s_dl += b.iter().sum::<f32>() as f64;
                }
                *out = F::f(-s_ll);
                *out_dl = F::f(-scale * s_dl);
            },
        );
}

/// Counts up to this (integers) take the f32 path of [`zinb_count_genes`]; larger or fractional counts,
/// a few per row, are evaluated in f64 by [`zinb`].
const F32_MAX_COUNT: f32 = 16.0;

/// The ZINB term and gradients of the genes with counts of one row (x ≥ 1e-7), written over the
/// zero-count values at those genes. Integer counts ≤ [`F32_MAX_COUNT`] run in f32 fast math on
/// gathered blocks of 16 genes so that the arithmetic vectorises, lgamma(x+θ) − lgamma(θ) and
/// ψ(x+θ) − ψ(θ) as the finite sums over k < x (the f64 kernel's own formulas, see
/// [`super::special::lgamma_ratio`]); the rest in f64 by [`zinb`]. Error against [`zinb`] on the same
/// f32 inputs: a few f32 ulps of the largest term of each sum (tested in `f32_zinb_kernel_matches_f64`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn zinb_count_genes_body(
    x: &[f32],
    ro: &[f32],
    th: &[f32],
    s: &[f32],
    l: f64,
    scale: f64,
    ll: &mut [f32],
    dl: &mut [f32],
    dr: &mut [f32],
    dt: &mut [f32],
    ds: &mut [f32],
) {
    use super::fastmath as fm;
    use super::likelihood::{RHO_MAX, RHO_MIN, THETA_MIN};
    const B: usize = 16;
    let (rmin, rmax, tmin) = (RHO_MIN as f32, RHO_MAX as f32, THETA_MIN as f32);
    let (lf, sc) = (l as f32, scale as f32);
    let n = x.len();
    let (mut gi, mut xv, mut rv, mut tv, mut sv, mut fv) = ([0usize; B], [0f32; B], [0.5f32; B], [1f32; B], [0f32; B], [0f32; B]);
    let mut j = 0;
    while j < n {
        let mut m = 0;
        let mut kmax = 0f32;
        while m < B && j < n {
            let xj = x[j];
            if xj >= 1e-7 {
                if xj <= F32_MAX_COUNT && xj.fract() == 0.0 {
                    (gi[m], xv[m], rv[m], tv[m], sv[m]) = (j, xj, ro[j], th[j], s[j]);
                    fv[m] = super::special::ln_factorial(xj as f64) as f32;
                    kmax = kmax.max(xj);
                    m += 1;
                } else {
                    let z = zinb(xj as f64, th[j] as f64, ro[j] as f64, l, s[j] as f64);
                    ll[j] = z.ll as f32;
                    dl[j] = z.d_lib as f32;
                    dr[j] = (-scale * z.d_rho) as f32;
                    dt[j] = (-scale * z.d_theta) as f32;
                    ds[j] = (-scale * z.d_logit) as f32;
                }
            }
            j += 1;
        }
        if m == 0 {
            continue;
        }
        // Σ_{k<x} ln(θ+k) and Σ_{k<x} 1/(θ+k) over all B lanes (stale lanes are finite and ignored).
        let (mut lgr, mut dgd) = ([0f32; B], [0f32; B]);
        let mut k = 0f32;
        while k < kmax {
            for q in 0..B {
                let tk = tv[q].max(tmin) + k;
                let on = k < xv[q];
                lgr[q] += if on { fm::ln_poly(tk) } else { 0.0 };
                dgd[q] += if on { 1.0 / tk } else { 0.0 };
            }
            k += 1.0;
        }
        let (mut o_ll, mut o_dl, mut o_dr, mut o_dt, mut o_ds) = ([0f32; B], [0f32; B], [0f32; B], [0f32; B], [0f32; B]);
        for q in 0..B {
            let (xq, rho, theta, sq) = (xv[q], rv[q], tv[q], sv[q]);
            let t = theta.max(tmin);
            let r = rho.clamp(rmin, rmax);
            let mu = r * lf;
            let tm = t + mu;
            let l1 = fm::ln_1p(mu / t);
            // softplus(s) and σ(−s) from one exp(−|s|).
            let e = fm::exp(-sq.abs());
            let sp_s = sq.max(0.0) + fm::ln_1p(e);
            let sig_neg = if sq <= 0.0 { 1.0 } else { e } / (1.0 + e);
            o_ll[q] = -sp_s + sq - t * l1 - xq * fm::ln_1p(t / mu) + lgr[q] - fv[q];
            let d_th = -l1 + (mu - xq) / tm + dgd[q];
            // x/μ − (x+θ)/(θ+μ) without the cancellation of the two terms.
            let d_mu = t * (xq - mu) / (mu * tm);
            o_dl[q] = d_mu * r;
            o_dr[q] = if (rmin..=rmax).contains(&rho) { -sc * d_mu * lf } else { 0.0 };
            o_dt[q] = if theta >= tmin { -sc * d_th } else { 0.0 };
            o_ds[q] = -sc * sig_neg;
        }
        for q in 0..m {
            let g = gi[q];
            (ll[g], dl[g], dr[g], dt[g], ds[g]) = (o_ll[q], o_dl[q], o_dr[q], o_dt[q], o_ds[q]);
        }
    }
}

crate::multiversion!(
    fn zinb_count_genes(
        x: &[f32],
        ro: &[f32],
        th: &[f32],
        s: &[f32],
        l: f64,
        scale: f64,
        ll: &mut [f32],
        dl: &mut [f32],
        dr: &mut [f32],
        dt: &mut [f32],
        ds: &mut [f32],
    ) => zinb_count_genes_body
);

/// The zero-count ZINB term of every gene of a row and its gradients (f32 fast math). Writes the
/// log-likelihood and ∂ll/∂library per gene into `ll`, `dl`, and −scale·∂ll/∂(ρ, θ, logit) into `dr`,
/// `dt`, `ds`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn zinb_zero_row_body(
    ro: &[f32],
    th: &[f32],
    s: &[f32],
    l: f32,
    scale: f32,
    ll: &mut [f32],
    dl: &mut [f32],
    dr: &mut [f32],
    dt: &mut [f32],
    ds: &mut [f32],
) {
    use super::fastmath as fm;
    use super::likelihood::{RHO_MAX, RHO_MIN, THETA_MIN};
    let (rmin, rmax, tmin) = (RHO_MIN as f32, RHO_MAX as f32, THETA_MIN as f32);
    let m = ro.len();
    let (ll, dl, dr, dt, ds) = (&mut ll[..m], &mut dl[..m], &mut dr[..m], &mut dt[..m], &mut ds[..m]);
    let (th, s) = (&th[..m], &s[..m]);
    for k in 0..m {
        let (theta, rho, sk) = (th[k], ro[k], s[k]);
        let t = theta.max(tmin);
        let r = rho.clamp(rmin, rmax);
        let mu = r * l;
        let tm = t + mu;
        let l1 = fm::ln_1p(mu / t);
        let th_log = -t * l1;
        let a = sk + th_log;
        // softplus(a) − softplus(s), written without cancellation for large s:
        // = th_log + softplus(−a) − softplus(−s) when s > 0.
        let pos = sk > 0.0;
        let (p, q, base) = if pos { (-a, -sk, th_log) } else { (a, sk, 0.0) };
        ll[k] = base + fm::softplus(p) - fm::softplus(q);
        let sa = 1.0 / (1.0 + fm::exp(-a));
        let ss = 1.0 / (1.0 + fm::exp(-sk));
        let d_mu = -sa * t / tm;
        dl[k] = d_mu * r;
        dr[k] = if rho >= rmin && rho <= rmax { -scale * d_mu * l } else { 0.0 };
        dt[k] = if theta >= tmin { -scale * sa * (mu / tm - l1) } else { 0.0 };
        ds[k] = -scale * (sa - ss);
    }
}

crate::multiversion!(
    fn zinb_zero_row(
        ro: &[f32],
        th: &[f32],
        s: &[f32],
        l: f32,
        scale: f32,
        ll: &mut [f32],
        dl: &mut [f32],
        dr: &mut [f32],
        dt: &mut [f32],
        ds: &mut [f32],
    ) => zinb_zero_row_body
);

/// Lanes of the scoring kernel: the gene loop runs in fixed groups of 16 so that it maps onto one
/// AVX-512 register, two AVX2 registers or four SSE registers with the same operations in each lane.
const LANES: usize = 16;

/// One gene's zero-count term (ZINB when `s` = (logit, softplus(logit)) is given, else NB), division-
/// free: `t` is θ clamped, `it` its reciprocal (both per batch, precomputed).
#[inline(always)]
fn zero_term(r: f32, t: f32, it: f32, s: Option<(f32, f32)>, l: f32) -> f32 {
    use super::fastmath as fm;
    use super::likelihood::{RHO_MAX, RHO_MIN};
    let mu = r.clamp(RHO_MIN as f32, RHO_MAX as f32) * l;
    match s {
        Some((s, sp)) => fm::softplus_poly(s + -t * fm::ln_1p_pos(mu * it)) - sp,
        // NB: θ·log(1 − p), with p = μ/(μ+θ) clamped to [P_MIN, P_MAX] (spec §3.2) through q = μ/θ.
        None => {
            let q = mu * it;
            let tl = -t * fm::ln_1p_pos(q);
            if q < NB_Q_LOW {
                t * NB_LN_1M_PMIN
            } else if q > NB_Q_HIGH {
                t * NB_LN_PMIN
            } else {
                tl
            }
        }
    }
}

// NB's clamp of p = q/(1+q) to [P_MIN, P_MAX], as bounds on q = μ/θ, and the clamped logs (f32).
const NB_Q_LOW: f32 = (super::likelihood::P_MIN / (1.0 - super::likelihood::P_MIN)) as f32;
const NB_Q_HIGH: f32 = (super::likelihood::P_MAX / (1.0 - super::likelihood::P_MAX)) as f32;
// log(1 − P_MIN) = log1p(−1e-7) and log(P_MIN) = log(1 − P_MAX), in f64 first.
const NB_LN_1M_PMIN: f32 = -1.000_000_05e-7_f64 as f32;
const NB_LN_PMIN: f32 = -16.118_095_650_958_32_f64 as f32;
const NB_LN_PMAX: f32 = NB_LN_1M_PMIN;

/// Σ over all genes of the zero-count terms: blocks of 256 genes mapped into a buffer (a plain loop the
/// vectoriser takes whole), each block summed in 16 f32 lanes whose sums are added in order into an f64
/// total. The same operations in the same order at every vector width.
#[inline(always)]
fn zero_sum_body(ro: &[f32], tc: &[f32], ti: &[f32], s: Option<(&[f32], &[f32])>, l: f32) -> f64 {
    const B: usize = 256;
    let n = ro.len();
    let mut buf = [0f32; B];
    let mut total = 0f64;
    for g0 in (0..n).step_by(B) {
        let m = B.min(n - g0);
        let (r, t, it, out) = (&ro[g0..g0 + m], &tc[g0..g0 + m], &ti[g0..g0 + m], &mut buf[..m]);
        match s {
            Some((a, b)) => {
                let (a, b) = (&a[g0..g0 + m], &b[g0..g0 + m]);
                for k in 0..m {
                    out[k] = zero_term(r[k], t[k], it[k], Some((a[k], b[k])), l);
                }
            }
            None => {
                for k in 0..m {
                    out[k] = zero_term(r[k], t[k], it[k], None, l);
                }
            }
        }
        let mut acc = [0f32; LANES];
        let mut it = out.chunks_exact(LANES);
        for c in &mut it {
            for q in 0..LANES {
                acc[q] += c[q];
            }
        }
        total += acc.iter().map(|&v| v as f64).sum::<f64>();
        total += it.remainder().iter().map(|&v| v as f64).sum::<f64>();
    }
    total
}

crate::multiversion!(
    /// The zero-count sum with the widest vector unit this CPU has.
    fn zero_sum(ro: &[f32], tc: &[f32], ti: &[f32], s: Option<(&[f32], &[f32])>, l: f32) -> f64 => zero_sum_body
);

/// softplus element-wise (precomputed for the scoring kernel).
pub fn softplus_all<F: Real>(x: &[F]) -> Vec<F> {
    let mut out = vec![F::zero(); x.len()];
    if let Some(o) = F::as_f32_mut(&mut out) {
        let xs = F::as_f32(x);
        o.par_chunks_mut(4096).zip(xs.par_chunks(4096)).for_each(|(o, x)| simd::softplus(x, o));
    } else {
        out.par_iter_mut().zip(x.par_iter()).for_each(|(o, &v)| *o = F::f(super::special::softplus(v.d())));
    }
    out
}

/// f32 kernels compiled twice, for baseline x86-64 and for AVX2+FMA, chosen at run time.
mod simd {
    use super::super::fastmath as fm;

    #[inline(always)]
    fn softplus_body(x: &[f32], out: &mut [f32]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = fm::softplus(v);
        }
    }

    /// The maximum of each group's values, with eight lanes per group so that it vectorises (max is
    /// exact, so the order does not change the result).
    #[inline(always)]
    fn group_max_body(r: &[f32], group: &[u8]) -> [f32; 2] {
        let (mut a0, mut a1) = ([f32::NEG_INFINITY; 8], [f32::NEG_INFINITY; 8]);
        let mut it = r.chunks_exact(8).zip(group.chunks_exact(8));
        for (c, g) in &mut it {
            for q in 0..8 {
                let z = g[q] == 0;
                a0[q] = if z { a0[q].max(c[q]) } else { a0[q] };
                a1[q] = if z { a1[q] } else { a1[q].max(c[q]) };
            }
        }
        let tail = r.len() - r.len() % 8;
        for (&v, &g) in r[tail..].iter().zip(&group[tail..]) {
            if g == 0 {
                a0[0] = a0[0].max(v);
            } else {
                a1[0] = a1[0].max(v);
            }
        }
        [a0.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)), a1.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b))]
    }
    /// exp(r − m[group]) into `out`, and the two group sums.
    #[inline(always)]
    fn grouped_exp_body(r: &[f32], group: &[u8], m: [f32; 2], out: &mut [f32]) -> [f64; 2] {
        for ((o, &v), &g) in out.iter_mut().zip(r).zip(group) {
            let mm = if g == 0 { m[0] } else { m[1] };
            *o = fm::exp(v - mm);
        }
        let mut s0 = [0f32; 8];
        let mut s1 = [0f32; 8];
        let mut total = [0f64; 2];
        for (oc, gc) in out.chunks(2048).zip(group.chunks(2048)) {
            let mut it = oc.chunks_exact(8).zip(gc.chunks_exact(8));
            for (o8, g8) in &mut it {
                for q in 0..8 {
                    let is0 = g8[q] == 0;
                    s0[q] += if is0 { o8[q] } else { 0.0 };
                    s1[q] += if is0 { 0.0 } else { o8[q] };
                }
            }
            let rem = oc.len() - oc.len() % 8;
            for k in rem..oc.len() {
                if gc[k] == 0 {
                    s0[0] += oc[k];
                } else {
                    s1[0] += oc[k];
                }
            }
            total[0] += s0.iter().map(|&v| v as f64).sum::<f64>();
            total[1] += s1.iter().map(|&v| v as f64).sum::<f64>();
            s0 = [0.0; 8];
            s1 = [0.0; 8];
        }
        total
    }

    #[inline(always)]
    fn scale_body(group: &[u8], scale: [f32; 2], out: &mut [f32]) {
        for (o, &g) in out.iter_mut().zip(group) {
            *o *= if g == 0 { scale[0] } else { scale[1] };
        }
    }

    crate::multiversion!(pub fn softplus(x: &[f32], out: &mut [f32]) => softplus_body);
    crate::multiversion!(fn group_max(r: &[f32], group: &[u8]) -> [f32; 2] => group_max_body);
    crate::multiversion!(fn grouped_exp(r: &[f32], group: &[u8], m: [f32; 2], out: &mut [f32]) -> [f64; 2] => grouped_exp_body);
    crate::multiversion!(fn scale(group: &[u8], scale: [f32; 2], out: &mut [f32]) => scale_body);

    /// One row of the split softmax in f32 fast math.
    pub fn split_softmax_row(r: &[f32], group: &[u8], weight: [f64; 2], out: &mut [f32]) {
        let mx = group_max(r, group);
        let sum = grouped_exp(r, group, mx, out);
        scale(group, [(weight[0] / sum[0]) as f32, (weight[1] / sum[1]) as f32], out);
    }
}

/// Forward-only NLL per output row, for ranking (candidate choice, label transfer). Row i scores the
/// counts `x` row i against decoded row `rows[i]` of `rho` (and `logit`, with `sp_logit` =
/// softplus(logit)) and θ row `batch[i]` of the per-batch table `theta` [S×N], library `lib[i]`.
/// The zero-count term of every gene runs in f32 fast math (vectorised); the genes with counts are then
/// corrected exactly in f64. Same value as `likelihood` to ~1e-6 relative; no gradients; no row copies.
#[allow(clippy::too_many_arguments)]
pub fn likelihood_score<F: Real>(
    dist: Distribution,
    nz_ptr: &[usize],
    nz_idx: &[u32],
    nz_val: &[f32],
    rows: &[u32],
    batch: &[u32],
    rho: &[F],
    theta: &[F],
    logit: Option<(&[F], &[F])>,
    lib: &[F],
    n: usize,
    nll: &mut [F],
) {
    likelihood_score_cached(ScorePart::All, dist, nz_ptr, nz_idx, nz_val, None, None, rows, batch, rho, theta, logit, lib, n, nll)
}

/// Which part of a row's NLL [`likelihood_score_cached`] computes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ScorePart {
    /// The whole NLL.
    All,
    /// The NLL less its zero-count part: the count-only terms and, for the genes with counts, the exact
    /// term less the zero-count one. The zero-count part, a smooth function of the library size alone,
    /// is the whole NLL of a row without counts (the label transfer interpolates it between library
    /// sizes); the two parts summed in f64 give the whole NLL's value.
    Counts,
}

/// [`likelihood_score`] (or its `part`) with each row's count-only terms given (`cached`, from
/// [`count_terms`] with the same θ table) instead of computed, and optionally with scored row i reading
/// stored row `row_of[i]` of the CSR (then `cached` is required).
#[allow(clippy::too_many_arguments)]
pub fn likelihood_score_cached<F: Real>(
    part: ScorePart,
    dist: Distribution,
    nz_ptr: &[usize],
    nz_idx: &[u32],
    nz_val: &[f32],
    row_of: Option<&[u32]>,
    cached: Option<&[f64]>,
    rows: &[u32],
    batch: &[u32],
    rho: &[F],
    theta: &[F],
    logit: Option<(&[F], &[F])>,
    lib: &[F],
    n: usize,
    nll: &mut [F],
) {
    let (rho32, theta32) = (F::as_f32(rho), F::as_f32(theta));
    let logit32 = logit.map(|(a, b)| (F::as_f32(a), F::as_f32(b)));
    assert!(row_of.is_none() || cached.is_some(), "rows addressed through row_of need their count terms cached");
    let counts = cached_or_count_terms(cached, nz_ptr, nz_idx, nz_val, batch, &theta32, n);
    let tables = ThetaTables::new(&theta32, batch, n);
    nll.par_iter_mut().enumerate().for_each(|(i, out)| {
        let r0 = rows[i] as usize * n;
        let s = match (dist, &logit32) {
            (Distribution::Zinb, Some((a, b))) => Some((&a[r0..r0 + n], &b[r0..r0 + n])),
            _ => None,
        };
        let c = row_of.map_or(i, |r| r[i] as usize);
        let (p0, p1) = (nz_ptr[c], nz_ptr[c + 1]);
        let (tc, ti) = tables.row(batch[i]);
        let (ro, l, idx, val) = (&rho32[r0..r0 + n], lib[i].d() as f32, &nz_idx[p0..p1], &nz_val[p0..p1]);
        *out = F::f(match part {
            ScorePart::All => score_row(ro, tc, ti, s, l, counts[i], idx, val),
            ScorePart::Counts => -(counts[i] + count_correction(ro, tc, ti, s.map(|(a, _)| a), l, idx, val)),
        });
    });
}

/// The scored rows' count-only terms: the caller's cache (one per row) or [`count_terms`].
fn cached_or_count_terms<'a>(
    cached: Option<&'a [f64]>,
    nz_ptr: &[usize],
    nz_idx: &[u32],
    nz_val: &[f32],
    batch: &[u32],
    theta32: &[f32],
    n: usize,
) -> std::borrow::Cow<'a, [f64]> {
    match cached {
        Some(c) => {
            assert_eq!(c.len(), batch.len(), "one cached count term per scored row");
            std::borrow::Cow::Borrowed(c)
        }
        None => std::borrow::Cow::Owned(count_terms(nz_ptr, nz_idx, nz_val, batch, theta32, n)),
    }
}

/// θ clamped and its reciprocal for the table rows in use only (usually one batch of a few), so that the
/// gene loops have no division. `slot[b]` is table row b's place in the compact tables.
struct ThetaTables {
    slot: Vec<usize>,
    tc: Vec<f32>,
    ti: Vec<f32>,
    n: usize,
}

impl ThetaTables {
    fn new(theta32: &[f32], batch: &[u32], n: usize) -> Self {
        let mut slot = vec![usize::MAX; theta32.len() / n.max(1)];
        let mut used = 0;
        for &b in batch {
            if slot[b as usize] == usize::MAX {
                slot[b as usize] = used;
                used += 1;
            }
        }
        let (mut tc, mut ti) = (vec![0f32; used * n], vec![0f32; used * n]);
        for (b, &k) in slot.iter().enumerate().filter(|s| *s.1 != usize::MAX) {
            for g in 0..n {
                tc[k * n + g] = theta32[b * n + g].max(super::likelihood::THETA_MIN as f32);
                ti[k * n + g] = 1.0 / tc[k * n + g];
            }
        }
        ThetaTables { slot, tc, ti, n }
    }

    /// θ clamped and 1/θ of table row `b`.
    fn row(&self, b: u32) -> (&[f32], &[f32]) {
        let t0 = self.slot[b as usize] * self.n;
        (&self.tc[t0..t0 + self.n], &self.ti[t0..t0 + self.n])
    }
}

/// One scored row's NLL: the zero-count term of every gene, then for the genes with counts (`idx`,
/// `val`) the zero-count term swapped for the exact one; `count` is the row's count-only part (the same
/// for every decoded row scored against this cell).
#[allow(clippy::too_many_arguments)]
#[inline]
fn score_row(ro: &[f32], tc: &[f32], ti: &[f32], s: Option<(&[f32], &[f32])>, l: f32, count: f64, idx: &[u32], val: &[f32]) -> f64 {
    let zero = zero_sum(ro, tc, ti, s, l);
    let corr = count + count_correction(ro, tc, ti, s.map(|(a, _)| a), l, idx, val);
    -(zero + corr)
}

/// Decoder pre-activations to NLLs: [`split_softmax_fwd`] of `r` [rows×N], softplus of the logits and
/// [`likelihood_score_cached`] of row i against count row i, θ row `batch[i]`, library `lib[i]`. In f32 it runs
/// row by row, so one row's ρ and softplus stay in cache instead of three rows×N buffers going through
/// memory (the candidate choice decodes ~650 rows × 16,413 genes per target step). The same operations
/// per element as the three ops in turn: the same bits (tested).
#[allow(clippy::too_many_arguments)]
pub fn decode_score<F: Real>(
    dist: Distribution,
    nz_ptr: &[usize],
    nz_idx: &[u32],
    nz_val: &[f32],
    cached: Option<&[f64]>,
    r: &[F],
    group: &[u8],
    weight: [f64; 2],
    logit: Option<&[F]>,
    batch: &[u32],
    theta: &[F],
    lib: &[F],
    n: usize,
    nll: &mut [F],
) {
    let rows = batch.len();
    let idx: Vec<u32> = (0..rows as u32).collect();
    let logit = if dist == Distribution::Zinb { logit } else { None };
    let Some(nll32) = F::as_f32_mut(nll) else {
        let mut rho = vec![F::zero(); rows * n];
        split_softmax_fwd(r, group, weight, &mut rho, n);
        let sp = logit.map(softplus_all);
        let lg = logit.zip(sp.as_deref());
        return likelihood_score_cached(
            ScorePart::All,
            dist,
            nz_ptr,
            nz_idx,
            nz_val,
            None,
            cached,
            &idx,
            batch,
            &rho,
            theta,
            lg,
            lib,
            n,
            nll,
        );
    };
    let (r32, theta32) = (F::as_f32(r), F::as_f32(theta));
    let logit32 = logit.map(F::as_f32);
    let counts = cached_or_count_terms(cached, nz_ptr, nz_idx, nz_val, batch, &theta32, n);
    let tables = ThetaTables::new(&theta32, batch, n);
    nll32.par_iter_mut().enumerate().for_each_init(
        || (vec![0f32; n], vec![0f32; n]),
        |(rho, sp), (i, out)| {
            let r0 = i * n;
            simd::split_softmax_row(&r32[r0..r0 + n], group, weight, rho);
            let s = logit32.as_ref().map(|lg| {
                simd::softplus(&lg[r0..r0 + n], sp);
                (&lg[r0..r0 + n], &sp[..])
            });
            let (tc, ti) = tables.row(batch[i]);
            let (p0, p1) = (nz_ptr[i], nz_ptr[i + 1]);
            *out = score_row(rho, tc, ti, s, lib[i].d() as f32, counts[i], &nz_idx[p0..p1], &nz_val[p0..p1]) as f32;
        },
    );
}

crate::multiversion!(
    fn count_correction(ro: &[f32], tc: &[f32], ti: &[f32], s: Option<&[f32]>, l: f32, idx: &[u32], val: &[f32]) -> f64 => count_correction_body
);

/// Σ over the genes with counts (`idx`, `val`) of [exact term − zero-count term], less the count-only
/// part; softplus(s) cancels. The zero-count term is [`zero_term`]'s own expression, so that the swap
/// is exact. f32 fast math on gathered blocks of 64 genes so that the arithmetic vectorises; the sum
/// runs in f64 in gene order. `tc`, `ti`: θ clamped and its reciprocal.
#[inline(always)]
fn count_correction_body(ro: &[f32], tc: &[f32], ti: &[f32], s: Option<&[f32]>, l: f32, idx: &[u32], val: &[f32]) -> f64 {
    use super::fastmath as fm;
    use super::likelihood::{RHO_MAX, RHO_MIN};
    const B: usize = 64;
    let (mut r, mut t, mut it, mut sg, mut x, mut out) = ([0f32; B], [1f32; B], [1f32; B], [0f32; B], [0f32; B], [0f32; B]);
    let mut corr = 0f64;
    let mut p = 0;
    while p < idx.len() {
        let mut m = 0;
        while m < B && p < idx.len() {
            if val[p] as f64 >= 1e-7 {
                let g = idx[p] as usize;
                (r[m], t[m], it[m], x[m]) = (ro[g], tc[g], ti[g], val[p]);
                if let Some(s) = s {
                    sg[m] = s[g];
                }
                m += 1;
            }
            p += 1;
        }
        // All B lanes (stale lanes are finite and ignored), so the loop has no remainder.
        for k in 0..B {
            let mu = r[k].clamp(RHO_MIN as f32, RHO_MAX as f32) * l;
            let tl = -t[k] * fm::ln_1p_pos(mu * it[k]);
            // x·log(μ/(θ+μ)) = −x·log1p(θ/μ)
            let xl = x[k] * fm::ln_1p_pos(t[k] / mu);
            out[k] = match s {
                Some(_) => (sg[k] + tl) - xl - fm::softplus_poly(sg[k] + tl),
                // NB: x·log p with p clamped as in `zero_term` (the θ·log(1 − p) parts cancel).
                None => {
                    let q = mu * it[k];
                    if q < NB_Q_LOW {
                        x[k] * NB_LN_PMIN
                    } else if q > NB_Q_HIGH {
                        x[k] * NB_LN_PMAX
                    } else {
                        -xl
                    }
                }
            };
        }
        for &v in &out[..m] {
            corr += v as f64;
        }
    }
    corr
}

/// Σ_g [lgamma(x+θ) − lgamma(θ) − ln x!] over the genes with counts of each scored row, in f64. It
/// depends only on the counts and the batch's θ, so a run of identical rows (one cell against its k
/// candidates, or a target cell against its context chunk) is computed once: the scoring paths gather
/// the same cell's counts into consecutive rows.
pub fn count_terms(nz_ptr: &[usize], nz_idx: &[u32], nz_val: &[f32], batch: &[u32], theta32: &[f32], n: usize) -> Vec<f64> {
    use super::likelihood::THETA_MIN;
    let rows = batch.len();
    let same = |i: usize, j: usize| {
        batch[i] == batch[j]
            && nz_idx[nz_ptr[i]..nz_ptr[i + 1]] == nz_idx[nz_ptr[j]..nz_ptr[j + 1]]
            && nz_val[nz_ptr[i]..nz_ptr[i + 1]] == nz_val[nz_ptr[j]..nz_ptr[j + 1]]
    };
    let mut leader: Vec<usize> = Vec::with_capacity(rows);
    for i in 0..rows {
        leader.push(if i > 0 && same(i, leader[i - 1]) { leader[i - 1] } else { i });
    }
    let firsts: Vec<usize> = (0..rows).filter(|&i| leader[i] == i).collect();
    let sums: Vec<f64> = firsts
        .par_iter()
        .map(|&i| {
            let th = &theta32[batch[i] as usize * n..][..n];
            let mut s = 0f64;
            for p in nz_ptr[i]..nz_ptr[i + 1] {
                let x = nz_val[p] as f64;
                if x < 1e-7 {
                    continue;
                }
                let t = th[nz_idx[p] as usize].max(THETA_MIN as f32) as f64;
                s += super::special::lgamma_ratio(x, t) - super::special::ln_factorial(x);
            }
            s
        })
        .collect();
    let mut out = vec![0f64; rows];
    let mut k = 0;
    for i in 0..rows {
        if leader[i] == i {
            out[i] = sums[k];
            k += 1;
        } else {
            out[i] = out[leader[i]];
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Gaussian posterior terms.

/// z = μ + e^{ls}·ε (element-wise).
pub fn reparam_fwd<F: Real>(mu: &[F], ls: &[F], eps: &[F], z: &mut [F]) {
    for i in 0..z.len() {
        z[i] = mu[i] + ls[i].exp() * eps[i];
    }
}

/// dμ += dz, dls += dz·e^{ls}·ε.
pub fn reparam_bwd<F: Real>(dz: &[F], ls: &[F], eps: &[F], dmu: &mut [F], dls: &mut [F]) {
    for i in 0..dz.len() {
        dmu[i] = dmu[i] + dz[i];
        dls[i] = dls[i] + dz[i] * ls[i].exp() * eps[i];
    }
}

/// KL(N(μ, e^{2ls}) ‖ N(0, 1)) per row of [B×L]: 0.5·Σ(μ² + e^{2ls} − 1 − 2ls).
/// With `scale`, writes dμ = scale·μ and dls = scale·(e^{2ls} − 1) (overwriting).
pub fn kl_normal_fwd_bwd<F: Real>(mu: &[F], ls: &[F], l: usize, kl: &mut [F], grads: Option<(f64, &mut [F], &mut [F])>) {
    for (i, k) in kl.iter_mut().enumerate() {
        let mut s = 0f64;
        for j in i * l..(i + 1) * l {
            let (m, v) = (mu[j].d(), ls[j].d());
            s += 0.5 * (m * m + (2.0 * v).exp() - 1.0 - 2.0 * v);
        }
        *k = F::f(s);
    }
    if let Some((scale, dmu, dls)) = grads {
        for j in 0..mu.len() {
            dmu[j] = F::f(scale * mu[j].d());
            dls[j] = F::f(scale * ((2.0 * ls[j].d()).exp() - 1.0));
        }
    }
}

/// KL of the library posterior N(m, e^{2ls}) against the batch prior N(pm, ps²), per cell (spec §5):
/// log ps − ls + ((m − pm)² + e^{2ls} − ps²)/max(2ps², 1e-7). Gradients scaled like `kl_normal_fwd_bwd`.
#[allow(clippy::too_many_arguments)]
pub fn kl_library_fwd_bwd<F: Real>(m: &[F], ls: &[F], pm: &[F], ps: &[F], kl: &mut [F], grads: Option<(f64, &mut [F], &mut [F])>) {
    let den = |p: f64| (2.0 * p * p).max(1e-7);
    for i in 0..kl.len() {
        let (mi, li, pmi, psi) = (m[i].d(), ls[i].d(), pm[i].d(), ps[i].d());
        kl[i] = F::f(psi.ln() - li + ((mi - pmi).powi(2) + (2.0 * li).exp() - psi * psi) / den(psi));
    }
    if let Some((scale, dm, dls)) = grads {
        for i in 0..kl.len() {
            let (mi, li, pmi, psi) = (m[i].d(), ls[i].d(), pm[i].d(), ps[i].d());
            dm[i] = F::f(scale * 2.0 * (mi - pmi) / den(psi));
            dls[i] = F::f(scale * (-1.0 + 2.0 * (2.0 * li).exp() / den(psi)));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Adam exactly as PyTorch (defaults lr 1e-3, betas 0.9/0.999, eps 1e-8, no weight decay):
// m ← β1 m + (1−β1) g; v ← β2 v + (1−β2) g²; p ← p − lr·(m/(1−β1^t)) / (√v/√(1−β2^t) + eps).

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }
}

crate::multiversion!(fn adam_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: [f32; 7]) -> bool => adam_chunk_body);

#[inline(always)]
fn adam_chunk_body(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: [f32; 7]) -> bool {
    let [b1, one_b1, b2, one_b2, step, sq, eps] = c;
    let n = p.len();
    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
    // Non-finite gradients (all exponent bits set) are noted on the way: the divergence check then
    // needs no pass of its own over every gradient.
    let mut bad = 0u32;
    for i in 0..n {
        m[i] = b1 * m[i] + one_b1 * g[i];
        v[i] = b2 * v[i] + one_b2 * g[i] * g[i];
        p[i] -= step * m[i] / (v[i].sqrt() / sq + eps);
        bad |= (g[i].to_bits() & 0x7f80_0000 == 0x7f80_0000) as u32;
    }
    bad == 0
}

/// One Adam update; returns whether every gradient was finite (the update is applied either way).
pub fn adam_step<F: Real>(cfg: &AdamConfig, t: u64, p: &mut [F], g: &[F], m: &mut [F], v: &mut [F]) -> bool {
    let bc1 = 1.0 - cfg.beta1.powi(t as i32);
    let bc2 = 1.0 - cfg.beta2.powi(t as i32);
    let (b1, b2) = (F::f(cfg.beta1), F::f(cfg.beta2));
    let (one_b1, one_b2) = (F::f(1.0 - cfg.beta1), F::f(1.0 - cfg.beta2));
    let step = F::f(cfg.lr / bc1);
    let sq = F::f(bc2.sqrt());
    let eps = F::f(cfg.eps);
    if let (Some(p32), Some(m32), Some(v32)) = (F::as_f32_mut(p), F::as_f32_mut(m), F::as_f32_mut(v)) {
        // The same operations in the same order, on chunks the compiler vectorises.
        let g32 = F::as_f32(g);
        let c = [b1.d() as f32, one_b1.d() as f32, b2.d() as f32, one_b2.d() as f32, step.d() as f32, sq.d() as f32, eps.d() as f32];
        const CH: usize = 1 << 14;
        // `reduce`, not `all`: every chunk must be updated.
        return p32
            .par_chunks_mut(CH)
            .zip(g32.par_chunks(CH))
            .zip(m32.par_chunks_mut(CH))
            .zip(v32.par_chunks_mut(CH))
            .map(|(((p, g), m), v)| adam_chunk(p, g, m, v, c))
            .reduce(|| true, |a, b| a && b);
    }
    p.par_iter_mut().zip(g.par_iter()).zip(m.par_iter_mut()).zip(v.par_iter_mut()).for_each(|(((p, &g), m), v)| {
        *m = b1 * *m + one_b1 * g;
        *v = b2 * *v + one_b2 * g * g;
        *p = *p - step * *m / (v.sqrt() / sq + eps);
    });
    g.par_iter().all(|x| x.d().is_finite())
}
