//! Training on the bundled Baron mouse data: the nELBO falls, the latent space separates cell types,
//! a run is bit-for-bit reproducible, the model file round-trips and refuses mismatches, and a
//! diverging run stops with a message naming epoch, step and term.

mod common;
use scspecies::engine::{Backend, Cpu};
use scspecies::pipeline::{PreparedPair, demo_like_inputs, prepare, pretrain};
use scspecies::preprocess::PreprocessConfig;
use scspecies::train::TrainConfig;
use std::sync::OnceLock;

fn pair() -> &'static PreparedPair {
    static P: OnceLock<PreparedPair> = OnceLock::new();
    P.get_or_init(|| prepare(&demo_like_inputs(&common::bundled()), &PreprocessConfig::default(), &scspecies::pipeline::Silent).unwrap())
}

fn cfg(epochs: usize, seed: u64) -> TrainConfig {
    let mut c = TrainConfig::default_for(pair().context.n_cells(), seed);
    c.epochs = epochs;
    c
}

/// Leave-one-out 15-NN majority vote on z_mu, balanced over classes.
fn knn_balanced_accuracy(z: &[f32], dim: usize, labels: &[u32], k: usize) -> f64 {
    let n = labels.len();
    let n_classes = *labels.iter().max().unwrap() as usize + 1;
    let (mut hit, mut tot) = (vec![0usize; n_classes], vec![0usize; n_classes]);
    for i in 0..n {
        let mut d: Vec<(f32, usize)> =
            (0..n).filter(|&j| j != i).map(|j| ((0..dim).map(|t| (z[i * dim + t] - z[j * dim + t]).powi(2)).sum::<f32>(), j)).collect();
        d.select_nth_unstable_by(k, |a, b| a.0.partial_cmp(&b.0).unwrap());
        let mut votes = vec![0usize; n_classes];
        for &(_, j) in &d[..k] {
            votes[labels[j] as usize] += 1;
        }
        let pred = (0..n_classes).max_by_key(|&c| (votes[c], std::cmp::Reverse(c))).unwrap();
        tot[labels[i] as usize] += 1;
        hit[labels[i] as usize] += (pred == labels[i] as usize) as usize;
    }
    let per: Vec<f64> = (0..n_classes).filter(|&c| tot[c] > 0).map(|c| hit[c] as f64 / tot[c] as f64).collect();
    per.iter().sum::<f64>() / per.len() as f64
}

#[test]
fn nelbo_falls_and_latent_space_separates_cell_types() {
    let be = Cpu::<f32>::new();
    let run = pretrain(&be, pair(), &cfg(8, 369963), &scspecies::pipeline::Silent).unwrap();
    let h = &run.history;
    assert_eq!(h.len(), 8);
    // nELBO falls (β rises each epoch, so compare NLL too).
    assert!(h[7].nelbo < 0.8 * h[0].nelbo, "{:?}", h.iter().map(|e| e.nelbo).collect::<Vec<_>>());
    assert!(h[7].nll < h[0].nll);
    let labels: Vec<u32> = pair().context.labels.as_ref().unwrap().codes.iter().map(|c| c.unwrap()).collect();
    let classes = pair().context.labels.as_ref().unwrap().categories.len();
    let bacc = knn_balanced_accuracy(&run.repr.z_mu, run.repr.latent, &labels, 15);
    eprintln!("balanced 15-NN accuracy on z_mu after 8 epochs: {bacc:.3}");
    // 8 cell types: chance is 0.125.
    assert!(bacc > 0.7, "balanced kNN accuracy on z_mu {bacc:.3} (chance {:.3})", 1.0 / classes as f64);
    assert!(run.repr.z_sig.iter().all(|&s| s > 0.0 && s.is_finite()));
    assert_eq!(run.repr.inter.len(), pair().context.n_cells() * 300);
}

#[test]
fn same_seed_same_result_and_model_file_round_trip() {
    let be = Cpu::<f32>::new();
    let a = pretrain(&be, pair(), &cfg(1, 11), &scspecies::pipeline::Silent).unwrap();
    let b = pretrain(&be, pair(), &cfg(1, 11), &scspecies::pipeline::Silent).unwrap();
    let c = pretrain(&be, pair(), &cfg(1, 12), &scspecies::pipeline::Silent).unwrap();
    assert_eq!(a.repr.z_mu, b.repr.z_mu, "same seed must give bit-identical results");
    assert_eq!(a.history[0].nelbo, b.history[0].nelbo);
    assert_ne!(a.repr.z_mu, c.repr.z_mu);
    // Save, load, and get the same representations back (weights are stored as f32: exact).
    let tmp = tempfile::tempdir().unwrap();
    let stem = tmp.path().join("ctx");
    scspecies::model::io::save(&a.model, &be, &a.meta, &stem).unwrap();
    let (m2, meta) = scspecies::model::io::load(&be, &stem).unwrap();
    assert!(meta == a.meta, "the model config differs after a save and load");
    for i in 0..m2.params.len() {
        assert_eq!(be.download(&m2.params[i].value), be.download(&a.model.params[i].value), "{}", m2.params[i].name);
    }
    // A mismatched config is refused with the reason.
    let json = std::fs::read_to_string(stem.with_extension("json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let mut bad = v.clone();
    bad["model"]["latent"] = 12.into();
    std::fs::write(stem.with_extension("json"), bad.to_string()).unwrap();
    let e = scspecies::model::io::load(&be, &stem).err().unwrap().to_string();
    assert!(e.contains("ctx.safetensors") && e.contains("inner.mu.weight") && e.contains("shape"), "{e}");
    let mut bad = v.clone();
    bad["format_version"] = 99.into();
    std::fs::write(stem.with_extension("json"), bad.to_string()).unwrap();
    let e = scspecies::model::io::load(&be, &stem).err().unwrap().to_string();
    assert!(e.contains("ctx.json") && e.contains("version 99"), "{e}");
    std::fs::write(stem.with_extension("json"), json).unwrap();
    std::fs::write(stem.with_extension("safetensors"), b"garbage").unwrap();
    let e = scspecies::model::io::load(&be, &stem).err().unwrap().to_string();
    assert!(e.contains("ctx.safetensors") && e.contains("not a safetensors file"), "{e}");
}

#[test]
fn divergence_stops_with_epoch_step_and_term() {
    let be = Cpu::<f32>::new();
    let mut c = cfg(3, 1);
    c.adam.lr = 1e12; // makes the weights explode after the first update
    let e = pretrain(&be, pair(), &c, &scspecies::pipeline::Silent).err().expect("must diverge").to_string();
    assert!(e.contains("training diverged") && e.contains("epoch 1 step 2"), "{e}");
    assert!(e.contains("NLL") || e.contains("KL_z") || e.contains("KL_l"), "{e}");
}
