//! Property tests of the CSR operations and the Matrix Market reader (shapes, zeros, large counts).

use proptest::prelude::*;
use scspecies::data::Csr;

fn matrix() -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
    (0usize..7, 0usize..7).prop_flat_map(|(r, c)| {
        let vals = prop_oneof![6 => Just(0.0f32), 3 => (1u32..20).prop_map(|v| v as f32), 1 => (1u32..1_000_000).prop_map(|v| v as f32)];
        (Just(r), Just(c), prop::collection::vec(vals, r * c))
    })
}

proptest! {
    #[test]
    fn dense_round_trip_and_transpose((r, c, d) in matrix()) {
        let m = Csr::from_dense(r, c, &d);
        prop_assert_eq!(m.rows_dense(0..r), d.clone());
        prop_assert_eq!(m.transpose().transpose(), m.clone());
        let t = m.transpose();
        for i in 0..r { for j in 0..c {
            prop_assert_eq!(t.rows_dense(j..j + 1)[i], d[i * c + j]);
        }}
        let sums = m.row_sums();
        for i in 0..r {
            prop_assert_eq!(sums[i], d[i * c..(i + 1) * c].iter().map(|&v| v as f64).sum::<f64>());
        }
    }

    #[test]
    fn select_rows_and_cols((r, c, d) in matrix(), seed in 0u64..1000) {
        let m = Csr::from_dense(r, c, &d);
        let rows: Vec<usize> = (0..r).filter(|i| (seed >> (i % 10)) & 1 == 1).collect();
        let cols: Vec<usize> = (0..c).filter(|j| (seed >> ((j + 3) % 10)) & 1 == 1).collect();
        let s = m.select_rows(&rows).select_cols(&cols);
        let got = s.rows_dense(0..rows.len());
        for (a, &i) in rows.iter().enumerate() { for (b, &j) in cols.iter().enumerate() {
            prop_assert_eq!(got[a * cols.len() + b], d[i * c + j]);
        }}
    }

    #[test]
    fn mtx_write_read_round_trip((r, c, d) in matrix(), shuffle in any::<bool>()) {
        let m = Csr::from_dense(r, c, &d);
        let mut entries = Vec::new();
        for i in 0..r { let (idx, val) = m.row(i); for (&j, &v) in idx.iter().zip(val) { entries.push(format!("{} {} {}", i + 1, j + 1, v)); } }
        if shuffle { entries.reverse(); }
        let text = format!("%%MatrixMarket matrix coordinate integer general\n% comment\n{} {} {}\n{}\n", r, c, entries.len(), entries.join("\n"));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.mtx");
        std::fs::write(&p, text).unwrap();
        let back = scspecies::data::mtx::read_mtx(&p).unwrap();
        prop_assert_eq!(back, m);
    }

    /// Arbitrary bytes after a valid header never panic: they parse or give an error naming the file.
    #[test]
    fn mtx_garbage_never_panics(body in prop::collection::vec(any::<u8>(), 0..200)) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.mtx");
        let mut bytes = b"%%MatrixMarket matrix coordinate integer general\n".to_vec();
        bytes.extend(body);
        std::fs::write(&p, bytes).unwrap();
        if let Err(e) = scspecies::data::mtx::read_mtx(&p) {
            prop_assert!(e.to_string().contains("g.mtx"));
        }
    }
}

#[test]
fn duplicate_entries_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.mtx");
    std::fs::write(&p, "%%MatrixMarket matrix coordinate integer general\n2 2 2\n1 1 3\n1 1 4\n").unwrap();
    let e = scspecies::data::mtx::read_mtx(&p).unwrap_err().to_string();
    assert!(e.contains("d.mtx") && e.contains("row 1 stores column 1 twice"), "{e}");
}

#[test]
fn entries_outside_the_matrix_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("o.mtx");
    std::fs::write(&p, "%%MatrixMarket matrix coordinate integer general\n2 2 1\n3 1 3\n").unwrap();
    let e = scspecies::data::mtx::read_mtx(&p).unwrap_err().to_string();
    assert!(e.contains("line 3") && e.contains("outside the 2 x 2 matrix"), "{e}");
    // A size line announcing more entries than fit must not allocate for them.
    std::fs::write(&p, "%%MatrixMarket matrix coordinate integer general\n2 2 99999999999\n").unwrap();
    let e = scspecies::data::mtx::read_mtx(&p).unwrap_err().to_string();
    assert!(e.contains("do not fit"), "{e}");
}

