//! The AMX bf16 GEMM's tile program, run through the emulated tiles on every x86_64 machine: against
//! an f64 reference with the bf16 rounding bound, the same result for every memory layout, every block
//! of C independent of the others (what the thread split relies on), and the tiles' arithmetic (pairs
//! in order, bf16 denormals read as zero). On a CPU with AMX, the hardware tiles must be in use (they
//! passed the start-up check against the emulation) and run the ranking GEMMs; elsewhere that part
//! skips and says so.
#![cfg(target_arch = "x86_64")]

use scspecies::engine::gemm_amx::{self, Status};

fn lcg(s: &mut u64) -> f64 {
    *s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (*s >> 11) as f64 / (1u64 << 53) as f64
}

fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols).map(|i| x[(i % rows) * cols + i / rows]).collect()
}

#[test]
fn emulated_tiles_match_f64_within_bf16_rounding() {
    let mut s = 11u64;
    // Remainders in every blocking dimension: 32-row blocks, 32-column panels, 16-pair tile steps,
    // KC = 512, odd k, more rows than one packed stretch of A (1,536), and the decoder head's k = 300.
    for &(m, k, n) in &[(1, 1, 1), (33, 7, 33), (31, 513, 70), (64, 300, 96), (5, 1030, 17), (1600, 3, 40), (40, 32, 545)] {
        let a: Vec<f32> = (0..m * k).map(|_| (lcg(&mut s) * 2.0 - 1.0) as f32).collect();
        let b: Vec<f32> = (0..k * n).map(|_| (lcg(&mut s) * 2.0 - 1.0) as f32).collect();
        let (at, bt) = (transpose(&a, m, k), transpose(&b, k, n));
        let layouts = [
            gemm_amx::gemm_emulated(m, k, n, &a, k, 1, &b, n, 1),
            gemm_amx::gemm_emulated(m, k, n, &at, 1, m, &b, n, 1),
            gemm_amx::gemm_emulated(m, k, n, &a, k, 1, &bt, 1, k),
        ];
        let mut differs_from_f32 = false;
        for i in 0..m {
            for j in 0..n {
                let (mut exact, mut mag, mut f32_sum) = (0f64, 0f64, 0f32);
                for p in 0..k {
                    let t = a[i * k + p] as f64 * b[p * n + j] as f64;
                    exact += t;
                    mag += t.abs();
                    f32_sum = a[i * k + p].mul_add(b[p * n + j], f32_sum);
                }
                // Two bf16 roundings per product (2^-8 relative each, and their product), then an f32
                // sum of k terms (k·2^-24), all relative to Σ|a·b|.
                let bound = (2.0 * 2f64.powi(-8) + 2f64.powi(-16) + (k as f64 + 2.0) * 2f64.powi(-24)) * mag + 1e-30;
                let got = layouts[0][i * n + j];
                assert!((got as f64 - exact).abs() <= bound, "{m}x{k}x{n} ({i},{j}): {got} vs {exact} (bound {bound:e})");
                for (l, c) in layouts.iter().enumerate().skip(1) {
                    assert_eq!(c[i * n + j].to_bits(), got.to_bits(), "{m}x{k}x{n} layout {l} ({i},{j})");
                }
                differs_from_f32 |= got != f32_sum;
            }
        }
        if m * n * k >= 1000 {
            assert!(differs_from_f32, "{m}x{k}x{n}: the emulated bf16 GEMM equals f32 everywhere");
        }
    }
}

#[test]
fn emulated_blocks_do_not_depend_on_their_position() {
    // The threads split C into row and column stretches; an element must come out the same whichever
    // stretch it is computed in.
    let (m, k, n) = (90, 530, 150);
    let mut s = 5u64;
    let a: Vec<f32> = (0..m * k).map(|_| (lcg(&mut s) - 0.5) as f32).collect();
    let b: Vec<f32> = (0..k * n).map(|_| (lcg(&mut s) - 0.5) as f32).collect();
    let full = gemm_amx::gemm_emulated(m, k, n, &a, k, 1, &b, n, 1);
    for &(i0, i1, j0, j1) in &[(0, 90, 0, 150), (5, 41, 33, 100), (77, 90, 1, 2), (0, 1, 64, 150)] {
        let part = gemm_amx::gemm_emulated(i1 - i0, k, j1 - j0, &a[i0 * k..], k, 1, &b[j0..], n, 1);
        for i in i0..i1 {
            for j in j0..j1 {
                assert_eq!(
                    part[(i - i0) * (j1 - j0) + j - j0].to_bits(),
                    full[i * n + j].to_bits(),
                    "({i},{j}) in block ({i0}..{i1}, {j0}..{j1})"
                );
            }
        }
    }
}

