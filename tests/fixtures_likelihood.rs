//! Regression against the reference's likelihood (`../shared/fixtures/likelihood.json`, f64 PyTorch):
//! per-element NLL to 1e-5 relative, gradients to 1e-3 relative or 1e-5 absolute (the fixtures README).

mod common;
use scspecies::engine::likelihood::{nb, zinb};

fn load(name: &str) -> Option<serde_json::Value> {
    let root = common::shared_data(name)?;
    let p = root.parent().unwrap().parent().unwrap().join("fixtures/likelihood.json");
    Some(serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
}

fn col(v: &serde_json::Value, k: &str) -> Vec<f64> {
    v[k]["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn close(got: f64, want: f64, rel: f64, abs: f64) -> bool {
    (got - want).abs() <= rel * want.abs() || (got - want).abs() <= abs
}

#[test]
fn zinb_and_nb_match_the_reference() {
    let Some(f) = load("zinb_and_nb_match_the_reference") else {
        return;
    };
    let (x, th, rho, lib, s) = (col(&f, "x"), col(&f, "theta"), col(&f, "rho"), col(&f, "library"), col(&f, "pi_nlogit"));
    let mut bad = Vec::new();
    for i in 0..x.len() {
        let z = zinb(x[i], th[i], rho[i], lib[i], s[i]);
        let n = nb(x[i], th[i], rho[i], lib[i]);
        // The fixture stores NLL and gradients of the NLL.
        let checks = [
            ("zinb_nll", -z.ll, 1e-5, 1e-9),
            ("zinb_grad_theta", -z.d_theta, 1e-3, 1e-5),
            ("zinb_grad_rho", -z.d_rho, 1e-3, 1e-5),
            ("zinb_grad_library", -z.d_lib, 1e-3, 1e-5),
            ("zinb_grad_pi_nlogit", -z.d_logit, 1e-3, 1e-5),
            ("nb_nll", -n.ll, 1e-5, 1e-9),
            ("nb_grad_theta", -n.d_theta, 1e-3, 1e-5),
            ("nb_grad_rho", -n.d_rho, 1e-3, 1e-5),
            ("nb_grad_library", -n.d_lib, 1e-3, 1e-5),
        ];
        for (k, got, rel, abs) in checks {
            let want = f[k]["data"][i].as_f64().unwrap();
            if !close(got, want, rel, abs) {
                bad.push(format!("{k}[{i}] x={} θ={} ρ={} l={} s={}: got {got:e}, want {want:e}", x[i], th[i], rho[i], lib[i], s[i]));
            }
        }
    }
    assert!(bad.is_empty(), "{} mismatches:\n{}", bad.len(), bad.iter().take(30).cloned().collect::<Vec<_>>().join("\n"));
}