/// A sparse minibatch: `rows` x `k` at the given density, values 1-20 (counts after preprocessing).
fn sparse_batch() -> impl Strategy<Value = (usize, usize, usize, Vec<f32>, u64)> {
    (1usize..80, 1usize..400, 1usize..140, 0.0f64..0.6, any::<u64>()).prop_map(|(rows, k, n, density, seed)| {
        let mut s = seed | 1;
        let mut next = move || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        let dense = (0..rows * k).map(|_| if next() < density { (next() * 20.0).floor() as f32 + 1.0 } else { 0.0 }).collect();
        (rows, k, n, dense, seed)
    })
}

fn weights(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed ^ 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// The f32 sparse input layer (gene-blocked forward, register-blocked weight gradient) against
    /// plain loops in the order the kernels promise: bit-identical, including the column remainder
    /// after 64, several row tasks and gene blocks, and empty rows and genes.
    #[test]
    fn sparse_input_layer_matches_plain_loops((rows, k, n, dense, seed) in sparse_batch()) {
        use scspecies::engine::ops::{SparseBatch, sparse_linear_bwd, sparse_linear_fwd, sparse_linear_fwd_rows};
        let x = Csr::from_dense(rows, k, &dense);
        let sb = SparseBatch::new(rows, k, x.indptr.clone(), x.indices.clone(), x.data.clone());
        let (w, b, dy) = (weights(k * n, seed), weights(n, seed + 1), weights(rows * n, seed + 2));
        let mut want = vec![0f32; rows * n];
        for r in 0..rows {
            want[r * n..(r + 1) * n].copy_from_slice(&b);
            for g in 0..k {
                let v = dense[r * k + g];
                if v != 0.0 {
                    for c in 0..n {
                        want[r * n + c] += v * w[g * n + c];
                    }
                }
            }
        }
        let mut y = vec![f32::NAN; rows * n];
        sparse_linear_fwd(&sb, &w, &b, &mut y, n);
        prop_assert!(y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "gene-blocked forward differs from the plain loop");
        let mut y_rows = vec![f32::NAN; rows * n];
        sparse_linear_fwd_rows(&sb, &w, &b, &mut y_rows, n);
        prop_assert!(y_rows.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "row-by-row forward differs from the plain loop");
        let mut want_dw = vec![0f32; k * n];
        for g in 0..k {
            for r in 0..rows {
                let v = dense[r * k + g];
                if v != 0.0 {
                    for c in 0..n {
                        want_dw[g * n + c] += v * dy[r * n + c];
                    }
                }
            }
        }
        let (mut dw, mut db) = (vec![f32::NAN; k * n], vec![0f32; n]);
        sparse_linear_bwd(&sb, &dy, &mut dw, &mut db, n);
        prop_assert!(dw.iter().zip(&want_dw).all(|(a, b)| a.to_bits() == b.to_bits()), "register-blocked weight gradient differs from the plain loop");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// The CPU backend's minibatch densification (rows filled in parallel, straight into the buffer)
    /// against the dense matrix the CSR came from, in f32 and f64.
    #[test]
    fn cpu_upload_dense_matches_the_dense_matrix((rows, k, _n, dense, _seed) in sparse_batch()) {
        use scspecies::engine::{Backend, Cpu};
        let x = Csr::from_dense(rows, k, &dense);
        let got32 = Cpu::<f32>::new().upload_dense(k, &x.indptr, &x.indices, &x.data);
        prop_assert_eq!(&got32, &dense);
        let got64 = Cpu::<f64>::new().upload_dense(k, &x.indptr, &x.indices, &x.data);
        prop_assert!(got64.iter().zip(&dense).all(|(a, &b)| *a == b as f64));
    }
}

/// The CPU backend zeroes large buffers in parallel chunks: every element, the last partial chunk too.
#[test]
fn cpu_large_zeros_are_all_zero() {
    use scspecies::engine::{Backend, Cpu};
    let n = (1 << 18) + (1 << 16) + 7;
    let z = Cpu::<f32>::new().zeros(n);
    assert_eq!(z.len(), n);
    assert!(z.iter().all(|&v| v.to_bits() == 0));
}
