//! Neighbour graphs on an embedding (the kNN itself is `crate::knn::self_knn`): UMAP's fuzzy connectivities (as scanpy's
//! `pp.neighbors`), connected components and modularity clustering (Louvain with a resolution
//! parameter: the quality function scanpy's Leiden optimises, without Leiden's refinement step).

use rand::SeedableRng;
use rand::seq::SliceRandom;

/// A symmetric weighted graph in adjacency-list form.
#[derive(Debug, Clone)]
pub struct Graph {
    pub adj: Vec<Vec<(u32, f64)>>,
}

impl Graph {
    pub fn n(&self) -> usize {
        self.adj.len()
    }
    /// Unweighted symmetric graph of the first `k` neighbours per row.
    pub fn from_knn(idx: &[u32], stride: usize, k: usize) -> Graph {
        let n = idx.len() / stride.max(1);
        let mut adj: Vec<Vec<(u32, f64)>> = vec![Vec::new(); n];
        for i in 0..n {
            for &j in &idx[i * stride..i * stride + k.min(stride)] {
                adj[i].push((j, 1.0));
                adj[j as usize].push((i as u32, 1.0));
            }
        }
        for a in &mut adj {
            a.sort_by_key(|e| e.0);
            a.dedup_by_key(|e| e.0);
        }
        Graph { adj }
    }
}

/// UMAP's fuzzy simplicial set (what scanpy calls connectivities) from the first `k` neighbours:
/// per row ρ = distance to the nearest neighbour and σ such that Σ exp(−(d − ρ)/σ) = log2(k + 1),
/// then w + wᵀ − w∘wᵀ. `k` counts other cells (scanpy's n_neighbors includes the cell itself).
pub fn fuzzy_connectivities(idx: &[u32], dist: &[f64], stride: usize, k: usize) -> Graph {
    let n = idx.len() / stride.max(1);
    let k = k.min(stride);
    let target = ((k + 1) as f64).log2();
    let mut directed: Vec<Vec<(u32, f64)>> = vec![Vec::new(); n];
    for i in 0..n {
        let d = &dist[i * stride..i * stride + k];
        let rho = d.iter().copied().find(|&v| v > 0.0).unwrap_or(0.0);
        let (mut lo, mut hi, mut sigma) = (0.0f64, f64::INFINITY, 1.0f64);
        for _ in 0..64 {
            let s: f64 = d.iter().map(|&v| (-((v - rho).max(0.0)) / sigma).exp()).sum();
            if (s - target).abs() < 1e-5 {
                break;
            }
            if s > target {
                hi = sigma;
                sigma = (lo + hi) / 2.0;
            } else {
                lo = sigma;
                sigma = if hi.is_finite() { (lo + hi) / 2.0 } else { sigma * 2.0 };
            }
        }
        let mean_d = d.iter().sum::<f64>() / k.max(1) as f64;
        sigma = sigma.max(1e-3 * mean_d); // UMAP's MIN_K_DIST_SCALE
        for (j, &v) in idx[i * stride..i * stride + k].iter().zip(d) {
            directed[i].push((*j, (-((v - rho).max(0.0)) / sigma).exp()));
        }
    }
    let mut sym: Vec<std::collections::BTreeMap<u32, (f64, f64)>> = vec![Default::default(); n];
    for i in 0..n {
        for &(j, w) in &directed[i] {
            sym[i].entry(j).or_insert((0.0, 0.0)).0 = w;
            sym[j as usize].entry(i as u32).or_insert((0.0, 0.0)).1 = w;
        }
    }
    Graph { adj: sym.into_iter().map(|m| m.into_iter().map(|(j, (a, b))| (j, a + b - a * b)).filter(|e| e.1 > 0.0).collect()).collect() }
}

/// Connected components of the subgraph on `nodes` (edges leaving it are ignored); sizes, largest first.
pub fn component_sizes(g: &Graph, nodes: &[usize]) -> Vec<usize> {
    let mut inside = vec![false; g.n()];
    for &v in nodes {
        inside[v] = true;
    }
    let mut seen = vec![false; g.n()];
    let mut sizes = Vec::new();
    for &s in nodes {
        if seen[s] {
            continue;
        }
        seen[s] = true;
        let (mut stack, mut size) = (vec![s], 0);
        while let Some(v) = stack.pop() {
            size += 1;
            for &(u, _) in &g.adj[v] {
                let u = u as usize;
                if inside[u] && !seen[u] {
                    seen[u] = true;
                    stack.push(u);
                }
            }
        }
        sizes.push(size);
    }
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    sizes
}

