//! Integration metrics, graphs, clustering and UMAP on small inputs with answers computed by hand.

use approx::assert_abs_diff_eq;
use scspecies::analysis::graph::{self, Graph};
use scspecies::analysis::metrics::*;

#[test]
fn nmi_and_ari_match_hand_computed_values() {
    // sklearn's documented example: adjusted_rand_score([0,0,1,1],[0,0,1,2]) = 4/7.
    let a = [0, 0, 1, 1];
    let b = [0, 0, 1, 2];
    assert_abs_diff_eq!(ari(&a, &b), 4.0 / 7.0, epsilon = 1e-12);
    // H(a) = ln 2, H(b) = 1.5 ln 2, MI = ln 2 → NMI = ln 2 / 1.25 ln 2 = 0.8.
    assert_abs_diff_eq!(nmi(&a, &b), 0.8, epsilon = 1e-12);
    assert_abs_diff_eq!(nmi(&a, &a), 1.0, epsilon = 1e-12);
    assert_abs_diff_eq!(ari(&[0, 0, 1, 1], &[1, 1, 0, 0]), 1.0, epsilon = 1e-12);
    // Independent labelings: MI = 0.
    assert_abs_diff_eq!(nmi(&[0, 0, 1, 1], &[0, 1, 0, 1]), 0.0, epsilon = 1e-12);
    assert!(ari(&[0, 0, 1, 1], &[0, 1, 0, 1]) < 0.0);
}

#[test]
fn silhouettes_match_hand_computed_values() {
    // Points 0, 1, 4, 5 on a line; labels {0,1} and {4,5}.
    let x = [0.0, 1.0, 4.0, 5.0];
    let s = silhouette_samples(&x, 1, &[0, 0, 1, 1]);
    let want = [3.5 / 4.5, 2.5 / 3.5, 2.5 / 3.5, 3.5 / 4.5];
    for (a, b) in s.iter().zip(want) {
        assert_abs_diff_eq!(*a, b, epsilon = 1e-12);
    }
    let mean = want.iter().sum::<f64>() / 4.0;
    assert_abs_diff_eq!(silhouette_label(&x, 1, &[0, 0, 1, 1]), (mean + 1.0) / 2.0, epsilon = 1e-12);
    // One cell type, species alternating: silhouettes -0.25, -0.5, -0.5, -0.25 → 1-|s| mean 0.625.
    assert_abs_diff_eq!(silhouette_batch(&x, 1, &[0, 0, 0, 0], &[0, 1, 0, 1]), 0.625, epsilon = 1e-12);
    // A cell alone in its label scores 0 (sklearn).
    assert_eq!(silhouette_samples(&x, 1, &[0, 0, 0, 1])[3], 0.0);
    // A type in one species only is skipped; none left → NaN.
    assert!(silhouette_batch(&x, 1, &[0, 0, 1, 1], &[0, 0, 1, 1]).is_nan());
}

#[test]
fn graph_connectivity_counts_the_largest_component_per_type() {
    // Type 0 = {0,1,2} with only the edge 0-1; type 1 = {3,4} with 3-4; an edge 2-3 crosses types.
    let g = Graph { adj: vec![vec![(1, 1.0)], vec![(0, 1.0)], vec![(3, 1.0)], vec![(2, 1.0), (4, 1.0)], vec![(3, 1.0)]] };
    assert_abs_diff_eq!(graph_connectivity(&g, &[0, 0, 0, 1, 1]), (2.0 / 3.0 + 1.0) / 2.0, epsilon = 1e-12);
    assert_eq!(graph::component_sizes(&g, &[0, 1, 2, 3, 4]), vec![3, 2]);
}

#[test]
fn chi2_survival_matches_tables() {
    assert_abs_diff_eq!(chi2_sf(3.841458820694124, 1.0), 0.05, epsilon = 1e-10);
    assert_abs_diff_eq!(chi2_sf(5.991464547107979, 2.0), 0.05, epsilon = 1e-10);
    assert_abs_diff_eq!(chi2_sf(15.987179172105261, 10.0), 0.10, epsilon = 1e-10);
    assert_abs_diff_eq!(chi2_sf(0.0, 3.0), 1.0, epsilon = 1e-15);
    assert_abs_diff_eq!(chi2_sf(100.0, 2.0), (-50f64).exp(), epsilon = 1e-25);
}