#[test]
fn emulated_tile_arithmetic() {
    // One pair: 1.5·2 + (-3)·0.25 = 2.25, exact in bf16 and f32.
    let c = gemm_amx::gemm_emulated(1, 2, 1, &[1.5, -3.0], 2, 1, &[2.0, 0.25], 1, 1);
    assert_eq!(c, vec![2.25]);
    // Inputs are rounded to bf16 (8 significant bits): 1 + 2^-9 becomes 1.
    let c = gemm_amx::gemm_emulated(1, 1, 1, &[1.0 + 2f32.powi(-9)], 1, 1, &[1.0], 1, 1);
    assert_eq!(c, vec![1.0]);
    // bf16 denormal inputs read as zero, as the instruction does.
    let tiny = f32::from_bits(0x0001_0000); // a bf16 denormal
    let c = gemm_amx::gemm_emulated(1, 2, 1, &[tiny, 1.0], 2, 1, &[2f32.powi(126), 3.0], 1, 1);
    assert_eq!(c, vec![3.0], "2^-133 · 2^126 = 2^-7 would show if the denormal were used");
    // The sum runs over the products one at a time in f32: 2^24 + 1 + 1 stays 2^24 (each 1 is rounded
    // away; the exact sum is 2^24 + 2).
    let big = 2f32.powi(24);
    let c = gemm_amx::gemm_emulated(1, 3, 1, &[big, 1.0, 1.0], 3, 1, &[1.0, 1.0, 1.0], 1, 1);
    assert_eq!(c, vec![big]);
}

#[test]
fn amx_is_used_where_the_cpu_has_it() {
    let st = gemm_amx::status();
    eprintln!("AMX: {}", st.describe());
    if !gemm_amx::cpu_has_amx() {
        assert_eq!(st, Status::NotOnThisCpu);
        eprintln!("SKIPPED: this CPU has no AMX-BF16: the hardware tile path cannot run here (its program was tested emulated)");
        return;
    }
    if st == Status::Disabled {
        eprintln!("SKIPPED: AMX is disabled by SCSPECIES_AMX=0 or SCSPECIES_SIMD");
        return;
    }
    if st == Status::OsRefused {
        eprintln!("SKIPPED: this CPU has AMX but the OS refused the tile state (arch_prctl): the hardware tile path cannot run here");
        return;
    }
    // On an AMX CPU the tiles must have passed the start-up check against the emulation.
    assert_eq!(st, Status::Used, "AMX present but not used: {}", st.describe());
    assert_eq!(scspecies::engine::precision::bf16_kernel(), Some("amx"));
    // And the ranking GEMM runs on them: the same bound as the emulation against f64.
    let (m, k, n) = (70, 300, 130);
    let mut s = 9u64;
    let a: Vec<f32> = (0..m * k).map(|_| (lcg(&mut s) * 2.0 - 1.0) as f32).collect();
    let b: Vec<f32> = (0..k * n).map(|_| (lcg(&mut s) * 2.0 - 1.0) as f32).collect();
    let emu = gemm_amx::gemm_emulated(m, k, n, &a, k, 1, &b, n, 1);
    let mut hw = vec![0f32; m * n];
    use scspecies::engine::precision::{self, Precision};
    let before = precision::ranking_precision();
    precision::set_ranking(Precision::Bf16).unwrap();
    precision::ranking(|| scspecies::engine::ops::gemm(m, k, n, &a, k, 1, &b, n, 1, &mut hw, false));
    precision::set_ranking(before).unwrap();
    for i in 0..m {
        for j in 0..n {
            let mag: f64 = (0..k).map(|p| (a[i * k + p] as f64 * b[p * n + j] as f64).abs()).sum();
            let d = (hw[i * n + j] as f64 - emu[i * n + j] as f64).abs();
            assert!(
                d <= 2.0 * (k as f64 + 2.0) * 2f64.powi(-24) * mag,
                "({i},{j}): tiles {} vs emulated {}",
                hw[i * n + j],
                emu[i * n + j]
            );
        }
    }
}
