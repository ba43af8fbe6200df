//! The folder format: either ours (`counts.mtx[.gz]` cells x genes + `genes.tsv` + `cells.tsv` with a
//! header naming the obs columns) or 10x Genomics' (`matrix.mtx[.gz]` genes x cells + `features.tsv[.gz]`
//! or `genes.tsv[.gz]` + `barcodes.tsv[.gz]`, optionally with a `cells.tsv` for annotations).

use super::dataset::{Categorical, Column, Dataset, ObsColumns};
use super::mtx::{read_mtx, read_shape};
use super::text::{self, first_existing};
use crate::error::{Error, Result};
use std::path::Path;

pub fn read_folder(dir: &Path) -> Result<Dataset> {
    if !dir.is_dir() {
        return Err(Error::io(dir, std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder")));
    }
    if let Some(mtx) = first_existing(dir, &["counts.mtx", "counts.mtx.gz"]) {
        let genes_path =
            first_existing(dir, &["genes.tsv", "genes.tsv.gz"]).ok_or_else(|| Error::format(dir, "found counts.mtx but no genes.tsv"))?;
        let cells_path =
            first_existing(dir, &["cells.tsv", "cells.tsv.gz"]).ok_or_else(|| Error::format(dir, "found counts.mtx but no cells.tsv"))?;
        // The names first: they bound the matrix's shape before its entries are read.
        let (n_rows, n_cols) = read_shape(&mtx)?;
        let gene_table = text::read_tsv(&genes_path, false)?;
        let cell_table = text::read_tsv(&cells_path, true)?;
        let n_gene_lines = gene_table.rows.len();
        let n_cells_listed = cell_table.rows.len();
        let fits = |cells: usize, genes: usize| n_cells_listed == cells && (n_gene_lines == genes || n_gene_lines == genes + 1);
        if !fits(n_rows, n_cols) && fits(n_cols, n_rows) {
            return Err(Error::format(
                &mtx,
                format!(
                    "the matrix is {n_rows} x {n_cols}, which fits genes as rows and cells as columns ({n_gene_lines} lines in genes.tsv, {n_cells_listed} cells in cells.tsv), but counts.mtx must be cells x genes: transpose it, or use the 10x layout (matrix.mtx genes x cells with barcodes.tsv)"
                ),
            ));
        }
        let genes = gene_names(gene_table, n_cols)?;
        let (cells, obs) = cells_table(cell_table, n_rows)?;
        let counts = read_mtx(&mtx)?;
        let ds = Dataset { source: dir.to_path_buf(), counts, cells, genes, obs };
        ds.validate()?;
        return Ok(ds);
    }
    if let Some(mtx) = first_existing(dir, &["matrix.mtx", "matrix.mtx.gz"]) {
        // 10x orientation: genes x cells.
        let feat = first_existing(dir, &["features.tsv", "features.tsv.gz", "genes.tsv", "genes.tsv.gz"])
            .ok_or_else(|| Error::format(dir, "found matrix.mtx but no features.tsv or genes.tsv"))?;
        let bc = first_existing(dir, &["barcodes.tsv", "barcodes.tsv.gz"])
            .ok_or_else(|| Error::format(dir, "found matrix.mtx but no barcodes.tsv"))?;
        let (n_genes, n_cells) = read_shape(&mtx)?;
        let feat_table = text::read_tsv(&feat, false)?;
        let bc_table = text::read_tsv(&bc, false)?;
        let (nf, nb) = (feat_table.rows.len(), bc_table.rows.len());
        let fits = |genes: usize, cells: usize| nb == cells && (nf == genes || nf == genes + 1);
        if !fits(n_genes, n_cells) && fits(n_cells, n_genes) {
            return Err(Error::format(
                &mtx,
                format!(
                    "the matrix is {n_genes} x {n_cells}, which fits cells as rows and genes as columns ({nb} barcodes, {nf} features), but the 10x matrix.mtx is genes x cells: transpose it, or name it counts.mtx with genes.tsv and cells.tsv (our cells x genes layout)"
                ),
            ));
        }
        let genes = gene_names(feat_table, n_genes)?;
        let barcodes = single_column(bc_table, n_cells)?;
        let counts = read_mtx(&mtx)?.transpose();
        let obs = match first_existing(dir, &["cells.tsv", "cells.tsv.gz"]) {
            Some(cp) => {
                let (cells, obs) = cells_table(text::read_tsv(&cp, true)?, counts.n_rows)?;
                if let Some(k) = (0..cells.len()).find(|&k| cells[k] != barcodes[k]) {
                    return Err(Error::format(
                        &cp,
                        format!(
                            "cell {} is '{}' but barcodes.tsv has '{}' there: the two files must list cells in the same order",
                            k + 1,
                            cells[k],
                            barcodes[k]
                        ),
                    ));
                }
                obs
            }
            None => Vec::new(),
        };
        let ds = Dataset { source: dir.to_path_buf(), counts, cells: barcodes, genes, obs };
        ds.validate()?;
        return Ok(ds);
    }
    Err(Error::format(
        dir,
        "no count matrix found: expected counts.mtx[.gz] (cells x genes) with genes.tsv and cells.tsv, or 10x's matrix.mtx[.gz] with features.tsv and barcodes.tsv",
    ))
}

/// Gene names, one per matrix column. A header line is recognised by the file having one line more
/// than the matrix has genes. With several columns (10x features: id, symbol, type) the symbol is used,
/// because homology is matched on symbols.
fn gene_names(t: text::Table, n_genes: usize) -> Result<Vec<String>> {
    let path = t.path.as_path();
    let mut rows = t.rows;
    let looks_like_header = rows.first().is_some_and(|r| is_gene_header(&r[0]));
    let header = if rows.len() == n_genes + 1 {
        Some(rows.remove(0))
    } else if rows.len() == n_genes && looks_like_header {
        return Err(Error::format(
            path,
            format!("a header line ('{}') and {} genes, but the count matrix has {} genes", rows[0][0], n_genes - 1, n_genes),
        ));
    } else if rows.len() == n_genes {
        None
    } else {
        return Err(Error::format(
            path,
            format!("{} lines for {} genes in the count matrix (one gene per line, optionally one header line)", rows.len(), n_genes),
        ));
    };
    let width = rows.first().map(|r| r.len()).unwrap_or(1);
    let col = match &header {
        Some(h) => h
            .iter()
            .position(|c| matches!(c.to_ascii_lowercase().as_str(), "gene" | "genes" | "symbol" | "gene_symbol" | "gene_name" | "name"))
            .unwrap_or(0),
        None if width >= 2 => 1,
        None => 0,
    };
    Ok(rows.into_iter().map(|mut r| std::mem::take(&mut r[col])).collect())
}

fn is_gene_header(s: &str) -> bool {
    matches!(
        s.to_ascii_lowercase().as_str(),
        "gene"
            | "genes"
            | "symbol"
            | "gene_symbol"
            | "gene_symbols"
            | "gene_name"
            | "gene_id"
            | "gene_ids"
            | "feature"
            | "features"
            | "name"
            | "index"
            | "var_names"
    )
}

fn single_column(t: text::Table, n: usize) -> Result<Vec<String>> {
    if t.rows.len() != n {
        return Err(Error::format(&t.path, format!("{} lines for {} cells in the count matrix", t.rows.len(), n)));
    }
    Ok(t.rows.into_iter().map(|mut r| std::mem::take(&mut r[0])).collect())
}

/// `cells.tsv`: a header naming the columns; the first column is the cell barcode, the others are obs.
fn cells_table(t: text::Table, n_cells: usize) -> Result<(Vec<String>, ObsColumns)> {
    let path = t.path.as_path();
    let header = t.header.ok_or_else(|| Error::format(path, "empty file: expected a header line naming the columns"))?;
    if t.rows.len() != n_cells {
        return Err(Error::format(
            path,
            format!("{} cells listed but the count matrix has {} rows (cells): they must match one to one", t.rows.len(), n_cells),
        ));
    }
    let cells: Vec<String> = t.rows.iter().map(|r| r[0].clone()).collect();
    let mut obs = Vec::new();
    for (j, name) in header.iter().enumerate().skip(1) {
        let vals: Vec<&str> = t.rows.iter().map(|r| r[j].as_str()).collect();
        obs.push((name.clone(), Ok(Column::Categorical(Categorical::from_strings(&vals)))));
    }
    Ok((cells, obs))
}
