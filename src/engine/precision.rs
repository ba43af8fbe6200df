//! Which GEMM precision the forward-only decoding of the ranking paths (candidate choice, label
//! transfer) may use. Training GEMMs stay f32 whatever is chosen here.
//!
//! The choice is process-wide ([`set_ranking`], from `--precision`); it takes effect only inside
//! [`ranking`], on the thread that calls it (the GEMM decides on the calling thread before it splits
//! its work), so a training step on another thread is never affected.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

/// `--precision`: `f32` everywhere, `bf16` for the ranking GEMMs (refused where the CPU cannot run
/// it), or `auto` (bf16 where the CPU has AVX512-BF16 or AMX-BF16, else f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    Bf16,
    Auto,
}

static RANKING_BF16: AtomicBool = AtomicBool::new(false);

thread_local! {
    static IN_RANKING: Cell<bool> = const { Cell::new(false) };
}

/// Whether this CPU has a bf16 GEMM (AMX-BF16 tiles, or AVX512-BF16 at the current SIMD level).
pub fn bf16_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::gemm_bf16::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Which CPU kernel runs the bf16 GEMMs here: `"amx"` (tiles), `"avx512-bf16"`, or `None`.
pub fn bf16_kernel() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        super::gemm_bf16::kernel_name()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// Whether AMX runs the bf16 GEMMs in this process, and if not, why (see [`super::gemm_amx::Status`]).
pub fn amx_status() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        super::gemm_amx::status().describe()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        "not on this CPU"
    }
}

/// Resolves `auto` and sets the ranking precision for the process; returns the precision in effect.
/// `bf16` on a CPU without a bf16 GEMM is an error that says so.
pub fn set_ranking(p: Precision) -> Result<Precision, String> {
    let eff = match p {
        Precision::F32 => Precision::F32,
        Precision::Bf16 if bf16_available() => Precision::Bf16,
        Precision::Bf16 => {
            return Err("--precision bf16: this CPU has neither AVX512-BF16 nor AMX-BF16 (or SCSPECIES_SIMD caps it below AVX-512); use f32 or auto".into());
        }
        Precision::Auto => {
            if bf16_available() {
                Precision::Bf16
            } else {
                Precision::F32
            }
        }
    };
    RANKING_BF16.store(eff == Precision::Bf16, Ordering::Relaxed);
    Ok(eff)
}

/// [`set_ranking`] for a run on a CUDA GPU: cuBLAS multiplies bf16 inputs on the tensor cores with f32
/// accumulation (the same arithmetic as the CPU's bf16 GEMM), so `auto` means bf16 there too.
pub fn set_ranking_gpu(p: Precision) -> Precision {
    let eff = if p == Precision::F32 { Precision::F32 } else { Precision::Bf16 };
    RANKING_BF16.store(eff == Precision::Bf16, Ordering::Relaxed);
    eff
}

/// The ranking precision in effect (`F32` or `Bf16`).
pub fn ranking_precision() -> Precision {
    if RANKING_BF16.load(Ordering::Relaxed) { Precision::Bf16 } else { Precision::F32 }
}

/// Runs `f` with this thread's GEMMs in the ranking precision.
pub fn ranking<R>(f: impl FnOnce() -> R) -> R {
    // Restored on the way out, also when `f` unwinds.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            IN_RANKING.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(IN_RANKING.with(|c| c.replace(true)));
    f()
}

/// Whether a GEMM called on this thread now should run in bf16.
pub(crate) fn gemm_in_bf16() -> bool {
    RANKING_BF16.load(Ordering::Relaxed) && IN_RANKING.with(|c| c.get())
}
