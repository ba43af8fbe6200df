//! Alignment modes and the consensus on a small simulated pair: the intermediate mode keeps the
//! context's inner encoder frozen, the latent mode trains a fresh one; a consensus run trains one model
//! per member (member 0 is the plain run), pools their votes and is reproducible.

use scspecies::align::{AlignConfig, AlignSpace, CandidateSet, member_seed};
use scspecies::engine::{Backend, Cpu};
use scspecies::pipeline::{Inputs, PreparedPair, align_and_transfer, prepare, pretrain};
use scspecies::simulate::{SimConfig, simulate};
use std::sync::OnceLock;

fn pair() -> &'static PreparedPair {
    static P: OnceLock<(tempfile::TempDir, PreparedPair)> = OnceLock::new();
    &P.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = SimConfig { context_cells: 300, target_cells: 260, genes: 200, shared_types: 3, density: 0.2, ..Default::default() };
        simulate(&cfg, tmp.path()).unwrap();
        let inputs = Inputs {
            context: tmp.path().join("context"),
            target: tmp.path().join("target"),
            context_batch_key: Some("batch".into()),
            context_label_key: "cell_type".into(),
            target_batch_key: Some("batch".into()),
            target_label_key: Some("cell_type".into()),
            homology: Some(tmp.path().join("homology.tsv")),
            context_name: "context".into(),
            target_name: "target".into(),
            context_layer: None,
            target_layer: None,
            homology_fill: Default::default(),
        };
        let p = prepare(&inputs, &Default::default(), &scspecies::pipeline::Silent).unwrap();
        (tmp, p)
    })
    .1
}

fn params<B: Backend>(be: &B, m: &scspecies::model::Model<B>, prefix: &str) -> Vec<Vec<f64>> {
    m.params.iter().filter(|p| p.name.starts_with(prefix)).map(|p| be.download(&p.value)).collect()
}

fn run(space: AlignSpace, members: usize, seed: u64) -> (Vec<Vec<f64>>, scspecies::pipeline::AlignRun<Cpu<f32>>) {
    run_with(space, members, seed, |_| {})
}

fn run_with(
    space: AlignSpace,
    members: usize,
    seed: u64,
    edit: impl Fn(&mut AlignConfig),
) -> (Vec<Vec<f64>>, scspecies::pipeline::AlignRun<Cpu<f32>>) {
    let be = Cpu::<f32>::new();
    let p = pair();
    let mut tcfg = scspecies::train::TrainConfig::default_for(p.context.n_cells(), 3);
    tcfg.epochs = 2;
    let ctx = pretrain(&be, p, &tcfg, &scspecies::pipeline::Silent).unwrap();
    let mut acfg = AlignConfig::default_for(p.target.n_cells(), seed);
    acfg.epochs = 2;
    acfg.space = space;
    acfg.members = members;
    edit(&mut acfg);
    let r = align_and_transfer(&be, p, &ctx, &acfg, &Default::default(), &scspecies::pipeline::Silent).unwrap();
    (params(&be, &ctx.model, "inner."), r)
}

#[test]
fn inter_mode_freezes_the_shared_inner_encoder_latent_mode_trains_its_own() {
    let be = Cpu::<f32>::new();
    let (ctx_inner, inter) = run(AlignSpace::Inter, 1, 11);
    assert_eq!(params(&be, inter.model(), "inner."), ctx_inner, "inter mode: the inner encoder is the context's, unchanged");
    let (ctx_inner, latent) = run(AlignSpace::Latent, 1, 11);
    let own = params(&be, latent.model(), "inner.");
    assert_eq!(own.len(), ctx_inner.len());
    assert!(own.iter().zip(&ctx_inner).all(|(a, b)| a != b), "latent mode: a fresh inner encoder, trained");
    let h = latent.history();
    assert!(h.iter().all(|e| e.align.is_finite() && e.align > 0.0), "the latent alignment term is computed");
    assert!(h.last().unwrap().stats.nelbo.is_finite());
}

#[test]
fn consensus_members_and_reproducibility() {
    let (_, one) = run(AlignSpace::Inter, 1, 21);
    let (_, three) = run(AlignSpace::Inter, 3, 21);
    assert_eq!(three.members.len(), 3);
    let seeds: Vec<u64> = three.members.iter().map(|m| m.seed).collect();
    assert_eq!(seeds, vec![21, member_seed(21, 1), member_seed(21, 2)]);
    // Member 0 is the plain one-model run, bit for bit.
    assert_eq!(three.transfer.member_pred[0], one.transfer.pred);
    assert_eq!(three.repr().z_mu, one.repr().z_mu);
    // Each cell's pooled votes: 25 per member; the consensus label has the most of them.
    let nl = three.transfer.votes.len() / three.transfer.pred.len();
    for j in 0..three.transfer.pred.len() {
        let v = &three.transfer.votes[j * nl..(j + 1) * nl];
        assert_eq!(v.iter().sum::<u32>(), 75);
        assert_eq!(v[three.transfer.pred[j] as usize], *v.iter().max().unwrap());
        let agree = three.transfer.member_pred.iter().filter(|p| p[j] == three.transfer.pred[j]).count() as f64 / 3.0;
        assert_eq!(three.transfer.member_agreement[j], agree);
        assert_eq!(three.transfer.confidence[j], agree * three.transfer.vote_share[j]);
    }
    // The same seed gives the same consensus.
    let (_, again) = run(AlignSpace::Inter, 3, 21);
    assert_eq!(again.transfer.pred, three.transfer.pred);
    assert_eq!(again.transfer.confidence, three.transfer.confidence);
}

#[test]
fn candidates_carry_the_knn_label_during_warm_up() {
    let short = |set: CandidateSet| {
        move |c: &mut AlignConfig| {
            c.epochs = 4;
            c.beta.epochs_raise = 2;
            c.eta.epochs_raise = 2;
            c.candidates = set;
        }
    };
    let (_, label) = run_with(AlignSpace::Inter, 1, 5, short(CandidateSet::KnnLabel));
    let (_, warm) = run_with(AlignSpace::Inter, 1, 5, short(CandidateSet::Warmup));
    let (_, all) = run_with(AlignSpace::Inter, 1, 5, short(CandidateSet::All));
    let agreement = |r: &scspecies::pipeline::AlignRun<Cpu<f32>>| -> Vec<f64> {
        r.history().iter().map(|e| e.candidate_label_agreement.unwrap()).collect()
    };
    // Restricted to the kNN label, every chosen candidate carries it.
    assert!(agreement(&label).iter().all(|&a| a == 1.0), "{:?}", agreement(&label));
    // During the 2-epoch ramp the warm-up run is the restricted run, step for step.
    for e in 0..2 {
        assert_eq!(warm.history()[e].stats.nelbo, label.history()[e].stats.nelbo, "epoch {e}");
        assert_eq!(agreement(&warm)[e], 1.0);
    }
    // All 25 neighbours draw other candidates' latents: another trajectory from the first step.
    assert_ne!(all.history()[0].stats.nelbo, label.history()[0].stats.nelbo);
    assert!(agreement(&all).iter().all(|&a| (0.0..=1.0).contains(&a)));
}
