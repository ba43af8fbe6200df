fn main() {
    for p in std::env::args().skip(1) {
        let t = std::time::Instant::now();
        match scspecies::data::read_dataset(std::path::Path::new(&p)) {
            Ok(d) => println!(
                "{p}: {} x {} nnz {} keys {:?} first cell {} gene {} {:?} in {:?}",
                d.n_cells(),
                d.n_genes(),
                d.counts.nnz(),
                d.obs_keys(),
                d.cells[0],
                d.genes[0],
                d.counts.row(0).1.iter().take(5).collect::<Vec<_>>(),
                t.elapsed()
            ),
            Err(e) => println!("{p}: ERROR {e}"),
        }
    }
}
