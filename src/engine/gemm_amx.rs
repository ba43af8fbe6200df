//! bf16 GEMM with f32 accumulation on Intel AMX tiles (`tdpbf16ps`: a 16 × 16 f32 tile += a 16-row
//! tile of 16 bf16 pairs times a tile of 16 pairs × 16 columns, 8,192 products per instruction), for
//! the same ranking GEMMs as [`super::gemm_bf16`], which dispatches here where the CPU has AMX-BF16.
//!
//! Layout: A is packed row-major in bf16 pairs (row r holds the pairs (k = 2q, 2q + 1), q padded to a
//! multiple of 16 with zeros), B in [`super::gemm_bf16`]'s 32-column panels of pairs, so one tile row is
//! 64 bytes of either. A 32 × 32 block of C lives in four accumulator tiles (tmm0-3) over all k pairs of
//! a k block; A's two row tiles are tmm4-5, B's two column tiles tmm6-7.
//!
//! The tile program is written once over [`Tiles`]: [`Hw`] runs it on the CPU (inline assembly; stable
//! Rust has no AMX intrinsics), [`Emu`] runs the same loads, products and stores on plain arrays with the
//! instruction's documented arithmetic (in order over the pairs, each product fused into the f32 sum,
//! bf16 denormals read as zero, f32 denormals flushed). The emulated path is tested on every machine;
//! the hardware path only where the CPU has AMX, and there it is checked against the emulation once per
//! process before it is used ([`status`]).
//!
//! Each element of C is one chain over the k pairs in order, restarted and added at the same `KC`
//! boundaries whatever the block or thread: results do not depend on the thread count.

use super::gemm_bf16::{pack_b, pair};
use super::gemm512::{NR, Out, View, empty_product, split_c};
use std::sync::OnceLock;

/// k per block (even; 256 pairs = 16 tile steps).
const KC: usize = 512;
/// Rows of C per tile block (two 16-row tiles).
const MB: usize = 32;
/// Columns of B packed at once.
const NC: usize = 16 * NR;
/// Rows of A packed at once (a multiple of `MB`).
const M_PACKED: usize = 48 * MB;
/// Pairs per tile row (64 bytes).
const TK: usize = 16;

/// Why AMX is or is not used in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// AMX-BF16 runs the bf16 GEMMs.
    Used,
    /// The CPU has no AMX-BF16 (or not the tile palette this kernel needs).
    NotOnThisCpu,
    /// `SCSPECIES_AMX=0`, or `SCSPECIES_SIMD` caps the SIMD level below AVX-512.
    Disabled,
    /// The kernel refused the process the tile state (`arch_prctl(ARCH_REQ_XCOMP_PERM)` failed).
    OsRefused,
    /// The hardware tiles disagreed with the emulation on the start-up check: not used.
    SelfCheckFailed,
}

impl Status {
    pub fn describe(self) -> &'static str {
        match self {
            Status::Used => "used (AMX-BF16 tiles)",
            Status::NotOnThisCpu => "not on this CPU",
            Status::Disabled => "disabled (SCSPECIES_AMX=0 or SCSPECIES_SIMD below avx512)",
            Status::OsRefused => "the OS refused the tile state (arch_prctl)",
            Status::SelfCheckFailed => "self-check against the emulation failed: not used",
        }
    }
}

/// Whether the CPU reports AMX-TILE and AMX-BF16 with a palette of at least 8 tiles of 16 rows × 64
/// bytes (CPUID leaves 7 and 0x1D), whatever the OS or the settings allow.
pub fn cpu_has_amx() -> bool {
    use std::arch::x86_64::__cpuid_count;
    // CPUID exists on every x86_64 CPU (safe to call on newer Rust); leaves above the maximum are not read.
    #[allow(unused_unsafe)]
    unsafe {
        if __cpuid_count(0, 0).eax < 0x1d {
            return false;
        }
        let f = __cpuid_count(7, 0).edx;
        let (bf16, tile) = (f >> 22 & 1 == 1, f >> 24 & 1 == 1);
        if !(bf16 && tile) || __cpuid_count(0x1d, 0).eax < 1 {
            return false;
        }
        let p = __cpuid_count(0x1d, 1);
        let (bytes_per_row, names, rows) = (p.ebx & 0xffff, p.ebx >> 16, p.ecx & 0xffff);
        bytes_per_row >= 64 && names >= 8 && rows >= 16
    }
}

