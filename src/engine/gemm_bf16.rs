//! bf16 GEMM with f32 accumulation on AVX512-BF16 (`vdpbf16ps`: 32 products per instruction, twice an
//! f32 FMA's), for the forward-only decoding whose output is only ranked: the candidate choice and the
//! label transfer (see [`super::precision`]). Same blocking as [`super::gemm512`], with k taken in pairs:
//! A and B are rounded to bf16 (round to nearest even) while they are packed, each packed dword holding
//! the pair (k = 2p, 2p + 1) of one row of A or one column of B.
//!
//! Error: each product a·b carries the two inputs' bf16 rounding (≤ 2^-8 relative each); the sum runs
//! in f32. For C = Σ_p a_p·b_p, |C_bf16 − C| ≤ (2·2^-8 + 2^-16 + k·2^-24)·Σ_p |a_p·b_p| (tested).
//!
//! Every element of C is one chain over the k pairs in order, restarted and added at the same KC
//! boundaries whatever the tile or thread: results do not depend on the thread count.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::gemm512::{MR, NR, Out, View, empty_product, split_c, store_tile};

/// k per block (even).
const KC: usize = 384;
const MC: usize = 16 * MR;
const NC: usize = 16 * NR;

/// f32 bits rounded to the bf16 in the upper 16 bits (round to nearest even; inputs are finite).
#[inline(always)]
fn round_hi(bits: u32) -> u32 {
    bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) & 0xffff_0000
}

/// One packed dword: bf16(lo) in the low half, bf16(hi) in the high half.
#[inline(always)]
pub(super) fn pair(lo: f32, hi: f32) -> u32 {
    (round_hi(lo.to_bits()) >> 16) | round_hi(hi.to_bits())
}

/// f32 → bf16 → f32, round to nearest even: what the kernel multiplies (tests compare with `half`).
pub fn round_to_bf16(x: f32) -> f32 {
    f32::from_bits(round_hi(x.to_bits()))
}

/// Whether this CPU runs a bf16 GEMM: AMX tiles ([`super::gemm_amx`]) or this module's AVX512-BF16
/// kernel (AVX-512 enabled at the current SIMD level, and AVX512-BF16).
pub fn available() -> bool {
    kernel_name().is_some()
}

/// Whether this module's own kernel (AVX512-BF16 dot products) runs here.
pub fn avx512_bf16() -> bool {
    super::gemm512::available() && std::arch::is_x86_feature_detected!("avx512bf16")
}

/// Which bf16 kernel [`gemm`] runs here: `"amx"`, `"avx512-bf16"`, or `None`.
pub fn kernel_name() -> Option<&'static str> {
    if super::gemm_amx::available() {
        Some("amx")
    } else if avx512_bf16() {
        Some("avx512-bf16")
    } else {
        None
    }
}

/// C[m×n] (row stride `rsc`) = A[m×k]·B[k×n] + (C if `acc`) with bf16 inputs, split over rayon tasks:
/// on the AMX tiles where [`super::gemm_amx`] is in use, else with AVX512-BF16 dot products.
///
/// # Safety
/// The views must address valid m×k and k×n matrices of finite values, `c` a valid m×n matrix with row
/// stride `rsc` that does not alias them, and [`available`] must be true.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm(m: usize, k: usize, n: usize, a: View, b: View, acc: bool, c: *mut f32, rsc: usize) {
    if m == 0 || n == 0 {
        return;
    }
    if super::gemm_amx::available() {
        // SAFETY: the caller's contract, and AMX is in use.
        return unsafe { super::gemm_amx::gemm(m, k, n, a, b, acc, c, rsc) };
    }
    let out = Out(c);
    // SAFETY: each task's block of C is its own; A and B are only read.
    split_c(m, n, &|i0, i1, j0, j1| unsafe {
        gemm_serial(i1 - i0, k, j1 - j0, a.offset(i0, 0), b.offset(0, j0), acc, out.at(i0 * rsc + j0), rsc)
    });
}

/// Rows of A packed at once (all of a task's rows up to this many): A is then packed once per k block
/// instead of once per column block of B, which matters here because packing rounds every value.
const M_PACKED: usize = 8 * MC;

