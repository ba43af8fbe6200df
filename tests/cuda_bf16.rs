//! `--precision bf16` on the CUDA backend: inside `precision::ranking` the dense GEMMs take bf16
//! operands (kernel `to_bf16`, round to nearest even as the `half` crate) with f32 accumulation; outside
//! it they stay f32. Its own test binary, because the ranking precision is process-wide. Runs on a GPU
//! or on the emulated device (`SCSPECIES_CUDA_EMULATE=1`, as CI does); skips loudly otherwise.
#![cfg(feature = "cuda")]

use scspecies::engine::Backend;
use scspecies::engine::cuda::Cuda;
use scspecies::engine::precision::{Precision, ranking, set_ranking_gpu};

fn gpu() -> Option<Cuda> {
    match Cuda::new(0, false) {
        Ok(g) => Some(g),
        Err(e) if std::env::var("SCSPECIES_REQUIRE_GPU").is_ok_and(|v| v == "1") || scspecies::engine::cuda::emulation_requested() => {
            panic!("no CUDA device: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED (no GPU, bf16 GEMMs not checked): {e}");
            None
        }
    }
}

#[test]
fn ranking_gemms_round_to_bf16_and_accumulate_in_f32() {
    let Some(g) = gpu() else { return };
    assert_eq!(set_ranking_gpu(Precision::Auto), Precision::Bf16, "auto means bf16 on a GPU");
    // Rounding: x·I picks each x exactly once, so y is x rounded to bf16; values at and beside ties.
    let k = 8;
    let bits = [0x3f80_8000u32, 0x3f81_8000, 0x3f80_7fff, 0x3f80_8001, 0xbf80_8000, 0x4049_0fdb, 0x0000_8000, 0x4d7f_ffff];
    let x: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
    let eye: Vec<f32> = (0..k * k).map(|i| if i % (k + 1) == 0 { 1.0 } else { 0.0 }).collect();
    let (xb, wb, bb) = (g.upload_f32(&x), g.upload_f32(&eye), g.upload_f32(&vec![0.0; k]));
    let mut y = g.zeros(k);
    ranking(|| g.linear_fwd(&xb, &wb, &bb, &mut y, 1, k, k));
    let got = g.download_f32(&y).unwrap();
    for (i, (&v, &want)) in got.iter().zip(&x).enumerate() {
        let r = half::bf16::from_f32(want).to_f32();
        assert_eq!(v.to_bits(), r.to_bits(), "element {i}: {want:e} became {v:e}, half gives {r:e}");
    }
    let mut y32 = g.zeros(k);
    g.linear_fwd(&xb, &wb, &bb, &mut y32, 1, k, k);
    assert_eq!(g.download_f32(&y32).unwrap(), x, "outside `ranking` the GEMM stays f32");

    // A decoder-sized product against f64: |y − exact| ≤ (2·2⁻⁸ + 2⁻¹⁶ + (k+2)·2⁻²⁴)·Σ|x·w| + 2⁻²⁴·|y|.
    let (rows, k, n) = (33, 300, 517);
    let mut s = 7u64;
    let mut r = || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 33) as f64 / (1u64 << 31) as f64) * 2.0 - 1.0
    };
    let x: Vec<f64> = (0..rows * k).map(|_| r()).collect();
    let w: Vec<f64> = (0..k * n).map(|_| r() * 0.1).collect();
    let b: Vec<f64> = (0..n).map(|_| r()).collect();
    let mut y = g.zeros(rows * n);
    ranking(|| g.linear_fwd(&g.upload(&x), &g.upload(&w), &g.upload(&b), &mut y, rows, k, n));
    let got = g.download(&y);
    let u = f64::powi(2.0, -24);
    let mut worst = 0f64;
    let mut off_f32 = 0usize;
    for i in 0..rows {
        for j in 0..n {
            let (mut exact, mut abs) = (b[j], b[j].abs());
            for q in 0..k {
                let (xf, wf) = (x[i * k + q] as f32 as f64, w[q * n + j] as f32 as f64);
                exact += xf * wf;
                abs += (xf * wf).abs();
            }
            let bound = (2.0 * f64::powi(2.0, -8) + f64::powi(2.0, -16) + (k as f64 + 2.0) * u) * abs + u * exact.abs();
            let d = (got[i * n + j] - exact).abs();
            worst = worst.max(d / bound);
            off_f32 += (d > 1e-5 * abs) as usize;
            assert!(d <= bound, "({i}, {j}): {} vs exact {exact} (bound {bound:e})", got[i * n + j]);
        }
    }
    eprintln!("bf16 GEMM {rows}x{k}x{n}: worst error {worst:.3} of the bound; {off_f32} of {} entries beyond f32 accuracy", rows * n);
    assert!(off_f32 > rows * n / 2, "the product should carry bf16 rounding, not f32");
    assert!(g.device_error().is_none(), "{:?}", g.device_error());
}
