//! The consensus of several aligned target models, the per-cell confidence, its calibration table,
//! the member seeds and the data-level kNN's feature spaces: exact values on small hand-made data.

use scspecies::align::member_seed;
use scspecies::data::Csr;
use scspecies::knn::data_level::{cosine_knn, cosine_knn_scaled, per_10k_scale};
use scspecies::pipeline::calibration;
use scspecies::transfer::{Transfer, consensus, flag_outliers};

/// A member's transfer from its votes (rows of `n_labels`), as `transfer` builds it.
fn member(votes: &[[u32; 3]], novelty: &[f64]) -> Transfer {
    let pred: Vec<u32> = votes
        .iter()
        .map(|v| {
            let m = *v.iter().max().unwrap();
            v.iter().position(|&x| x == m).unwrap() as u32
        })
        .collect();
    let share: Vec<f64> = votes.iter().map(|v| *v.iter().max().unwrap() as f64 / v.iter().sum::<u32>() as f64).collect();
    let n = votes.len();
    Transfer {
        member_pred: vec![pred.clone()],
        pred,
        confidence: share.clone(),
        vote_share: share,
        best_similarity: vec![0.5; n],
        best_per_count: vec![0.001; n],
        novelty: novelty.to_vec(),
        unassigned: vec![false; n],
        votes: votes.iter().flatten().copied().collect(),
        member_agreement: vec![1.0; n],
    }
}

#[test]
fn pooled_votes_agreement_and_confidence() {
    let a = member(&[[3, 2, 0], [0, 0, 5]], &[0.1, 0.2]);
    let b = member(&[[1, 4, 0], [0, 1, 4]], &[0.3, 0.2]);
    let c = member(&[[3, 1, 1], [0, 0, 5]], &[0.2, 0.5]);
    let t = consensus(vec![a, b, c], 3, 2.0);
    // Cell 0: pooled [7, 7, 1], a tie between labels 0 and 1 goes to the smaller label; members said
    // 0, 1, 0. Cell 1: pooled [0, 1, 14]; all members said 2.
    assert_eq!(t.pred, vec![0, 2]);
    assert_eq!(t.votes, vec![7, 7, 1, 0, 1, 14]);
    assert_eq!(t.vote_share, vec![7.0 / 15.0, 14.0 / 15.0]);
    assert_eq!(t.member_agreement, vec![2.0 / 3.0, 1.0]);
    assert_eq!(t.confidence, vec![2.0 / 3.0 * (7.0 / 15.0), 14.0 / 15.0]);
    assert_eq!(t.member_pred, vec![vec![0, 2], vec![1, 2], vec![0, 2]]);
    // The misfit is averaged over the members before the flag is set.
    assert_eq!(t.novelty, vec![(0.1 + 0.3 + 0.2) / 3.0, (0.2 + 0.2 + 0.5) / 3.0]);
    assert_eq!(t.unassigned, flag_outliers(&t.novelty, 2.0));
    assert!(t.confidence.iter().all(|c| (0.0..=1.0).contains(c)));
}

#[test]
fn pooling_is_not_a_vote_of_member_labels() {
    // Two members narrowly for label 1, one firmly for label 0: the member majority would say 1, the
    // pooled evidence says 0 (9 of 15 votes against 6).
    let a = member(&[[2, 3, 0]], &[0.0]);
    let b = member(&[[2, 3, 0]], &[0.0]);
    let c = member(&[[5, 0, 0]], &[0.0]);
    let t = consensus(vec![a, b, c], 3, 2.0);
    assert_eq!(t.votes, vec![9, 6, 0]);
    assert_eq!(t.pred, vec![0]);
    assert_eq!(t.member_agreement, vec![1.0 / 3.0]);
    assert_eq!(t.confidence, vec![1.0 / 3.0 * 0.6]);
}

#[test]
fn one_member_is_the_plain_transfer() {
    let mut a = member(&[[1, 4, 0], [0, 3, 2], [5, 0, 0]], &[0.1, 0.9, 0.2]);
    a.unassigned = vec![false, true, false];
    let t = consensus(vec![a.clone()], 3, 2.0);
    assert_eq!(t.pred, a.pred);
    assert_eq!(t.vote_share, a.vote_share);
    assert_eq!(t.confidence, a.vote_share, "one member: confidence = vote share");
    assert_eq!(t.member_agreement, vec![1.0; 3]);
    assert_eq!(t.unassigned, a.unassigned, "one member keeps its own flag");
    assert_eq!(t.novelty, a.novelty);
}