/// Whether AMX is used for the bf16 GEMMs in this process (decided once: CPU, settings, OS permission,
/// then a small GEMM on the tiles against the emulation).
pub fn status() -> Status {
    static STATUS: OnceLock<Status> = OnceLock::new();
    *STATUS.get_or_init(|| {
        if !cpu_has_amx() {
            return Status::NotOnThisCpu;
        }
        if std::env::var("SCSPECIES_AMX").as_deref() == Ok("0") || !super::gemm512::available() {
            return Status::Disabled;
        }
        if !request_tile_data() {
            return Status::OsRefused;
        }
        if !self_check() {
            eprintln!(
                "WARNING: AMX tiles disagreed with their emulation on a start-up GEMM; bf16 GEMMs use AVX512-BF16 \
                 instead. Please report this CPU (lscpu)."
            );
            return Status::SelfCheckFailed;
        }
        Status::Used
    })
}

/// [`status`] is [`Status::Used`].
pub fn available() -> bool {
    status() == Status::Used
}

/// Linux gives a process the AMX tile state only on request (per process, for all its threads).
fn request_tile_data() -> bool {
    #[cfg(target_os = "linux")]
    {
        const SYS_ARCH_PRCTL: i64 = 158;
        const ARCH_REQ_XCOMP_PERM: u64 = 0x1023;
        const XFEATURE_XTILEDATA: u64 = 18;
        let ret: i64;
        // SAFETY: the arch_prctl system call reads no memory for this request; rcx and r11 are
        // clobbered by `syscall`.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") SYS_ARCH_PRCTL => ret,
                in("rdi") ARCH_REQ_XCOMP_PERM,
                in("rsi") XFEATURE_XTILEDATA,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            )
        };
        ret == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// A small GEMM with every edge (rows, columns and k not multiples of the blocks) on the tiles and in
/// the emulation; they may differ only by the f32 sums' rounding order.
fn self_check() -> bool {
    let (m, k, n) = (37, 75, 45);
    let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 250.0).collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i * 104_729 % 997) as f32 - 498.0) / 300.0).collect();
    let (va, vb) = (View { ptr: a.as_ptr(), rs: k as isize, cs: 1 }, View { ptr: b.as_ptr(), rs: n as isize, cs: 1 });
    let (mut hw, mut emu) = (vec![0f32; m * n], vec![0f32; m * n]);
    // SAFETY: the views and C address the vectors above; the CPU has AMX and the tile state is granted.
    unsafe {
        gemm_serial(&mut Hw, m, k, n, va, vb, false, hw.as_mut_ptr(), n);
        gemm_serial(&mut Emu::new(), m, k, n, va, vb, false, emu.as_mut_ptr(), n);
    }
    (0..m).all(|i| {
        (0..n).all(|j| {
            let mag: f64 = (0..k).map(|p| (a[i * k + p] as f64 * b[p * n + j] as f64).abs()).sum();
            let (x, y) = (hw[i * n + j] as f64, emu[i * n + j] as f64);
            (x - y).abs() <= 2.0 * (k as f64 + 2.0) * 2f64.powi(-24) * mag + 1e-30
        })
    })
}

/// C[m×n] (row stride `rsc`) = A[m×k]·B[k×n] + (C if `acc`) with bf16 inputs on the AMX tiles, split
/// over rayon tasks.
///
/// # Safety
/// The views must address valid m×k and k×n matrices of finite values, `c` a valid m×n matrix with row
/// stride `rsc` that does not alias them, and [`available`] must be true.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm(m: usize, k: usize, n: usize, a: View, b: View, acc: bool, c: *mut f32, rsc: usize) {
    if m == 0 || n == 0 {
        return;
    }
    let out = Out(c);
    // SAFETY: each task's block of C is its own; A and B are only read. A task runs its whole serial
    // GEMM without yielding to rayon, so no other task configures this thread's tiles meanwhile.
    split_c(m, n, &|i0, i1, j0, j1| unsafe {
        gemm_serial(&mut Hw, i1 - i0, k, j1 - j0, a.offset(i0, 0), b.offset(0, j0), acc, out.at(i0 * rsc + j0), rsc)
    });
}

