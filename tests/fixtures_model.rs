//! Regression against the reference's small model (`small_model_{zinb,nb}.json`) and Adam (`adam.json`):
//! load the parameters, run the eval-mode forward with the fixture's noise, compare every output and the
//! gradients of `loss` and `loss_target` for every parameter. Tolerances from the fixtures README:
//! forward 1e-5 relative, gradients 1e-3 relative or 1e-5 absolute. The engine runs in f32 here.

mod common;
use scspecies::engine::likelihood::Distribution;
use scspecies::engine::{Backend, Cpu};
use scspecies::model::{Batch, InterTarget, Model, ModelConfig, Noise};
use serde_json::Value;

fn fixture(name: &str) -> Option<Value> {
    let d = common::shared_data(name)?;
    let p = d.parent().unwrap().parent().unwrap().join("fixtures").join(name);
    Some(serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
}

fn arr(v: &Value, k: &str) -> Vec<f64> {
    let d = &v[k]["data"];
    match d.as_array() {
        Some(a) => a.iter().map(|x| x.as_f64().unwrap()).collect(),
        None => vec![d.as_f64().unwrap_or_else(|| panic!("{k} missing"))],
    }
}

struct Report(Vec<String>);
impl Report {
    fn cmp(&mut self, what: &str, got: &[f64], want: &[f64], rel: f64, abs: f64) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for i in 0..got.len() {
            let e = (got[i] - want[i]).abs();
            if e > rel * want[i].abs() && e > abs {
                self.0.push(format!("{what}[{i}]: got {:e}, want {:e}", got[i], want[i]));
            }
        }
    }
}