#[test]
fn calibration_bins_shared_and_novel_cells() {
    let names: Vec<String> = ["A", "B"].iter().map(|s| s.to_string()).collect();
    let truth = ["A", "A", "B", "B", "X", "X", "A"];
    let pred = [0u32, 1, 1, 1, 0, 1, 0];
    let conf = [0.1, 0.55, 0.7, 0.95, 0.2, 0.9, 1.0];
    let un = [false, false, false, false, true, false, false];
    let bins = calibration(&truth, &pred, &conf, &un, &names);
    let got: Vec<(usize, usize, usize, usize)> =
        bins.iter().map(|b| (b.shared_cells, b.shared_correct, b.novel_cells, b.novel_unassigned)).collect();
    // [0, .5): A right, X flagged; [.5, .7): A wrong; [.7, .9): B right; [.9, 1]: B right, A right, X not flagged.
    assert_eq!(got, vec![(1, 1, 1, 1), (1, 0, 0, 0), (1, 1, 0, 0), (2, 2, 1, 0)]);
    assert_eq!((bins[0].low, bins[3].high), (0.0, 1.0));
}

#[test]
fn member_seeds() {
    assert_eq!(member_seed(369963, 0), 369963, "member 0 is the run's own seed");
    let mut seen = std::collections::HashSet::new();
    for s in 0..50u64 {
        for m in 0..8 {
            assert!(seen.insert(member_seed(s, m)), "seed {s} member {m} repeats another member's seed");
        }
    }
}

/// Two small count matrices over 6 genes; homologous genes 0..5 map to 5..0 in the target.
fn pair() -> (Csr, Vec<usize>, Csr, Vec<usize>) {
    let ctx = Csr::from_dense(4, 6, &[5., 0., 1., 0., 2., 0., 0., 7., 0., 3., 0., 1., 1., 1., 1., 1., 1., 1., 0., 0., 0., 0., 0., 0.]);
    let tgt = Csr::from_dense(3, 6, &[0., 2., 0., 1., 0., 5., 1., 0., 3., 0., 7., 0., 9., 0., 9., 0., 9., 0.]);
    (ctx, (0..6).collect(), tgt, (0..6).rev().collect())
}

#[test]
fn unit_scale_is_the_reference_space() {
    let (c, cc, t, tc) = pair();
    let a = cosine_knn(&c, &cc, &t, &tc, 4);
    let b = cosine_knn_scaled(&c, &cc, &[1.0; 4], &t, &tc, &[1.0; 3], 4);
    assert_eq!(a, b);
}

#[test]
fn per_10k_scale_counts_only_the_given_columns() {
    let (c, _, _, _) = pair();
    let s = per_10k_scale(&c, &[0, 1, 2]);
    assert_eq!(s, vec![1e4 / 6.0, 1e4 / 7.0, 1e4 / 3.0, 0.0]);
}

#[test]
fn normalised_space_ignores_sequencing_depth() {
    // The same target profiles sequenced 3x deeper: per-10k features are identical, so are the
    // neighbours and distances; log1p of raw counts is not invariant to depth.
    let (c, cc, t, tc) = pair();
    let deep = Csr::from_dense(3, 6, &t.rows_dense(0..3).iter().map(|v| v * 3.0).collect::<Vec<f32>>());
    let cs = per_10k_scale(&c, &cc);
    let a = cosine_knn_scaled(&c, &cc, &cs, &t, &tc, &per_10k_scale(&t, &tc), 4);
    let b = cosine_knn_scaled(&c, &cc, &cs, &deep, &tc, &per_10k_scale(&deep, &tc), 4);
    assert_eq!(a.0, b.0);
    for (x, y) in a.1.iter().zip(&b.1) {
        assert!((x - y).abs() <= 1e-6, "{x} vs {y}");
    }
    let (_, raw_a) = cosine_knn(&c, &cc, &t, &tc, 4);
    let (_, raw_b) = cosine_knn(&c, &cc, &deep, &tc, 4);
    assert!(raw_a.iter().zip(&raw_b).any(|(x, y)| (x - y).abs() > 1e-3), "log1p(raw) should move with depth");
}
