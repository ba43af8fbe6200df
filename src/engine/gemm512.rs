//! f32 GEMM with an AVX-512 micro-kernel, for CPUs that execute 512-bit FMAs at full width (on this
//! project's cores a 512-bit FMA loop runs at 2x the rate of a 256-bit one, and matrixmultiply has
//! only 256-bit kernels). Blocked the usual way (BLIS): k in blocks of KC, columns of B in blocks
//! of NC packed into 32-wide panels, rows of A in blocks of MC packed into 12-row panels, and a
//! 12 x 32 register tile.
//!
//! Every element of C is one FMA chain over p = 0..k in order, restarted and added to C at the same
//! KC boundaries whatever the tile, task or thread: results do not depend on the thread count or on
//! how C is split.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

pub(crate) const MR: usize = 12;
pub(crate) const NR: usize = 32;
const KC: usize = 384;
const MC: usize = 16 * MR;
const NC: usize = 16 * NR;
/// Products with k of at least this many and C of at most this many elements split k instead of C.
const K_SPLIT_MIN: usize = 8 * KC;
const K_SPLIT_MAX_C: usize = 512 * 512;

/// Raw matrix view: element (i, j) at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
pub struct View {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}
impl View {
    /// The view starting `i` rows and `j` columns further (pointer arithmetic only).
    pub(crate) fn offset(self, i: usize, j: usize) -> View {
        View { ptr: self.ptr.wrapping_offset(i as isize * self.rs + j as isize * self.cs), ..self }
    }
}
// SAFETY: read-only views shared between rayon tasks that only read them.
unsafe impl Send for View {}
unsafe impl Sync for View {}

#[derive(Clone, Copy)]
pub(crate) struct Out(pub(crate) *mut f32);
// SAFETY: each task writes a disjoint block of C.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}
impl Out {
    pub(crate) fn at(self, off: usize) -> *mut f32 {
        self.0.wrapping_add(off)
    }
}

/// k = 0: A·B is zero, so C[m×n] (row stride `rsc`) stays (`acc`) or is cleared.
///
/// # Safety
/// `c` must be a valid m×n matrix with row stride `rsc`.
pub(crate) unsafe fn empty_product(m: usize, n: usize, acc: bool, c: *mut f32, rsc: usize) {
    if !acc {
        for i in 0..m {
            // SAFETY: row i of C has n elements.
            unsafe { std::ptr::write_bytes(c.add(i * rsc), 0, n) };
        }
    }
}

/// Whether this module can run here.
pub fn available() -> bool {
    super::simd::level() == super::simd::Level::Avx512
}

/// C[m×n] (row stride `rsc`, contiguous rows) = A[m×k]·B[k×n] + (C if `acc`), split over rayon tasks.
///
/// # Safety
/// The views must address valid m×k and k×n matrices, `c` a valid m×n matrix with row stride `rsc`
/// that does not alias them, and [`available`] must be true.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm(m: usize, k: usize, n: usize, a: View, b: View, acc: bool, c: *mut f32, rsc: usize) {
    use rayon::prelude::*;
    if m == 0 || n == 0 {
        return;
    }
    let out = Out(c);
    if k >= K_SPLIT_MIN && m * n <= K_SPLIT_MAX_C {
        // A small C over a long k (the decoder head's input gradient, 128 x 300 over ~20,000 genes):
        // too few tiles of C to share, so the KC blocks are the tasks. Each block's product is the
        // same chain from zero that the serial loop computes, and the products are added to C in
        // block order: the result is bit-identical to the serial loop's.
        let parts: Vec<Vec<f32>> = (0..k.div_ceil(KC))
            .into_par_iter()
            .map(|blk| {
                let (p0, kc) = (blk * KC, KC.min(k - blk * KC));
                let mut part = vec![0f32; m * n];
                // SAFETY: columns p0..p0+kc of A and rows p0..p0+kc of B exist; `part` is m×n.
                unsafe { gemm_serial(m, kc, n, a.offset(0, p0), b.offset(p0, 0), false, part.as_mut_ptr(), n) };
                part
            })
            .collect();
        for (blk, part) in parts.iter().enumerate() {
            for i in 0..m {
                // SAFETY: row i of C has n elements at stride rsc.
                let row = unsafe { std::slice::from_raw_parts_mut(out.at(i * rsc), n) };
                let src = &part[i * n..(i + 1) * n];
                if blk == 0 && !acc {
                    row.copy_from_slice(src);
                } else {
                    row.iter_mut().zip(src).for_each(|(c, &p)| *c += p);
                }
            }
        }
        return;
    }
    // SAFETY: each task's block of C is its own; A and B are only read.
    split_c(m, n, &|i0, i1, j0, j1| unsafe {
        gemm_serial(i1 - i0, k, j1 - j0, a.offset(i0, 0), b.offset(0, j0), acc, out.at(i0 * rsc + j0), rsc)
    });
}