fn run(file: &str, dist: Distribution) {
    let Some(f) = fixture(file) else { return };
    let c = &f["config"];
    let u = |k: &str| c[k].as_u64().unwrap() as usize;
    let v = |k: &str| c[k].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect::<Vec<_>>();
    let (rows, n, s) = (u("batch"), u("genes"), u("batches"));
    let cfg = ModelConfig {
        n_genes: n,
        n_batches: s,
        outer_dims: v("outer_dims"),
        inner_dims: v("inner_dims"),
        latent: u("latent"),
        library_dims: v("library_dims"),
        decoder_dims: v("decoder_dims"),
        distribution: dist,
        dropout: 0.1,
        lib_mu_add: c["lib_mu_add"].as_f64().unwrap(),
        homologous: v("homologous_genes"),
    };
    let (beta, eta) = (c["beta"].as_f64().unwrap(), c["eta"].as_f64().unwrap());
    let be = Cpu::<f32>::new();
    let mut rng = <rand::rngs::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
    let mut model = Model::new(&be, cfg, &mut rng);
    for i in 0..model.params.len() {
        let name = format!("param.{}", model.params[i].name);
        assert_eq!(
            f[&name]["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect::<Vec<_>>(),
            model.params[i].torch_shape,
            "{name}"
        );
        model.set_torch(&be, i, &arr(&f, &name));
    }
    // Minibatch: dense counts to CSR, batch from the one-hot.
    let x = arr(&f, "x");
    let oh = arr(&f, "batch_onehot");
    let (mut indptr, mut genes, mut vals) = (vec![0usize], Vec::new(), Vec::new());
    for r in 0..rows {
        for g in 0..n {
            if x[r * n + g] != 0.0 {
                genes.push(g as u32);
                vals.push(x[r * n + g] as f32);
            }
        }
        indptr.push(genes.len());
    }
    let batch: Vec<u32> = (0..rows).map(|r| (0..s).find(|&b| oh[r * s + b] == 1.0).unwrap() as u32).collect();
    let b = Batch::new(&be, n, s, &indptr, &genes, &vals, batch, &arr(&f, "prior_mu"), &arr(&f, "prior_sig"));
    let noise = Noise { masks: None, eps_z: be.upload(&arr(&f, "eps_z")), eps_l: be.upload(&arr(&f, "eps_l")) };
    let fw = model.forward(&be, &b, &noise);

    let mut rep = Report(Vec::new());
    let (rel, abs) = (1e-5, 1e-6);
    rep.cmp("inter", &be.download(&fw.outer.last().unwrap().out), &arr(&f, "inter"), rel, abs);
    rep.cmp("z_mu", &be.download(&fw.z_mu), &arr(&f, "z_mu"), rel, abs);
    rep.cmp("z_log_sig", &be.download(&fw.z_ls), &arr(&f, "z_log_sig"), rel, abs);
    rep.cmp("z", &be.download(&fw.z), &arr(&f, "z"), rel, abs);
    rep.cmp("l_mu", &be.download(&fw.l_mu), &arr(&f, "l_mu"), rel, abs);
    rep.cmp("l_log_sig", &be.download(&fw.l_ls), &arr(&f, "l_log_sig"), rel, abs);
    rep.cmp("library", &be.download(&fw.lib), &arr(&f, "library"), rel, abs);
    rep.cmp("theta", &be.download(&fw.theta), &arr(&f, "theta"), rel, abs);
    rep.cmp("rho", &be.download(&fw.rho), &arr(&f, "rho"), rel, 1e-9);
    if let Some(l) = &fw.logit {
        rep.cmp("pi_nlogit", &be.download(l), &arr(&f, "pi_nlogit"), rel, abs);
    }
    rep.cmp("nll_cell", &be.download(&fw.nll), &arr(&f, "nll_cell"), rel, abs);
    let aligned: Vec<usize> = v("aligned_rows");
    let ci = arr(&f, "context_inter");
    let d = model.cfg.inter_dim();
    let targets: Vec<Vec<f64>> = (0..aligned.len()).map(|k| ci[k * d..(k + 1) * d].to_vec()).collect();
    let t = InterTarget::<Cpu<f32>>::new(&aligned, &targets, eta);
    let l = model.losses(&be, &fw, Some(&t));
    rep.cmp("kl_z", &[l.kl_z], &arr(&f, "kl_z"), rel, abs);
    rep.cmp("kl_l", &[l.kl_l], &arr(&f, "kl_l"), rel, abs);
    rep.cmp("loss", &[l.total(beta, 0.0)], &arr(&f, "loss"), rel, abs);
    rep.cmp("align", &[l.align], &arr(&f, "align"), rel, abs);
    rep.cmp("loss_target", &[l.total(beta, eta)], &arr(&f, "loss_target"), rel, abs);

    for (key, target) in [("loss", None), ("loss_target", Some(&t))] {
        model.backward(&be, &b, &noise, &fw, beta, target);
        for i in 0..model.params.len() {
            let name = model.params[i].name.clone();
            rep.cmp(&format!("grad.{key}.{name}"), &model.grad_torch(&be, i), &arr(&f, &format!("grad.{key}.{name}")), 1e-3, 1e-5);
        }
    }
    assert!(rep.0.is_empty(), "{file}: {} mismatches:\n{}", rep.0.len(), rep.0.iter().take(40).cloned().collect::<Vec<_>>().join("\n"));
}

#[test]
fn small_model_zinb_matches_reference() {
    run("small_model_zinb.json", Distribution::Zinb);
}

#[test]
fn small_model_nb_matches_reference() {
    run("small_model_nb.json", Distribution::Nb);
}

#[test]
fn adam_matches_pytorch() {
    let Some(f) = fixture("adam.json") else {
        return;
    };
    let init = arr(&f, "init");
    let grads = arr(&f, "grads");
    let want = arr(&f, "final");
    let n = init.len();
    let cfg = scspecies::engine::ops::AdamConfig::default();
    let be = Cpu::<f64>::new();
    let (mut p, mut m, mut v) = (be.upload(&init), be.zeros(n), be.zeros(n));
    for t in 0..grads.len() / n {
        let g = be.upload(&grads[t * n..(t + 1) * n]);
        be.adam(&cfg, t as u64 + 1, &mut p, &g, &mut m, &mut v);
    }
    let mut rep = Report(Vec::new());
    rep.cmp("adam", &be.download(&p), &want, 1e-10, 1e-12);
    // And in f32, the engine's working precision.
    let be = Cpu::<f32>::new();
    let (mut p, mut m, mut v) = (be.upload(&init), be.zeros(n), be.zeros(n));
    for t in 0..grads.len() / n {
        let g = be.upload(&grads[t * n..(t + 1) * n]);
        be.adam(&cfg, t as u64 + 1, &mut p, &g, &mut m, &mut v);
    }
    rep.cmp("adam_f32", &be.download(&p), &want, 1e-5, 1e-6);
    assert!(rep.0.is_empty(), "{}", rep.0.join("\n"));
}
