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
