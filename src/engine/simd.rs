//! Run-time choice of the widest vector unit for the f32 element-wise kernels: each kernel body is
//! written once as a plain `#[inline(always)]` loop and compiled three times (baseline x86-64,
//! AVX2+FMA, AVX-512), see [`multiversion!`]. The three variants perform the same IEEE operations in
//! the same order (no fast-math contraction), so results do not depend on the machine's vector width.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Baseline,
    Avx2,
    Avx512,
}

static CAP: AtomicU8 = AtomicU8::new(u8::MAX);

/// Cap the level for the whole process from now on (tests compare the variants with it).
pub fn set_cap(cap: Level) {
    CAP.store(cap as u8, Ordering::Relaxed);
}

/// The widest level this CPU supports, capped by `SCSPECIES_SIMD` (`baseline`, `avx2`, `avx512`) and
/// by [`set_cap`]. Detected once.
pub fn level() -> Level {
    let l = detected_capped();
    match CAP.load(Ordering::Relaxed) {
        0 => Level::Baseline,
        1 => l.min(Level::Avx2),
        _ => l,
    }
}

/// What this CPU supports, capped by `SCSPECIES_SIMD`.
pub fn detected_capped() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cap = match std::env::var("SCSPECIES_SIMD").as_deref() {
            Ok("baseline") => Level::Baseline,
            Ok("avx2") => Level::Avx2,
            _ => Level::Avx512,
        };
        detected().min(cap)
    })
}

fn detected() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") && has!("avx2") && has!("fma") {
            return Level::Avx512;
        }
        if has!("avx2") && has!("fma") {
            return Level::Avx2;
        }
    }
    Level::Baseline
}

/// `multiversion!(pub fn name(a: A, b: B) -> R => body);` defines `name`, which calls the
/// `#[inline(always)]` function `body` compiled for the best [`level`].
#[macro_export]
#[doc(hidden)]
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? => $body:path) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn wide($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                match $crate::engine::simd::level() {
                    // SAFETY: `level` returns a variant only when the CPU has its features.
                    $crate::engine::simd::Level::Avx512 => return unsafe { wide($($arg),*) },
                    $crate::engine::simd::Level::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::engine::simd::Level::Baseline => {}
                }
            }
            $body($($arg),*)
        }
    };
}
