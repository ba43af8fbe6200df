//! The engine's GEMMs (own AVX-512 f32 kernel, own AVX512-BF16 kernel, matrixmultiply) against the
//! `gemm` crate on the model's dense shapes, all on the same rayon pool. `cargo bench --bench gemm_crates`.
//! Prints GFLOP/s per shape; the README's Performance section quotes it.

use scspecies::engine::ops;
use scspecies::engine::precision::{self, Precision};
use std::time::Instant;

fn best_of<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let threads = rayon::current_num_threads();
    let genes = 16_414;
    // (label, m, k, n, A transposed in memory, B transposed in memory)
    let shapes = [
        ("decoder head fwd  128x300xG", 128, 300, genes, false, false),
        ("candidate chunk   512x300xG", 512, 300, genes, false, false),
        ("head bwd dX  128xGx300 (W^T)", 128, genes, 300, false, true),
        ("head bwd dW  300x128xG (h^T)", 300, 128, genes, true, false),
        ("hidden layer      128x200x300", 128, 200, 300, false, false),
    ];
    println!(
        "{threads} threads; GFLOP/s (best of 5); own bf16 kernel: {} (AMX: {}; SCSPECIES_AMX=0 measures AVX512-BF16 on an AMX CPU)",
        precision::bf16_kernel().unwrap_or("none"),
        precision::amx_status()
    );
    println!("{:<30} {:>10} {:>10} {:>10} {:>10}", "shape", "own f32", "gemm 0.19", "own bf16", "mmultiply");
    for (label, m, k, n, at, bt) in shapes {
        let a: Vec<f32> = (0..m * k).map(|i| ((i % 13) as f32 - 6.0) * 0.01).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
        let (rsa, csa) = if at { (1, m) } else { (k, 1) };
        let (rsb, csb) = if bt { (1, k) } else { (n, 1) };
        let mut c = vec![0f32; m * n];
        let flop = 2.0 * (m * k * n) as f64 / 1e9;
        precision::set_ranking(Precision::F32).unwrap();
        let own = flop / best_of(5, || ops::gemm(m, k, n, &a, rsa, csa, &b, rsb, csb, &mut c, false));
        let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
        let crate_gemm = flop
            / best_of(5, || unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    csa as isize,
                    rsa as isize,
                    b.as_ptr(),
                    csb as isize,
                    rsb as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    par,
                )
            });
        let bf16 = if precision::set_ranking(Precision::Bf16).is_ok() {
            let g = flop / best_of(5, || precision::ranking(|| ops::gemm(m, k, n, &a, rsa, csa, &b, rsb, csb, &mut c, false)));
            precision::set_ranking(Precision::F32).unwrap();
            format!("{g:>10.0}")
        } else {
            format!("{:>10}", "n/a")
        };
        let mm = flop
            / best_of(5, || unsafe {
                matrixmultiply::sgemm(
                    m,
                    k,
                    n,
                    1.0,
                    a.as_ptr(),
                    rsa as isize,
                    csa as isize,
                    b.as_ptr(),
                    rsb as isize,
                    csb as isize,
                    0.0,
                    c.as_mut_ptr(),
                    n as isize,
                    1,
                )
            });
        println!("{label:<30} {own:>10.0} {crate_gemm:>10.0} {bf16} {mm:>10.0}");
    }
    if !precision::bf16_available() {
        println!("own bf16: SKIPPED, this CPU has neither AVX512-BF16 nor AMX-BF16");
    }
    println!("(matrixmultiply single-threaded here, as called directly; the engine splits it over rayon)");
}