/// The same GEMM through the emulated tiles (single-threaded): what the tests check the tile program
/// with on CPUs without AMX. A and B are row-major-or-strided slices as in [`super::ops::gemm`].
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub fn gemm_emulated(m: usize, k: usize, n: usize, a: &[f32], rsa: usize, csa: usize, b: &[f32], rsb: usize, csb: usize) -> Vec<f32> {
    let last =
        |rows: usize, cols: usize, rs: usize, cs: usize| if rows == 0 || cols == 0 { 0 } else { (rows - 1) * rs + (cols - 1) * cs + 1 };
    assert!(a.len() >= last(m, k, rsa, csa) && b.len() >= last(k, n, rsb, csb), "gemm_emulated: operands too short");
    let mut c = vec![0f32; m * n];
    if m == 0 || n == 0 {
        return c;
    }
    let va = View { ptr: a.as_ptr(), rs: rsa as isize, cs: csa as isize };
    let vb = View { ptr: b.as_ptr(), rs: rsb as isize, cs: csb as isize };
    // SAFETY: the views address the checked slices; C is m×n; the emulation touches no tile state.
    unsafe { gemm_serial(&mut Emu::new(), m, k, n, va, vb, false, c.as_mut_ptr(), n) };
    c
}

/// The tile operations the program uses (all tiles configured as 16 rows × 64 bytes).
trait Tiles {
    /// Configure the tiles on this thread.
    unsafe fn begin(&mut self);
    /// Release this thread's tile state.
    unsafe fn end(&mut self);
    unsafe fn zero<const T: u8>(&mut self);
    /// 16 rows of 64 bytes, row r at `p + r·stride` bytes.
    unsafe fn load<const T: u8>(&mut self, p: *const u32, stride: usize);
    /// tmm C += tmm A · tmm B (bf16 pairs, f32 accumulation).
    unsafe fn dp<const C: u8, const A: u8, const B: u8>(&mut self);
    unsafe fn store<const T: u8>(&mut self, p: *mut f32, stride: usize);
}

/// The CPU's tiles.
struct Hw;

/// The 64-byte tile configuration: palette 1, tiles 0-7 of 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

static TILE_CONFIG: TileConfig = {
    let mut c = [0u8; 64];
    c[0] = 1; // palette
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64; // bytes per row (u16, little-endian)
        c[48 + t] = 16; // rows
        t += 1;
    }
    TileConfig(c)
};

impl Tiles for Hw {
    unsafe fn begin(&mut self) {
        // SAFETY: the configuration is a valid palette-1 layout the CPU supports (checked by `cpu_has_amx`).
        unsafe { std::arch::asm!("ldtilecfg [{c}]", c = in(reg) TILE_CONFIG.0.as_ptr(), options(nostack, readonly)) }
    }
    unsafe fn end(&mut self) {
        unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) }
    }
    #[inline(always)]
    unsafe fn zero<const T: u8>(&mut self) {
        unsafe { std::arch::asm!("tilezero tmm{t}", t = const T, options(nostack, nomem)) }
    }
    #[inline(always)]
    unsafe fn load<const T: u8>(&mut self, p: *const u32, stride: usize) {
        // SAFETY: the caller's 16 rows of 64 bytes at `stride` are readable.
        unsafe {
            std::arch::asm!("tileloadd tmm{t}, [{p} + {s}*1]", t = const T, p = in(reg) p, s = in(reg) stride, options(nostack, readonly))
        }
    }
    #[inline(always)]
    unsafe fn dp<const C: u8, const A: u8, const B: u8>(&mut self) {
        unsafe { std::arch::asm!("tdpbf16ps tmm{c}, tmm{a}, tmm{b}", c = const C, a = const A, b = const B, options(nostack, nomem)) }
    }
    #[inline(always)]
    unsafe fn store<const T: u8>(&mut self, p: *mut f32, stride: usize) {
        // SAFETY: the caller's 16 rows of 64 bytes at `stride` are writable.
        unsafe { std::arch::asm!("tilestored [{p} + {s}*1], tmm{t}", t = const T, p = in(reg) p, s = in(reg) stride, options(nostack)) }
    }
}