/// Splits C [m×n] into rayon tasks along its longer side (columns in multiples of NR, rows in multiples
/// of MR, about two tasks per thread) and calls `task(i0, i1, j0, j1)` for each block. Shared by the
/// f32 and bf16 GEMMs, which use the same register tile.
pub(crate) fn split_c(m: usize, n: usize, task: &(dyn Fn(usize, usize, usize, usize) + Sync)) {
    use rayon::prelude::*;
    let threads = rayon::current_num_threads();
    if n >= m {
        let per = n.div_ceil(threads * 2).div_ceil(NR).max(1) * NR;
        (0..n.div_ceil(per)).into_par_iter().for_each(|t| task(0, m, t * per, ((t + 1) * per).min(n)));
    } else {
        let per = m.div_ceil(threads * 2).div_ceil(MR).max(1) * MR;
        (0..m.div_ceil(per)).into_par_iter().for_each(|t| task(t * per, ((t + 1) * per).min(m), 0, n));
    }
}

/// One task's block, single-threaded.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_serial(m: usize, k: usize, n: usize, a: View, b: View, acc: bool, c: *mut f32, rsc: usize) {
    thread_local! {
        static BUF: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    }
    BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        let (pa, pb) = &mut *buf;
        pa.resize(MC * KC, 0.0);
        pb.resize(KC * NC, 0.0);
        if k == 0 {
            // SAFETY: C is the caller's m×n block.
            return unsafe { empty_product(m, n, acc, c, rsc) };
        }
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            let add = acc || p0 > 0;
            for j0 in (0..n).step_by(NC) {
                let nc = NC.min(n - j0);
                // SAFETY (both packs and the kernel): indices stay inside the views and C's block.
                unsafe { pack_b(kc, nc, b, p0, j0, pb) };
                for i0 in (0..m).step_by(MC) {
                    let mc = MC.min(m - i0);
                    unsafe { pack_a(mc, kc, a, i0, p0, pa) };
                    for jp in 0..nc.div_ceil(NR) {
                        let cols = NR.min(nc - jp * NR);
                        for ip in 0..mc.div_ceil(MR) {
                            let rows = MR.min(mc - ip * MR);
                            unsafe {
                                kernel(
                                    kc,
                                    pa.as_ptr().add(ip * MR * kc),
                                    pb.as_ptr().add(jp * NR * kc),
                                    c.add((i0 + ip * MR) * rsc + j0 + jp * NR),
                                    rsc,
                                    rows,
                                    cols,
                                    add,
                                )
                            };
                        }
                    }
                }
            }
        }
    });
}

