//! The engine's f32 GEMM (AVX-512 kernel where the CPU has it, matrixmultiply otherwise) against an f64
//! reference: edge sizes around the 12 x 32 tile and the k/column/row blocks, transposed operands,
//! accumulation, k = 0; and the result must not depend on the thread count.

use scspecies::engine::ops;

fn lcg(s: &mut u64) -> f32 {
    *s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ((*s >> 11) as f64 / (1u64 << 53) as f64 - 0.5) as f32
}

/// C = A·B (+ C), A given row-major (or as the transpose of a k×m row-major matrix), B likewise.
fn run(m: usize, k: usize, n: usize, ta: bool, tb: bool, acc: bool, seed: u64) -> (Vec<f32>, Vec<f64>) {
    let mut s = seed;
    let a: Vec<f32> = (0..m * k).map(|_| lcg(&mut s)).collect();
    let b: Vec<f32> = (0..k * n).map(|_| lcg(&mut s)).collect();
    let c0: Vec<f32> = (0..m * n).map(|_| lcg(&mut s)).collect();
    // Element (i, p) of A and (p, j) of B under each layout.
    let (rsa, csa) = if ta { (1, m) } else { (k, 1) };
    let (rsb, csb) = if tb { (1, k) } else { (n, 1) };
    let mut c = c0.clone();
    ops::gemm(m, k, n, &a, rsa, csa, &b, rsb, csb, &mut c, acc);
    let mut want = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut v = if acc { c0[i * n + j] as f64 } else { 0.0 };
            for p in 0..k {
                v += a[i * rsa + p * csa] as f64 * b[p * rsb + j * csb] as f64;
            }
            want[i * n + j] = v;
        }
    }
    (c, want)
}

#[test]
fn gemm_matches_f64_reference() {
    // The last two take the k-split path (k ≥ 8·KC, small C).
    let shapes = [
        (1, 1, 1),
        (12, 7, 32),
        (13, 385, 33),
        (25, 300, 545),
        (128, 10, 300),
        (5, 800, 17),
        (200, 3, 1030),
        (40, 0, 9),
        (14, 3100, 35),
        (3, 4000, 2),
    ];
    let mut seed = 1;
    for &(m, k, n) in &shapes {
        for (ta, tb, acc) in [(false, false, false), (true, false, true), (false, true, false), (true, true, true)] {
            seed += 1;
            let (c, want) = run(m, k, n, ta, tb, acc, seed);
            for (idx, (&g, &w)) in c.iter().zip(&want).enumerate() {
                // f32 accumulation of k products of magnitude ≤ 1/4: error ≲ k·2⁻²⁴ relative to Σ|a·b|.
                let tol = 1e-6 * (k as f64 + 1.0) + 1e-6;
                assert!((g as f64 - w).abs() <= tol, "m{m} k{k} n{n} ta{ta} tb{tb} acc{acc} at {idx}: {g} vs {w}");
            }
        }
    }
}

#[test]
fn gemm_does_not_depend_on_thread_count() {
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let three = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
    for &(m, k, n) in &[(130, 700, 97), (37, 300, 1500), (30, 3500, 50)] {
        let a = one.install(|| run(m, k, n, false, true, true, 9).0);
        let b = three.install(|| run(m, k, n, false, true, true, 9).0);
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{m}x{k}x{n} differs between 1 and 3 threads");
    }
}