/// Eight emulated tiles of 16 rows × 16 dwords.
struct Emu {
    t: Box<[[u32; 256]; 8]>,
}

impl Emu {
    fn new() -> Emu {
        Emu { t: Box::new([[0; 256]; 8]) }
    }
}

/// A bf16 (the high half of `bits`) as f32, denormals read as zero.
fn bf16_daz(bits: u32) -> f32 {
    let x = bits & 0xffff_0000;
    if x & 0x7f80_0000 == 0 { f32::from_bits(x & 0x8000_0000) } else { f32::from_bits(x) }
}

impl Tiles for Emu {
    unsafe fn begin(&mut self) {}
    unsafe fn end(&mut self) {}
    unsafe fn zero<const T: u8>(&mut self) {
        self.t[T as usize] = [0; 256];
    }
    unsafe fn load<const T: u8>(&mut self, p: *const u32, stride: usize) {
        for r in 0..16 {
            // SAFETY: as for the hardware load.
            let row = unsafe { std::slice::from_raw_parts((p as *const u8).add(r * stride) as *const u32, 16) };
            self.t[T as usize][r * 16..(r + 1) * 16].copy_from_slice(row);
        }
    }
    unsafe fn dp<const C: u8, const A: u8, const B: u8>(&mut self) {
        let (a, b) = (self.t[A as usize], self.t[B as usize]);
        let c = &mut self.t[C as usize];
        for m in 0..16 {
            for q in 0..16 {
                let ap = a[m * 16 + q];
                let (a0, a1) = (bf16_daz(ap << 16), bf16_daz(ap));
                for j in 0..16 {
                    let bp = b[q * 16 + j];
                    let mut s = f32::from_bits(c[m * 16 + j]);
                    s = a0.mul_add(bf16_daz(bp << 16), s);
                    s = a1.mul_add(bf16_daz(bp), s);
                    if s != 0.0 && s.abs() < f32::MIN_POSITIVE {
                        s = 0.0f32.copysign(s);
                    }
                    c[m * 16 + j] = s.to_bits();
                }
            }
        }
    }
    unsafe fn store<const T: u8>(&mut self, p: *mut f32, stride: usize) {
        for r in 0..16 {
            // SAFETY: as for the hardware store.
            let row = unsafe { std::slice::from_raw_parts_mut((p as *mut u8).add(r * stride) as *mut f32, 16) };
            for (d, s) in row.iter_mut().zip(&self.t[T as usize][r * 16..(r + 1) * 16]) {
                *d = f32::from_bits(*s);
            }
        }
    }
}