#[test]
fn pcr_weights_r2_by_variance() {
    // PC 1 (variance 3) separates the groups exactly (R² 1), PC 2 (variance 1) not at all (R² 0).
    let scores = [1.0, 1.0, 1.0, -1.0, -1.0, 1.0, -1.0, -1.0];
    assert_abs_diff_eq!(pcr(&scores, &[3.0, 1.0], &[0, 0, 1, 1]), 0.75, epsilon = 1e-12);
}

#[test]
fn eigen_and_pca() {
    let (vals, vecs) = sym_eigen(&[2.0, 1.0, 1.0, 2.0], 2);
    assert_abs_diff_eq!(vals[0], 3.0, epsilon = 1e-12);
    assert_abs_diff_eq!(vals[1], 1.0, epsilon = 1e-12);
    assert_abs_diff_eq!(vecs[0].abs(), 0.5f64.sqrt(), epsilon = 1e-12);
    // The sparse randomised PCA finds the same variances as the dense one.
    let (n, d) = (60, 12);
    let x: Vec<f64> = (0..n * d).map(|i| ((i * 7919 % 101) as f64 / 10.0) * if i % 3 == 0 { 1.0 } else { 0.0 }).collect();
    let (_, v_dense) = pca_dense(&x, d, 4);
    let rows: Vec<Vec<(u32, f64)>> =
        (0..n).map(|i| (0..d).filter(|&j| x[i * d + j] != 0.0).map(|j| (j as u32, x[i * d + j])).collect()).collect();
    let (_, v_sparse) = pca_sparse(&rows, d, 4, 1);
    for (a, b) in v_dense.iter().zip(&v_sparse) {
        assert_abs_diff_eq!(*a, *b, epsilon = 1e-6 * v_dense[0]);
    }
}

#[test]
fn isolated_labels_are_those_in_fewest_species() {
    let x = [0.0, 1.0, 4.0, 5.0, 9.0, 10.0];
    let labels = [0, 0, 1, 1, 2, 2];
    let species = [0, 1, 0, 1, 0, 0];
    let sil = silhouette_samples(&x, 1, &labels);
    let (score, iso) = isolated_labels(&sil, &labels, &species);
    assert_eq!(iso, vec![2]);
    assert_abs_diff_eq!(score, ((sil[4] + 1.0) / 2.0 + (sil[5] + 1.0) / 2.0) / 2.0, epsilon = 1e-12);
}

#[test]
fn kbet_accepts_mixed_and_rejects_separated_species() {
    // 80 cells of one type on a line; species alternate (mixed) or split in halves far apart.
    let x: Vec<f64> = (0..80).map(|i| i as f64).collect();
    let mixed: Vec<usize> = (0..80).map(|i| i % 2).collect();
    assert!(kbet_per_label(&x, 1, &[0; 80], &mixed, 0.05) > 0.95);
    let xs: Vec<f64> = (0..80).map(|i| if i < 40 { i as f64 } else { 1000.0 + i as f64 }).collect();
    let split: Vec<usize> = (0..80).map(|i| usize::from(i >= 40)).collect();
    assert_eq!(kbet_per_label(&xs, 1, &[0; 80], &split, 0.05), 0.0);
}

/// Two 4-cliques joined by one edge.
fn two_cliques() -> Graph {
    let mut adj = vec![Vec::new(); 8];
    for c in [0usize, 4] {
        for (i, row) in adj.iter_mut().enumerate().skip(c).take(4) {
            row.extend((c..c + 4).filter(|&j| j != i).map(|j| (j as u32, 1.0)));
        }
    }
    adj[3].push((4, 1.0));
    adj[4].push((3, 1.0));
    Graph { adj }
}

#[test]
fn louvain_finds_the_two_cliques() {
    let g = two_cliques();
    let c = graph::louvain(&g, 1.0, 7);
    assert_eq!(c, vec![0, 0, 0, 0, 1, 1, 1, 1]);
    // m = 13 edges; each side has 6 internal edges and degree sum 13: Q = 12/13 − 2·(13/26)² = 0.4231.
    assert_abs_diff_eq!(modularity_of(&g, &c), 12.0 / 13.0 - 0.5, epsilon = 1e-12);
    // A tiny resolution merges everything.
    assert!(graph::louvain(&g, 0.01, 7).iter().all(|&x| x == 0));
}

fn modularity_of(g: &Graph, c: &[usize]) -> f64 {
    graph::modularity(g, c, 1.0)
}