#[allow(clippy::too_many_arguments)]
unsafe fn gemm_serial(m: usize, k: usize, n: usize, a: View, b: View, acc: bool, c: *mut f32, rsc: usize) {
    thread_local! {
        static BUF: std::cell::RefCell<(Vec<u32>, Vec<u32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    }
    if k == 0 {
        // SAFETY: C is the caller's m×n block.
        return unsafe { empty_product(m, n, acc, c, rsc) };
    }
    BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        let (pa, pb) = &mut *buf;
        pa.resize(M_PACKED * KC / 2, 0);
        pb.resize(KC / 2 * NC, 0);
        for im in (0..m).step_by(M_PACKED) {
            let mm = M_PACKED.min(m - im);
            for p0 in (0..k).step_by(KC) {
                let kc = KC.min(k - p0);
                let kp = kc.div_ceil(2);
                let add = acc || p0 > 0;
                // SAFETY (packs and kernel): indices stay inside the views and C's block.
                unsafe { pack_a(mm, kc, a, im, p0, pa) };
                for j0 in (0..n).step_by(NC) {
                    let nc = NC.min(n - j0);
                    unsafe { pack_b(kc, kp, nc, b, p0, j0, pb) };
                    for jp in 0..nc.div_ceil(NR) {
                        let cols = NR.min(nc - jp * NR);
                        for ip in 0..mm.div_ceil(MR) {
                            let rows = MR.min(mm - ip * MR);
                            unsafe {
                                kernel(
                                    kp,
                                    pa.as_ptr().add(ip * MR * kp),
                                    pb.as_ptr().add(jp * NR * kp),
                                    c.add((im + ip * MR) * rsc + j0 + jp * NR),
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

/// Rows i0..i0+mc, columns p0..p0+kc of A into 12-row panels (consecutive) of ⌈kc/2⌉ × 12 packed pairs, zero-padded
/// (an odd kc pairs its last column with 0).
unsafe fn pack_a(mc: usize, kc: usize, a: View, i0: usize, p0: usize, pa: &mut [u32]) {
    let kp = kc.div_ceil(2);
    for ip in 0..mc.div_ceil(MR) {
        let panel = &mut pa[ip * MR * kp..(ip + 1) * MR * kp];
        let rows = MR.min(mc - ip * MR);
        // SAFETY: (i0 + ip·MR + r, p0 + p) is inside A for r < rows, p < kc.
        let base = unsafe { a.ptr.offset((i0 + ip * MR) as isize * a.rs + p0 as isize * a.cs) };
        let at = |r: usize, p: usize| if p < kc { unsafe { *base.offset(r as isize * a.rs + p as isize * a.cs) } } else { 0.0 };
        for r in 0..MR {
            if r >= rows {
                (0..kp).for_each(|q| panel[q * MR + r] = 0);
            } else if a.cs == 1 {
                // A row is contiguous: its pairs are adjacent values.
                let row = unsafe { std::slice::from_raw_parts(base.offset(r as isize * a.rs), kc) };
                let mut it = row.chunks_exact(2);
                for (q, pr) in (&mut it).enumerate() {
                    panel[q * MR + r] = pair(pr[0], pr[1]);
                }
                if let [last] = it.remainder() {
                    panel[(kp - 1) * MR + r] = pair(*last, 0.0);
                }
            } else {
                for q in 0..kp {
                    panel[q * MR + r] = pair(at(r, 2 * q), at(r, 2 * q + 1));
                }
            }
        }
    }
}

/// Rows p0..p0+kc, columns j0..j0+nc of B into 32-wide panels of `kp` × 32 packed pairs (kp ≥ ⌈kc/2⌉:
/// the AMX kernel pads k to whole tiles), zero-padded.
pub(super) unsafe fn pack_b(kc: usize, kp: usize, nc: usize, b: View, p0: usize, j0: usize, pb: &mut [u32]) {
    for jp in 0..nc.div_ceil(NR) {
        let cols = NR.min(nc - jp * NR);
        let panel = &mut pb[jp * NR * kp..(jp + 1) * NR * kp];
        // SAFETY: (p0 + p, j0 + jp·NR + j) is inside B for p < kc, j < cols.
        let base = unsafe { b.ptr.offset(p0 as isize * b.rs + (j0 + jp * NR) as isize * b.cs) };
        for q in 0..kp {
            let dst = &mut panel[q * NR..(q + 1) * NR];
            let (p, p1) = (2 * q, 2 * q + 1);
            if b.cs == 1 && cols == NR && p1 < kc {
                // Contiguous rows: a loop the compiler vectorises.
                let (r0, r1) = unsafe {
                    (
                        std::slice::from_raw_parts(base.offset(p as isize * b.rs), NR),
                        std::slice::from_raw_parts(base.offset(p1 as isize * b.rs), NR),
                    )
                };
                for j in 0..NR {
                    dst[j] = pair(r0[j], r1[j]);
                }
            } else {
                let at = |p: usize, j: usize| {
                    if p < kc && j < cols { unsafe { *base.offset(p as isize * b.rs + j as isize * b.cs) } } else { 0.0 }
                };
                for (j, d) in dst.iter_mut().enumerate() {
                    *d = pair(at(p, j), at(p1, j));
                }
            }
        }
    }
}

/// The 12 × 32 tile over `kp` packed pairs: acc = Σ_q dpbf16(a_q, b_q), then C = acc or C += acc, for
/// the first `rows` rows and `cols` columns.
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(kp: usize, a: *const u32, b: *const u32, c: *mut f32, rsc: usize, rows: usize, cols: usize, add: bool) {
    let mut t = [[_mm512_setzero_ps(); 2]; MR];
    for q in 0..kp {
        // SAFETY: the panels hold kp × MR and kp × NR dwords.
        let (b0, b1) = unsafe {
            (
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(b.add(q * NR) as *const _)),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(b.add(q * NR + 16) as *const _)),
            )
        };
        for (r, tr) in t.iter_mut().enumerate() {
            // SAFETY: both are 512-bit vectors; the dword holds two bf16 values.
            let av = unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(*a.add(q * MR + r) as i32)) };
            tr[0] = _mm512_dpbf16_ps(tr[0], av, b0);
            tr[1] = _mm512_dpbf16_ps(tr[1], av, b1);
        }
    }
    // SAFETY: as the caller's contract: C's tile has `rows` rows of `cols` columns at stride rsc.
    unsafe { store_tile(&t, c, rsc, rows, cols, add) };
}