/// Rows i0..i0+mc, columns p0..p0+kc of A into 12-row panels, each kc × 12 (p-major), zero-padded.
unsafe fn pack_a(mc: usize, kc: usize, a: View, i0: usize, p0: usize, pa: &mut [f32]) {
    for ip in 0..mc.div_ceil(MR) {
        let panel = &mut pa[ip * MR * kc..(ip + 1) * MR * kc];
        let rows = MR.min(mc - ip * MR);
        // SAFETY: (i0 + ip·MR + r, p0 + p) is inside A for r < rows, p < kc.
        let base = unsafe { a.ptr.offset((i0 + ip * MR) as isize * a.rs + p0 as isize * a.cs) };
        if a.cs == 1 && rows == MR {
            // A row-major: 16 values of each of the 12 rows, transposed in registers (the scalar
            // scatter below ran at about one value per cycle: a tenth of the head input gradient).
            let mut p = 0;
            while p + 16 <= kc {
                // SAFETY: rows r < 12 of A hold columns p0 + p .. p0 + p + 16; the panel holds
                // (p + 16) × 12 values.
                unsafe { pack_a_16(base.add(p), a.rs, panel.as_mut_ptr().add(p * MR)) };
                p += 16;
            }
            for r in 0..MR {
                let row = unsafe { base.offset(r as isize * a.rs) };
                for q in p..kc {
                    panel[q * MR + r] = unsafe { *row.add(q) };
                }
            }
        } else if a.rs == 1 {
            // A transposed in memory: a panel row (fixed p) is contiguous.
            for p in 0..kc {
                let src = unsafe { std::slice::from_raw_parts(base.offset(p as isize * a.cs), rows) };
                panel[p * MR..p * MR + rows].copy_from_slice(src);
                panel[p * MR + rows..(p + 1) * MR].fill(0.0);
            }
        } else {
            for r in 0..MR {
                if r < rows {
                    let row = unsafe { base.offset(r as isize * a.rs) };
                    for p in 0..kc {
                        panel[p * MR + r] = unsafe { *row.offset(p as isize * a.cs) };
                    }
                } else {
                    for p in 0..kc {
                        panel[p * MR + r] = 0.0;
                    }
                }
            }
        }
    }
}

/// Rows p0..p0+kc, columns j0..j0+nc of B into 32-wide panels, each kc × 32 (p-major), zero-padded.
unsafe fn pack_b(kc: usize, nc: usize, b: View, p0: usize, j0: usize, pb: &mut [f32]) {
    for jp in 0..nc.div_ceil(NR) {
        let cols = NR.min(nc - jp * NR);
        let panel = &mut pb[jp * NR * kc..(jp + 1) * NR * kc];
        // SAFETY: (p0 + p, j0 + jp·NR + j) is inside B for p < kc, j < cols.
        let base = unsafe { b.ptr.offset(p0 as isize * b.rs + (j0 + jp * NR) as isize * b.cs) };
        if b.rs == 1 && b.cs != 1 && cols == NR {
            // B transposed in memory, a whole panel: 16 values of 16 columns at a time, transposed in
            // registers (the scalar scatter below ran at about one value per cycle: a quarter of the
            // head input gradient, whose B is the weight transposed).
            let mut p = 0;
            while p + 16 <= kc {
                for half in 0..2 {
                    // SAFETY: columns half·16 .. half·16 + 16 of the panel hold rows p .. p + 16;
                    // the panel holds (p + 16) × 32 values.
                    unsafe { pack_b_16(base.offset((half * 16) as isize * b.cs).add(p), b.cs, panel.as_mut_ptr().add(p * NR + half * 16)) };
                }
                p += 16;
            }
            for j in 0..NR {
                let col = unsafe { base.offset(j as isize * b.cs) };
                for q in p..kc {
                    panel[q * NR + j] = unsafe { *col.add(q) };
                }
            }
        } else if b.rs == 1 && b.cs != 1 {
            // B transposed in memory: read each column contiguously, scatter into the panel.
            for j in 0..NR {
                if j < cols {
                    let col = unsafe { std::slice::from_raw_parts(base.offset(j as isize * b.cs), kc) };
                    for (p, &v) in col.iter().enumerate() {
                        panel[p * NR + j] = v;
                    }
                } else {
                    for p in 0..kc {
                        panel[p * NR + j] = 0.0;
                    }
                }
            }
        } else {
            for p in 0..kc {
                let dst = &mut panel[p * NR..(p + 1) * NR];
                let src = unsafe { base.offset(p as isize * b.rs) };
                if b.cs == 1 {
                    dst[..cols].copy_from_slice(unsafe { std::slice::from_raw_parts(src, cols) });
                } else {
                    for (j, d) in dst[..cols].iter_mut().enumerate() {
                        *d = unsafe { *src.offset(j as isize * b.cs) };
                    }
                }
                dst[cols..].fill(0.0);
            }
        }
    }
}

