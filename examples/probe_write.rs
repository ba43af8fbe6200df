use scspecies::data::*;
use scspecies::out::h5ad::*;
fn main() {
    let d = read_dataset(std::path::Path::new("../shared/data/baron-pancreas/mouse")).unwrap();
    let lab = d.labels("cell_type").unwrap();
    let n = d.n_cells();
    let a = AnnData {
        x: Some(d.counts.clone()),
        obs_names: d.cells.clone(),
        obs: vec![
            ("cell_type".into(), Values::Categorical(lab.clone())),
            ("s".into(), Values::Strings(d.cells.clone())),
            ("f".into(), Values::F64((0..n).map(|i| i as f64).collect())),
            ("i".into(), Values::I64((0..n as i64).collect())),
        ],
        var_names: d.genes.clone(),
        var: vec![],
        obsm: vec![(
            "X_scspecies".into(),
            3,
            (0..n * 3).map(|i| i as f32).collect(),
        )],
        uns: vec![(
            "meta".into(),
            Uns::Dict(vec![
                ("version".into(), Uns::Str("0.1".into())),
                ("x".into(), Uns::F64(1.5)),
                ("k".into(), Uns::I64(3)),
                ("list".into(), Uns::Strings(vec!["a".into(), "b".into()])),
            ]),
        )],
    };
    let t = std::time::Instant::now();
    a.write(std::path::Path::new("/tmp/h5/out.h5ad")).unwrap();
    println!("written in {:?}", t.elapsed());
    let b = read_dataset(std::path::Path::new("/tmp/h5/out.h5ad")).unwrap();
    assert_eq!(b.counts, d.counts);
    println!("{:?}", b.obs_keys());
}
