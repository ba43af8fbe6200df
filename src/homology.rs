//! Homologous genes between the context and the target species.
//!
//! Offline by design (the reference downloads MGI tables at run time): either an ortholog table with
//! two columns (context gene, target gene), or case-insensitive matching of gene symbols. Pairs come
//! out in the order of `np.intersect1d(..., return_indices=True)`: sorted by the shared name, and the
//! first occurrence wins where a name repeats (spec §1.1).

use crate::data::text;
use crate::error::{Error, Result};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// An ortholog table: (context gene, target gene) rows in file order.
#[derive(Debug, Clone)]
pub struct OrthologTable {
    pub path: PathBuf,
    pub pairs: Vec<(String, String)>,
}

impl OrthologTable {
    /// Read a TSV (plain or gzip) with at least two columns: context gene, then target gene. A first line
    /// whose two names appear in neither species is taken as a header by [`match_genes`].
    pub fn read(path: &Path) -> Result<Self> {
        let t = text::read_tsv(path, false)?;
        if t.rows.is_empty() {
            return Err(Error::format(path, "the ortholog table is empty"));
        }
        if t.rows[0].len() < 2 {
            return Err(Error::format(path, "the ortholog table needs two tab-separated columns: context gene, target gene"));
        }
        let pairs = t.rows.into_iter().map(|mut r| (std::mem::take(&mut r[0]), std::mem::take(&mut r[1]))).collect();
        Ok(OrthologTable { path: path.to_path_buf(), pairs })
    }
}

/// How the genes were matched, and how many matched: printed by `inspect`, stored with the model.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HomologyReport {
    pub method: String,
    pub context_genes: usize,
    pub target_genes: usize,
    /// Rows of the ortholog table (0 for symbol matching).
    pub table_rows: usize,
    /// Homologous gene pairs used by the model.
    pub homologous_genes: usize,
    /// Of these, pairs matched by symbol because the table lists neither gene ([`SymbolFill::Gaps`]).
    pub symbol_matched_gaps: usize,
}

/// With an ortholog table: whether genes the table lists on neither side may still be paired by
/// their symbol (case-insensitively).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum SymbolFill {
    /// Only the table's pairs (the reference: a gene missing from its table is non-homologous).
    None,
    /// Also pair a context and a target gene with the same symbol when the table lists neither of them.
    /// Why: curated one-to-one tables leave out genes (the bundled mouse-human table lacks Ppy-PPY, the
    /// marker of PP cells), and symbols across mammals follow one nomenclature; a gene the table does
    /// list keeps the table's partner, so the table is never overruled.
    #[default]
    Gaps,
}

/// Homologous index pairs: `context[k]` and `target[k]` are the same gene, sorted by `names[k]`.
#[derive(Debug, Clone)]
pub struct Homology {
    pub context: Vec<usize>,
    pub target: Vec<usize>,
    /// The shared name (the context symbol, or the upper-cased symbol for symbol matching).
    pub names: Vec<String>,
    pub report: HomologyReport,
}

impl Homology {
    pub fn len(&self) -> usize {
        self.context.len()
    }
    pub fn is_empty(&self) -> bool {
        self.context.is_empty()
    }
}

/// First index of every distinct key, like `np.unique(..., return_index=True)`.
fn first_index<'a>(keys: impl Iterator<Item = Option<&'a str>>) -> HashMap<&'a str, usize> {
    let mut m = HashMap::new();
    for (i, k) in keys.enumerate() {
        if let Some(k) = k {
            m.entry(k).or_insert(i);
        }
    }
    m
}

/// Sorted intersection of two first-occurrence maps.
fn intersect(ctx: &HashMap<&str, usize>, tgt: &HashMap<&str, usize>) -> (Vec<usize>, Vec<usize>, Vec<String>) {
    let shared: BTreeMap<&str, (usize, usize)> = ctx.iter().filter_map(|(k, &i)| tgt.get(k).map(|&j| (*k, (i, j)))).collect();
    let mut c = Vec::with_capacity(shared.len());
    let mut t = Vec::with_capacity(shared.len());
    let mut n = Vec::with_capacity(shared.len());
    for (k, (i, j)) in shared {
        c.push(i);
        t.push(j);
        n.push(k.to_string());
    }
    (c, t, n)
}

/// Match the genes of two species with the table's pairs only ([`SymbolFill::None`], the reference).
pub fn match_genes(context_genes: &[String], target_genes: &[String], table: Option<&OrthologTable>) -> Result<Homology> {
    match_genes_with(context_genes, target_genes, table, SymbolFill::None)
}