/// A 16 × 16 block transposed in registers: out[q] lane l = rows[l] lane q. Four rounds that swap the
/// off-diagonal b × b blocks of every 2b × 2b block (b = 8, 4, 2, 1), two-source permutes throughout.
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) unsafe fn transpose16(rows: &mut [__m512; 16]) {
    for (s, b) in [8usize, 4, 2, 1].into_iter().enumerate() {
        // SAFETY: 16 i32 indices each.
        let (lo, hi) = unsafe { (_mm512_loadu_si512(SWAP_LO[s].as_ptr().cast()), _mm512_loadu_si512(SWAP_HI[s].as_ptr().cast())) };
        for i in (0..16).filter(|i| i & b == 0) {
            let (u, v) = (rows[i], rows[i + b]);
            rows[i] = _mm512_permutex2var_ps(u, lo, v);
            rows[i + b] = _mm512_permutex2var_ps(u, hi, v);
        }
    }
}

/// [`transpose16`]'s permute indices for b = 8, 4, 2, 1: lane l of the upper row of a pair takes its
/// own lane l where l & b == 0, else the lower row's lane l − b (index 16 + l − b); the lower row takes
/// the upper row's lane l + b, else its own lane l.
const SWAP_LO: [[i32; 16]; 4] = swap_indices(false);
const SWAP_HI: [[i32; 16]; 4] = swap_indices(true);
const fn swap_indices(upper_from_lower: bool) -> [[i32; 16]; 4] {
    let mut out = [[0i32; 16]; 4];
    let mut s = 0;
    while s < 4 {
        let b = 8 >> s;
        let mut l = 0;
        while l < 16 {
            out[s][l] = match (upper_from_lower, l & b == 0) {
                (false, true) => l as i32,
                (false, false) => (16 + l - b) as i32,
                (true, true) => (l + b) as i32,
                (true, false) => (16 + l) as i32,
            };
            l += 1;
        }
        s += 1;
    }
    out
}

/// 16 consecutive values of each of 12 rows (stride `rs`) into 16 panel rows of 12 (p-major).
///
/// # Safety
/// `src` + r·rs + 0..16 readable for r < 12; `dst` + 0..192 writable; AVX-512F present.
#[target_feature(enable = "avx512f")]
unsafe fn pack_a_16(src: *const f32, rs: isize, dst: *mut f32) {
    let mut t = [_mm512_setzero_ps(); 16];
    for (r, v) in t.iter_mut().enumerate().take(MR) {
        *v = unsafe { _mm512_loadu_ps(src.offset(r as isize * rs)) };
    }
    unsafe { transpose16(&mut t) };
    for (q, v) in t.iter().enumerate() {
        unsafe { _mm512_mask_storeu_ps(dst.add(q * MR), 0x0fff, *v) };
    }
}

