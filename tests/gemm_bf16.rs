//! The bf16 GEMM (AVX512-BF16) against an f64 reference, with a bound from bf16 rounding; its
//! rounding against the `half` crate; thread-count independence; and the precision scope (bf16 only
//! inside `precision::ranking` and only when chosen). Where this CPU has no AVX512-BF16 the kernel
//! tests skip and say so; the scope test still checks that f32 is used.

use scspecies::engine::ops;
use scspecies::engine::precision::{self, Precision};

fn lcg(s: &mut u64) -> f64 {
    *s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (*s >> 11) as f64 / (1u64 << 53) as f64
}

/// The precision setting is process-wide: the tests here take turns.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn have_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    if scspecies::engine::gemm_bf16::available() {
        return true;
    }
    eprintln!("SKIPPED: this CPU has no AVX512-BF16 (or SCSPECIES_SIMD caps it): the bf16 kernel cannot run here");
    false
}

/// C = A·B through `ops::gemm` inside the ranking scope, A [m×k] and B [k×n] with the given strides.
#[allow(clippy::too_many_arguments)]
fn ranked_gemm(m: usize, k: usize, n: usize, a: &[f32], rsa: usize, csa: usize, b: &[f32], rsb: usize, csb: usize) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    precision::ranking(|| ops::gemm(m, k, n, a, rsa, csa, b, rsb, csb, &mut c, false));
    c
}

#[cfg(target_arch = "x86_64")]
#[test]
fn bf16_rounding_matches_half() {
    use scspecies::engine::gemm_bf16::round_to_bf16;
    let mut s = 1u64;
    for i in 0..200_000 {
        let x = match i % 4 {
            0 => ((lcg(&mut s) - 0.5) * 1e3) as f32,
            1 => ((lcg(&mut s) - 0.5) * 1e-30) as f32,
            2 => f32::from_bits((lcg(&mut s) * u32::MAX as f64) as u32 & 0x7f7f_ffff), // any finite bits
            _ => (1.0 + (i as f32) * 2f32.powi(-16)) * if i % 8 == 3 { -1.0 } else { 1.0 }, // ties
        };
        let want = half::bf16::from_f32(x).to_f32();
        assert_eq!(round_to_bf16(x).to_bits(), want.to_bits(), "bf16({x:e})");
    }
}

#[test]
fn bf16_gemm_matches_f64_within_bf16_rounding() {
    let _t = TURN.lock().unwrap_or_else(|e| e.into_inner());
    if !have_bf16() {
        return;
    }
    precision::set_ranking(Precision::Bf16).unwrap();
    let mut s = 7u64;
    // Shapes with remainders in every blocking dimension (MR 12, NR 32, KC 384, odd k), and the
    // decoder head's shape.
    for &(m, k, n) in &[(1, 1, 1), (13, 7, 33), (25, 385, 70), (128, 300, 1000), (200, 769, 65), (5, 2, 513), (1700, 9, 40)] {
        let a: Vec<f32> = (0..m * k).map(|_| (lcg(&mut s) * 2.0 - 1.0) as f32).collect();
        let b: Vec<f32> = (0..k * n).map(|_| (lcg(&mut s) * 2.0 - 1.0) as f32).collect();
        // A row-major and transposed in memory; B row-major and transposed.
        let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let layouts = [
            ranked_gemm(m, k, n, &a, k, 1, &b, n, 1),
            ranked_gemm(m, k, n, &at, 1, m, &b, n, 1),
            ranked_gemm(m, k, n, &a, k, 1, &bt, 1, k),
        ];
        for i in 0..m {
            for j in 0..n {
                let (mut exact, mut mag) = (0f64, 0f64);
                for p in 0..k {
                    let t = a[i * k + p] as f64 * b[p * n + j] as f64;
                    exact += t;
                    mag += t.abs();
                }
                // Two bf16 roundings per product (2^-8 relative each, and their product), then an f32
                // sum of k terms (k·2^-24), all relative to Σ|a·b|.
                let bound = (2.0 * 2f64.powi(-8) + 2f64.powi(-16) + (k as f64 + 2.0) * 2f64.powi(-24)) * mag + 1e-30;
                for (l, c) in layouts.iter().enumerate() {
                    let got = c[i * n + j] as f64;
                    assert!((got - exact).abs() <= bound, "{m}x{k}x{n} layout {l} ({i},{j}): {got} vs {exact} (bound {bound:e})");
                }
                // The layouts pack the same values in the same order: identical results.
                assert_eq!(layouts[0][i * n + j].to_bits(), layouts[1][i * n + j].to_bits());
                assert_eq!(layouts[0][i * n + j].to_bits(), layouts[2][i * n + j].to_bits());
            }
        }
        // Not the f32 GEMM in disguise: with random inputs some result must differ from f32's.
        if m * n * k >= 1000 {
            precision::set_ranking(Precision::F32).unwrap();
            let f = ranked_gemm(m, k, n, &a, k, 1, &b, n, 1);
            precision::set_ranking(Precision::Bf16).unwrap();
            assert!(f.iter().zip(&layouts[0]).any(|(x, y)| x != y), "{m}x{k}x{n}: bf16 equals f32 everywhere");
        }
    }
    precision::set_ranking(Precision::F32).unwrap();
}

