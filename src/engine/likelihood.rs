//! ZINB and NB log-likelihoods of one count with their gradients (spec §3, §3.1), in f64.
//!
//! Notation: x count, θ dispersion, ρ normalised expression, l library size, μ = ρ·l, s the logit of the
//! **non**-dropout probability. Clamps as the reference applies them, in order: θ ≥ 1e-7,
//! ρ ∈ [1e-8, 1 − 1e-7]; where a clamp is active its gradient is 0.

use super::special::{digamma_diff, lgamma_ratio, ln_factorial, softplus, softplus_sigmoid, softplus_sigmoid_neg};

pub const THETA_MIN: f64 = 1e-7;
pub const RHO_MIN: f64 = 1e-8;
pub const RHO_MAX: f64 = 1.0 - 1e-7;
pub const P_MIN: f64 = 1e-7;
pub const P_MAX: f64 = 1.0 - 1e-7;

/// Which count distribution the decoder models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    Zinb,
    Nb,
}

/// The log-likelihood and its partial derivatives w.r.t. θ, ρ, l and s.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LogLik {
    pub ll: f64,
    pub d_theta: f64,
    pub d_rho: f64,
    pub d_lib: f64,
    pub d_logit: f64,
}

/// ZINB: log[(1−π)·NB(x; μ, θ) + π·1{x=0}] with π = σ(−s).
#[inline]
pub fn zinb(x: f64, theta: f64, rho: f64, lib: f64, s: f64) -> LogLik {
    let theta_free = theta >= THETA_MIN;
    let th = theta.max(THETA_MIN);
    let rho_free = (RHO_MIN..=RHO_MAX).contains(&rho);
    let r = rho.clamp(RHO_MIN, RHO_MAX);
    let mu = r * lib;
    let tm = th + mu;
    // θ(log θ − log(θ+μ)) = −θ·log1p(μ/θ), accurate for θ ≫ μ. log1p is a libm call the compiler does
    // not merge, so it is evaluated once here.
    let l1 = (mu / th).ln_1p();
    let th_log = -th * l1;
    let (ll, d_s, d_th, d_mu);
    if x < 1e-7 {
        // The zero branch is ~90 % of all entries: share one exp between softplus and sigmoid.
        let a = s + th_log;
        let (sp_a, sa) = softplus_sigmoid(a);
        let (sp_s, ss) = softplus_sigmoid(s);
        ll = sp_a - sp_s;
        d_s = sa - ss;
        d_th = sa * (mu / tm - l1);
        d_mu = -sa * th / tm;
    } else {
        // x(log μ − log(θ+μ)) = −x·log1p(θ/μ). softplus(s) and σ(−s) share exp(−|s|).
        let (sp_s, sig_neg) = softplus_sigmoid_neg(s);
        ll = -sp_s + s + th_log - x * (th / mu).ln_1p() + lgamma_ratio(x, th) - ln_factorial(x);
        d_s = sig_neg;
        d_th = -l1 + (mu - x) / tm + digamma_diff(x, th);
        d_mu = x / mu - (x + th) / tm;
    }
    LogLik {
        ll,
        d_theta: if theta_free { d_th } else { 0.0 },
        d_rho: if rho_free { d_mu * lib } else { 0.0 },
        d_lib: d_mu * r,
        d_logit: d_s,
    }
}

/// NB with success probability p = clamp(μ/(μ+θ)); `d_logit` is 0.
#[inline]
pub fn nb(x: f64, theta: f64, rho: f64, lib: f64) -> LogLik {
    let theta_free = theta >= THETA_MIN;
    let th = theta.max(THETA_MIN);
    let rho_free = (RHO_MIN..=RHO_MAX).contains(&rho);
    let r = rho.clamp(RHO_MIN, RHO_MAX);
    let mu = r * lib;
    let tm = th + mu;
    let p = mu / tm;
    let lg = lgamma_ratio(x, th) - ln_factorial(x);
    let dlg = digamma_diff(x, th);
    if (P_MIN..=P_MAX).contains(&p) {
        // x·log p + θ·log(1−p) with the logs written to keep precision at both ends.
        let ll = -x * (th / mu).ln_1p() - th * (mu / th).ln_1p() + lg;
        let d_th = -(mu / th).ln_1p() + (mu - x) / tm + dlg;
        let d_mu = x / mu - (x + th) / tm;
        LogLik {
            ll,
            d_theta: if theta_free { d_th } else { 0.0 },
            d_rho: if rho_free { d_mu * lib } else { 0.0 },
            d_lib: d_mu * r,
            d_logit: 0.0,
        }
    } else {
        // p is clamped: no gradient through p; θ still enters directly and through the lgamma terms.
        let pc = p.clamp(P_MIN, P_MAX);
        let ll = x * pc.ln() + th * (-pc).ln_1p() + lg;
        LogLik { ll, d_theta: if theta_free { (-pc).ln_1p() + dlg } else { 0.0 }, d_rho: 0.0, d_lib: 0.0, d_logit: 0.0 }
    }
}

/// The ZINB log-likelihood value only (no gradients), for scoring.
#[inline]
pub fn zinb_ll(x: f64, theta: f64, rho: f64, lib: f64, s: f64) -> f64 {
    let th = theta.max(THETA_MIN);
    let mu = rho.clamp(RHO_MIN, RHO_MAX) * lib;
    let th_log = -th * (mu / th).ln_1p();
    if x < 1e-7 {
        softplus(s + th_log) - softplus(s)
    } else {
        -softplus(s) + s + th_log - x * (th / mu).ln_1p() + lgamma_ratio(x, th) - ln_factorial(x)
    }
}

/// The NB log-likelihood value only, for scoring.
#[inline]
pub fn nb_ll(x: f64, theta: f64, rho: f64, lib: f64) -> f64 {
    nb(x, theta, rho, lib).ll
}