/// 16 consecutive values of each of 16 columns (column stride `cs`, contiguous within a column) into
/// 16 panel rows of a 32-wide panel (16 values each, at stride NR).
///
/// # Safety
/// `src` + j·cs + 0..16 readable for j < 16; `dst` + q·NR + 0..16 writable for q < 16; AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn pack_b_16(src: *const f32, cs: isize, dst: *mut f32) {
    let mut t = [_mm512_setzero_ps(); 16];
    for (j, v) in t.iter_mut().enumerate() {
        let col = unsafe { src.offset(j as isize * cs) };
        // Four lines ahead in each column: 300 columns far apart are more streams than the hardware
        // prefetcher follows (head input gradient 9.8 -> 8.3 ms with both GEMMs of the backward).
        _mm_prefetch::<_MM_HINT_T0>(col.wrapping_add(64).cast());
        *v = unsafe { _mm512_loadu_ps(col) };
    }
    unsafe { transpose16(&mut t) };
    for (q, v) in t.iter().enumerate() {
        unsafe { _mm512_storeu_ps(dst.add(q * NR), *v) };
    }
}

/// The 12 × 32 tile: acc = Σ_p a[p]·b[p] as one FMA chain per element, then C = acc or C += acc,
/// for the first `rows` rows and `cols` columns.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(kc: usize, a: *const f32, b: *const f32, c: *mut f32, rsc: usize, rows: usize, cols: usize, add: bool) {
    let mut t = [[_mm512_setzero_ps(); 2]; MR];
    for p in 0..kc {
        // SAFETY: the panels hold kc × MR and kc × NR values.
        let (b0, b1) = unsafe { (_mm512_loadu_ps(b.add(p * NR)), _mm512_loadu_ps(b.add(p * NR + 16))) };
        for (r, tr) in t.iter_mut().enumerate() {
            let av = _mm512_set1_ps(unsafe { *a.add(p * MR + r) });
            tr[0] = _mm512_fmadd_ps(av, b0, tr[0]);
            tr[1] = _mm512_fmadd_ps(av, b1, tr[1]);
        }
    }
    // SAFETY: as the caller's contract: C's tile has `rows` rows of `cols` columns at stride rsc.
    unsafe { store_tile(&t, c, rsc, rows, cols, add) };
}

/// C = t or C += t for the first `rows` rows and `cols` columns of a 12 × 32 tile of f32 sums (both
/// GEMMs' kernels end with it).
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) unsafe fn store_tile(t: &[[__m512; 2]; MR], c: *mut f32, rsc: usize, rows: usize, cols: usize, add: bool) {
    let mask = |lo: usize| -> __mmask16 {
        let w = cols.saturating_sub(lo).min(16);
        if w == 16 { 0xffff } else { ((1u32 << w) - 1) as __mmask16 }
    };
    let (m0, m1) = (mask(0), mask(16));
    for (r, tr) in t.iter().enumerate().take(rows) {
        // SAFETY: the masks keep the loads and stores inside row r's `cols` columns.
        unsafe {
            let cr = c.add(r * rsc);
            let (mut v0, mut v1) = (tr[0], tr[1]);
            if add {
                v0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, cr), v0);
                v1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, cr.wrapping_add(16)), v1);
            }
            _mm512_mask_storeu_ps(cr, m0, v0);
            _mm512_mask_storeu_ps(cr.wrapping_add(16), m1, v1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose16_transposes() {
        if !available() {
            eprintln!("SKIPPED transpose16_transposes: this CPU has no AVX-512 (the GEMM tests cover the portable path)");
            return;
        }
        let m: Vec<f32> = (0..256).map(|v| v as f32).collect();
        let mut out = [0f32; 256];
        // SAFETY: AVX-512F is present (checked); 16 rows of 16 values in and out.
        unsafe {
            let mut t: [__m512; 16] = std::array::from_fn(|r| _mm512_loadu_ps(m.as_ptr().add(16 * r)));
            transpose16(&mut t);
            for (q, v) in t.iter().enumerate() {
                _mm512_storeu_ps(out.as_mut_ptr().add(16 * q), *v);
            }
        }
        for q in 0..16 {
            for l in 0..16 {
                assert_eq!(out[16 * q + l], m[16 * l + q], "out[{q}][{l}]");
            }
        }
    }
}