/// Modularity with resolution γ: Q = (1/2m) Σ_ij (A_ij − γ k_i k_j / 2m) δ(c_i, c_j).
pub fn modularity(g: &Graph, community: &[usize], gamma: f64) -> f64 {
    let k: Vec<f64> = g.adj.iter().map(|a| a.iter().map(|e| e.1).sum()).collect();
    let m2: f64 = k.iter().sum();
    if m2 <= 0.0 {
        return 0.0;
    }
    let nc = community.iter().max().map_or(0, |&c| c + 1);
    let mut tot = vec![0f64; nc];
    let mut inner = 0.0;
    for i in 0..g.n() {
        tot[community[i]] += k[i];
        for &(j, w) in &g.adj[i] {
            if community[j as usize] == community[i] {
                inner += w;
            }
        }
    }
    (inner - gamma * tot.iter().map(|t| t * t).sum::<f64>() / m2) / m2
}

/// Louvain: local moving of nodes (seeded random order) to the neighbouring community with the best
/// modularity gain, then aggregation, until nothing moves. Community ids are renumbered 0.. by first
/// appearance.
pub fn louvain(g: &Graph, gamma: f64, seed: u64) -> Vec<usize> {
    let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(seed);
    let n0 = g.n();
    let mut member: Vec<usize> = (0..n0).collect(); // original node -> current aggregate node
    let mut cur = g.clone();
    loop {
        let n = cur.n();
        let k: Vec<f64> = cur.adj.iter().map(|a| a.iter().map(|e| e.1).sum()).collect();
        let m2: f64 = k.iter().sum();
        if m2 <= 0.0 {
            break;
        }
        let mut comm: Vec<usize> = (0..n).collect();
        let mut tot = k.clone();
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        let mut moved_any = false;
        let mut w_to = vec![0f64; n];
        let mut touched: Vec<usize> = Vec::new();
        loop {
            let mut moved = 0;
            for &i in &order {
                let ci = comm[i];
                for &(j, w) in &cur.adj[i] {
                    let j = j as usize;
                    if j == i {
                        continue;
                    }
                    let c = comm[j];
                    if w_to[c] == 0.0 {
                        touched.push(c);
                    }
                    w_to[c] += w;
                }
                tot[ci] -= k[i];
                let gain = |c: usize, w: f64| w - gamma * k[i] * tot[c] / m2;
                let mut best = (ci, gain(ci, w_to[ci]));
                for &c in &touched {
                    let gc = gain(c, w_to[c]);
                    if gc > best.1 + 1e-12 || (gc > best.1 - 1e-12 && c < best.0 && best.0 != ci) {
                        best = (c, gc);
                    }
                }
                tot[best.0] += k[i];
                if best.0 != ci {
                    comm[i] = best.0;
                    moved += 1;
                }
                for &c in &touched {
                    w_to[c] = 0.0;
                }
                w_to[ci] = 0.0;
                touched.clear();
            }
            if moved == 0 {
                break;
            }
            moved_any = true;
        }
        if !moved_any {
            break;
        }
        // Aggregate communities into nodes.
        let mut id = vec![usize::MAX; n];
        let mut next = 0;
        for &c in &comm {
            if id[c] == usize::MAX {
                id[c] = next;
                next += 1;
            }
        }
        let mut agg: Vec<std::collections::BTreeMap<u32, f64>> = vec![Default::default(); next];
        for i in 0..n {
            for &(j, w) in &cur.adj[i] {
                *agg[id[comm[i]]].entry(id[comm[j as usize]] as u32).or_insert(0.0) += w;
            }
        }
        for m in member.iter_mut() {
            *m = id[comm[*m]];
        }
        cur = Graph { adj: agg.into_iter().map(|m| m.into_iter().collect()).collect() };
    }
    // Renumber by first appearance.
    let mut id = vec![usize::MAX; cur.n().max(1)];
    let mut next = 0;
    member
        .iter()
        .map(|&c| {
            if id[c] == usize::MAX {
                id[c] = next;
                next += 1;
            }
            id[c]
        })
        .collect()
}