/// C_blk[32×32] (row stride 32) = Σ over `steps` tile steps of A[32 rows, 16 pairs each]·B[16 pairs, 32
/// columns]: A's rows at `sa` bytes apart, B a [`pack_b`] panel.
#[inline(always)]
unsafe fn block<T: Tiles>(t: &mut T, steps: usize, a: *const u32, sa: usize, b: *const u32, c: *mut f32) {
    // SAFETY (all): A holds 32 rows of `steps`·16 pairs at stride `sa`; the panel steps·16 × NR pairs; C
    // 32 × 32 floats.
    unsafe {
        t.zero::<0>();
        t.zero::<1>();
        t.zero::<2>();
        t.zero::<3>();
        let a1 = (a as *const u8).add(16 * sa) as *const u32;
        for s in 0..steps {
            t.load::<4>(a.add(s * TK), sa);
            t.load::<5>(a1.add(s * TK), sa);
            let bs = b.add(s * TK * NR);
            t.load::<6>(bs, NR * 4);
            t.load::<7>(bs.add(16), NR * 4);
            t.dp::<0, 4, 6>();
            t.dp::<1, 4, 7>();
            t.dp::<2, 5, 6>();
            t.dp::<3, 5, 7>();
        }
        t.store::<0>(c, MB * 4);
        t.store::<1>(c.add(16), MB * 4);
        t.store::<2>(c.add(16 * MB), MB * 4);
        t.store::<3>(c.add(16 * MB + 16), MB * 4);
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn gemm_serial<T: Tiles>(t: &mut T, m: usize, k: usize, n: usize, a: View, b: View, acc: bool, c: *mut f32, rsc: usize) {
    thread_local! {
        static BUF: std::cell::RefCell<(Vec<u32>, Vec<u32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
    }
    if k == 0 {
        // SAFETY: C is the caller's m×n block.
        return unsafe { empty_product(m, n, acc, c, rsc) };
    }
    BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        let (pa, pb, blk) = &mut *buf;
        blk.resize(MB * MB, 0.0);
        // SAFETY: the tile program below runs between begin and end on this thread.
        unsafe { t.begin() };
        for im in (0..m).step_by(M_PACKED) {
            let mm = M_PACKED.min(m - im);
            for p0 in (0..k).step_by(KC) {
                let kc = KC.min(k - p0);
                let kpp = kc.div_ceil(2).next_multiple_of(TK);
                let add = acc || p0 > 0;
                pa.resize(mm.next_multiple_of(MB) * kpp, 0);
                pb.resize(kpp * NC, 0);
                // SAFETY (packs and blocks): indices stay inside the views, the buffers and C's block.
                unsafe { pack_a_rows(mm, kc, kpp, a, im, p0, pa) };
                for j0 in (0..n).step_by(NC) {
                    let nc = NC.min(n - j0);
                    unsafe { pack_b(kc, kpp, nc, b, p0, j0, pb) };
                    for jp in 0..nc.div_ceil(NR) {
                        let cols = NR.min(nc - jp * NR);
                        for ib in (0..mm).step_by(MB) {
                            let rows = MB.min(mm - ib);
                            unsafe {
                                block(t, kpp / TK, pa.as_ptr().add(ib * kpp), kpp * 4, pb.as_ptr().add(jp * NR * kpp), blk.as_mut_ptr());
                            }
                            for r in 0..rows {
                                // SAFETY: row im + ib + r of C has columns j0 + jp·NR .. + cols.
                                let dst = unsafe { std::slice::from_raw_parts_mut(c.add((im + ib + r) * rsc + j0 + jp * NR), cols) };
                                let src = &blk[r * MB..r * MB + cols];
                                if add {
                                    dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
                                } else {
                                    dst.copy_from_slice(src);
                                }
                            }
                        }
                    }
                }
            }
        }
        unsafe { t.end() };
    });
}

/// Rows i0..i0+mc, columns p0..p0+kc of A as `kpp` bf16 pairs per row (row-major), zero-padded to a
/// multiple of [`MB`] rows and `kpp` pairs.
#[allow(clippy::too_many_arguments)]
unsafe fn pack_a_rows(mc: usize, kc: usize, kpp: usize, a: View, i0: usize, p0: usize, pa: &mut [u32]) {
    let kp = kc.div_ceil(2);
    for (r, row) in pa[..mc.next_multiple_of(MB) * kpp].chunks_exact_mut(kpp).enumerate() {
        row[kp..].fill(0);
        if r >= mc {
            row[..kp].fill(0);
            continue;
        }
        // SAFETY: (i0 + r, p0 + p) is inside A for p < kc.
        let base = unsafe { a.ptr.offset((i0 + r) as isize * a.rs + p0 as isize * a.cs) };
        if a.cs == 1 {
            let src = unsafe { std::slice::from_raw_parts(base, kc) };
            let mut it = src.chunks_exact(2);
            for (d, pr) in row.iter_mut().zip(&mut it) {
                *d = pair(pr[0], pr[1]);
            }
            if let [last] = it.remainder() {
                row[kp - 1] = pair(*last, 0.0);
            }
        } else {
            let at = |p: usize| if p < kc { unsafe { *base.offset(p as isize * a.cs) } } else { 0.0 };
            for (q, d) in row[..kp].iter_mut().enumerate() {
                *d = pair(at(2 * q), at(2 * q + 1));
            }
        }
    }
}