#[test]
fn bf16_gemm_does_not_depend_on_the_thread_count() {
    let _t = TURN.lock().unwrap_or_else(|e| e.into_inner());
    if !have_bf16() {
        return;
    }
    precision::set_ranking(Precision::Bf16).unwrap();
    let (m, k, n) = (300, 301, 1500);
    let mut s = 3u64;
    let a: Vec<f32> = (0..m * k).map(|_| (lcg(&mut s) - 0.5) as f32).collect();
    let b: Vec<f32> = (0..k * n).map(|_| (lcg(&mut s) - 0.5) as f32).collect();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| ranked_gemm(m, k, n, &a, k, 1, &b, n, 1))
    };
    let one = run(1);
    for t in [2, 3, 5] {
        let other = run(t);
        assert!(one.iter().zip(&other).all(|(x, y)| x.to_bits() == y.to_bits()), "{t} threads differ from 1");
    }
    precision::set_ranking(Precision::F32).unwrap();
}

/// bf16 only inside the ranking scope and only when chosen; `auto` follows the hardware; `bf16`
/// where the CPU lacks it is refused.
#[test]
fn precision_scope() {
    let _t = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let (m, k, n) = (20, 64, 40);
    let mut s = 5u64;
    let a: Vec<f32> = (0..m * k).map(|_| (lcg(&mut s) - 0.5) as f32).collect();
    let b: Vec<f32> = (0..k * n).map(|_| (lcg(&mut s) - 0.5) as f32).collect();
    let plain = |c: &mut Vec<f32>| ops::gemm(m, k, n, &a, k, 1, &b, n, 1, c, false);
    let mut f32_ref = vec![0f32; m * n];
    plain(&mut f32_ref);
    let auto = precision::set_ranking(Precision::Auto).unwrap();
    assert_eq!(auto == Precision::Bf16, precision::bf16_available());
    // Outside the scope: f32 whatever the setting.
    let mut c = vec![0f32; m * n];
    plain(&mut c);
    assert_eq!(c, f32_ref);
    let inside = ranked_gemm(m, k, n, &a, k, 1, &b, n, 1);
    assert_eq!(inside != f32_ref, auto == Precision::Bf16, "inside the scope: bf16 exactly when in effect");
    precision::set_ranking(Precision::F32).unwrap();
    assert_eq!(ranked_gemm(m, k, n, &a, k, 1, &b, n, 1), f32_ref);
    if !precision::bf16_available() {
        let e = precision::set_ranking(Precision::Bf16).unwrap_err();
        assert!(e.contains("AVX512-BF16"), "{e}");
    }
}