#[test]
fn knn_and_fuzzy_graph() {
    let x = [0.0, 1.0, 3.0, 7.0];
    let (idx, dist) = scspecies::knn::self_knn(&x, 1, 2);
    assert_eq!(idx, vec![1, 2, 0, 2, 1, 0, 2, 1]);
    assert_eq!(dist, vec![1.0, 3.0, 1.0, 2.0, 2.0, 3.0, 4.0, 6.0]);
    let g = graph::fuzzy_connectivities(&idx, &dist, 2, 2);
    // Symmetric, nearest neighbour weight 1, all weights in (0, 1].
    for (i, nb) in g.adj.iter().enumerate() {
        for &(j, w) in nb {
            assert!(w > 0.0 && w <= 1.0);
            let back = g.adj[j as usize].iter().find(|e| e.0 as usize == i).unwrap().1;
            assert_abs_diff_eq!(w, back, epsilon = 1e-15);
        }
    }
    assert_abs_diff_eq!(g.adj[0].iter().find(|e| e.0 == 1).unwrap().1, 1.0, epsilon = 1e-12);
}

#[test]
fn umap_keeps_separated_clusters_apart_and_is_seeded() {
    // Three tight clusters in 5-D.
    let (n, d) = (90, 5);
    let x: Vec<f64> = (0..n * d).map(|i| (i / d / 30) as f64 * 20.0 + ((i * 2654435761usize) % 1000) as f64 / 1000.0).collect();
    let y = scspecies::analysis::umap::umap(&x, d, 15, 3);
    let flat: Vec<f64> = y.iter().flat_map(|p| [p[0], p[1]]).collect();
    let (idx, _) = scspecies::knn::self_knn(&flat, 2, 5);
    for i in 0..n {
        for &j in &idx[i * 5..(i + 1) * 5] {
            assert_eq!(i / 30, j as usize / 30, "cell {i}'s 2-D neighbour {j} is from another cluster");
        }
    }
    assert_eq!(y, scspecies::analysis::umap::umap(&x, d, 15, 3));
}

#[test]
fn score_all_ranks_an_integrated_embedding_above_a_separated_one() {
    // Two types, two species. Integrated: species overlap within types; separated: species apart.
    let n = 200;
    let labels: Vec<usize> = (0..n).map(|i| (i / 50) % 2).collect();
    let species: Vec<usize> = (0..n).map(|i| usize::from(i >= 100)).collect();
    use rand::{RngExt, SeedableRng};
    let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(5);
    let noise: Vec<f64> = (0..n + 7).map(|_| rng.random::<f64>()).collect();
    let jitter = |i: usize| noise[i];
    let mixed: Vec<f64> = (0..n).flat_map(|i| [labels[i] as f64 * 10.0 + jitter(i), jitter(i + 7)]).collect();
    let apart: Vec<f64> = (0..n).flat_map(|i| [labels[i] as f64 * 10.0 + jitter(i), species[i] as f64 * 5.0 + jitter(i + 7)]).collect();
    let (s_apart, v_apart) = pca_dense(&apart, 2, 2);
    let pcr_pre = pcr(&s_apart, &v_apart, &species);
    let good = score_all(&mixed, 2, &labels, &species, pcr_pre, 0);
    let bad = score_all(&apart, 2, &labels, &species, pcr_pre, 0);
    assert!(good.species_mixing > bad.species_mixing + 0.3, "{good:?} vs {bad:?}");
    // Modularity splits a uniform blob even at resolution 0.2, so NMI stays below 1; the types never mix.
    assert!(good.nmi > 0.7 && good.cell_type_asw > 0.85, "{good:?}");
    assert!(good.kbet > 0.8 && bad.kbet < 0.05);
}

#[test]
fn histogram_mode_follows_numpy_fd_bins() {
    use scspecies::analysis::similarity::histogram_mode;
    // IQR 1.25 (numpy's linear percentiles 2 and 3.25), width 2·1.25/8^(1/3) = 1.25 → ceil(9/1.25) = 8
    // bins of 1.125 from 1: counts 3, 3, 1, 0, 0, 0, 0, 1 → the first fullest bin, midpoint 1.5625.
    assert_abs_diff_eq!(histogram_mode(&[1.0, 2.0, 2.0, 3.0, 3.0, 3.0, 4.0, 10.0]), 1.5625, epsilon = 1e-12);
    assert_eq!(histogram_mode(&[5.0, 5.0]), 5.0);
    assert!(histogram_mode(&[]).is_nan());
    // Zero IQR → one bin over [min, max].
    assert_abs_diff_eq!(histogram_mode(&[0.0, 1.0, 1.0, 1.0, 1.0, 4.0]), 2.0, epsilon = 1e-12);
}