/// Match the genes of two species. With a table, each target gene is translated to the context gene of
/// its first row in the table; a gene absent from the table is non-homologous, or with
/// [`SymbolFill::Gaps`] paired with the context gene of the same symbol (case-insensitively) that the
/// table does not list either. Without a table, symbols are compared case-insensitively. Zero
/// homologous genes is an error: nothing could be aligned.
pub fn match_genes_with(
    context_genes: &[String],
    target_genes: &[String],
    table: Option<&OrthologTable>,
    fill: SymbolFill,
) -> Result<Homology> {
    let (c, t, n, report) = match table {
        Some(tab) => {
            let ctx_set: std::collections::HashSet<&str> = context_genes.iter().map(|s| s.as_str()).collect();
            let tgt_set: std::collections::HashSet<&str> = target_genes.iter().map(|s| s.as_str()).collect();
            let mut rows: &[(String, String)] = &tab.pairs;
            if let Some((a, b)) = rows.first()
                && !ctx_set.contains(a.as_str())
                && !tgt_set.contains(b.as_str())
            {
                rows = &rows[1..]; // header line
            }
            let mut translate: HashMap<&str, &str> = HashMap::new();
            for (cg, tg) in rows {
                translate.entry(tg.as_str()).or_insert(cg.as_str());
            }
            let mut filled: std::collections::HashSet<&str> = std::collections::HashSet::new();
            if fill == SymbolFill::Gaps {
                let listed: std::collections::HashSet<&str> = rows.iter().flat_map(|(a, b)| [a.as_str(), b.as_str()]).collect();
                let mut by_symbol: HashMap<String, &str> = HashMap::new();
                for g in context_genes.iter().filter(|g| !listed.contains(g.as_str())) {
                    by_symbol.entry(g.to_uppercase()).or_insert(g.as_str());
                }
                for g in target_genes.iter().filter(|g| !listed.contains(g.as_str())) {
                    if let Some(&cg) = by_symbol.get(&g.to_uppercase())
                        && !translate.contains_key(g.as_str())
                    {
                        translate.insert(g.as_str(), cg);
                        filled.insert(cg);
                    }
                }
            }
            let ctx = first_index(context_genes.iter().map(|g| Some(g.as_str())));
            let tgt = first_index(target_genes.iter().map(|g| translate.get(g.as_str()).copied()));
            let (c, t, n) = intersect(&ctx, &tgt);
            // Read the other way round, does the table fit far better? Then the species (or the table's
            // columns) are swapped, even if a few genes happen to match as given.
            let swapped = rows.iter().filter(|(a, b)| tgt_set.contains(a.as_str()) && ctx_set.contains(b.as_str())).count();
            if !c.is_empty() && swapped > 4 * c.len() {
                return Err(Error::Input(format!(
                    "{}: only {} homologous gene{} as given, but {swapped} table rows match with context and target swapped: the table's first column must be the context species' gene. Swap --context and --target (with their keys), or the table's columns",
                    tab.path.display(),
                    c.len(),
                    if c.len() == 1 { "" } else { "s" }
                )));
            }
            if c.is_empty() {
                // Say which way round the table seems to be, if that is the problem.
                let hint = if swapped > 0 {
                    format!(" {swapped} rows match with the columns swapped: the first column must be the context species' gene")
                } else {
                    " none of its rows names a context gene and a target gene of these datasets: is it the table for this species pair?"
                        .to_string()
                };
                return Err(Error::Input(format!("{}: zero homologous genes between context and target.{hint}", tab.path.display())));
            }
            let symbol_matched_gaps = n.iter().filter(|g| filled.contains(g.as_str())).count();
            let report = HomologyReport {
                method: match fill {
                    SymbolFill::None => format!("ortholog table {}", tab.path.display()),
                    SymbolFill::Gaps => format!("ortholog table {}, plus symbol matches for genes it does not list", tab.path.display()),
                },
                context_genes: context_genes.len(),
                target_genes: target_genes.len(),
                table_rows: rows.len(),
                homologous_genes: c.len(),
                symbol_matched_gaps,
            };
            (c, t, n, report)
        }
        None => {
            let cu: Vec<String> = context_genes.iter().map(|g| g.to_uppercase()).collect();
            let tu: Vec<String> = target_genes.iter().map(|g| g.to_uppercase()).collect();
            let ctx = first_index(cu.iter().map(|g| Some(g.as_str())));
            let tgt = first_index(tu.iter().map(|g| Some(g.as_str())));
            let (c, t, n) = intersect(&ctx, &tgt);
            if c.is_empty() {
                return Err(Error::Input(
                    "zero homologous genes: no gene symbol is shared (case-insensitively) by context and target; pass an ortholog table with --homology".into(),
                ));
            }
            let report = HomologyReport {
                method: "case-insensitive symbol match".into(),
                context_genes: context_genes.len(),
                target_genes: target_genes.len(),
                table_rows: 0,
                homologous_genes: c.len(),
                symbol_matched_gaps: 0,
            };
            (c, t, n, report)
        }
    };
    Ok(Homology { context: c, target: t, names: n, report })
}
