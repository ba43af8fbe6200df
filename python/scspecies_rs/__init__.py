"""Cross-species alignment of single-cell RNA-seq data (scSpecies, in Rust) for AnnData.

>>> res = scspecies_rs.align(mouse, human, context_batch_key="batch", context_label_key="cell_type")
>>> res.target.obs[["predicted_label", "confidence", "unassigned"]]

The import name is ``scspecies_rs``, so it never shadows the reference package ``scspecies``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings
from typing import Any, Optional, Union

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from . import _native

__version__: str = _native.__version__
__all__ = ["align", "load", "Result", "__version__"]

# Keyword arguments that are not options of the run (the rest become the command line's flags).
_OWN = {"context_layer", "target_layer", "context_name", "target_name", "models", "progress", "homology"}


def _obs_error(source: str, adata: ad.AnnData, key: str) -> ValueError:
    present = ", ".join(map(str, adata.obs.columns)) or "none"
    return ValueError(f"{source}: obs has no column '{key}' (columns present: {present})")


def _dataset(adata: ad.AnnData, role: str, layer: Optional[str], keys: list) -> tuple:
    """The native form of one AnnData: CSR parts, names and the needed obs columns as strings."""
    if not isinstance(adata, ad.AnnData):
        raise ValueError(f"{role}: expected an AnnData object, got {type(adata).__name__}")
    source = f"<{role} AnnData>"
    genes = adata.var_names
    if layer is None:
        x = adata.X
    elif layer == "raw":
        if adata.raw is None:
            raise ValueError(f"{source}: {role}_layer='raw' but the AnnData has no .raw")
        x, genes = adata.raw.X, adata.raw.var_names
    else:
        if layer not in adata.layers:
            present = ", ".join(adata.layers.keys()) or "none"
            raise ValueError(f"{source}: no layer '{layer}' (layers present: {present})")
        x = adata.layers[layer]
    if x is None:
        raise ValueError(f"{source}: the AnnData has no counts in X (pass {role}_layer='raw' or a layer name)")
    if not sp.issparse(x):
        x = np.asarray(x)
        if x.ndim != 2:
            raise ValueError(f"{source}: the counts are not a matrix (shape {x.shape})")
        x = sp.csr_matrix(x)
    else:
        x = sp.csr_matrix(x)
    x.sum_duplicates()
    obs = []
    for k in keys:
        if k is None:
            continue
        if k not in adata.obs.columns:
            raise _obs_error(source, adata, k)
        col = adata.obs[k]
        values = ["" if pd.isna(v) else str(v) for v in col]
        obs.append((str(k), values))
    return (
        source,
        int(x.shape[1]),
        np.ascontiguousarray(x.indptr, dtype=np.int64).tobytes(),
        np.ascontiguousarray(x.indices, dtype=np.int32).tobytes(),
        np.ascontiguousarray(x.data, dtype=np.float64).tobytes(),
        [str(c) for c in adata.obs_names],
        [str(g) for g in genes],
        obs,
    )


def _flags(options: dict) -> list:
    """Keyword arguments as the command line's words: `top_percent=10` -> `--top-percent 10`."""
    words = []
    for name, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            words.append(flag)
        else:
            words += [flag, str(value)]
    return words


class _Progress:
    """Progress for a person: tqdm bars where tqdm is installed (widgets in notebooks), lines on stderr
    otherwise; warnings become Python warnings either way."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.printed = 0
        try:
            from tqdm.auto import tqdm

            self.tqdm = tqdm
        except ImportError:
            self.tqdm = None

    def _line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def __call__(self, kind: str, text: str, count: int, value: float) -> None:
        if kind == "warning":
            warnings.warn(text, stacklevel=2)
            return
        if not self.enabled:
            return
        if kind == "log":
            self._line(text)
        elif kind == "phase":
            self.total, self.done, self.printed = count, 0, 0
            if count > 0 and self.tqdm is not None:
                self.bar = self.tqdm(total=count, desc=text, unit="step", leave=False)
            else:
                self._line(f"{text} ...")
        elif kind == "step":
            self.done += 1
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix_str(f"{text}, loss {value:.1f}", refresh=False)
            elif self.total and self.done * 10 // self.total > self.printed:
                self.printed = self.done * 10 // self.total
                self._line(f"  {self.done}/{self.total} steps ({text}, loss {value:.1f})")
        elif kind == "done" and self.bar is not None:
            self.bar.close()
            self.bar = None


def align(
    context: ad.AnnData,
    target: ad.AnnData,
    context_batch_key: Optional[str] = None,
    context_label_key: Optional[str] = None,
    target_batch_key: Optional[str] = None,
    homology: Union[None, str, os.PathLike, pd.DataFrame] = None,
    epochs_context: Optional[int] = None,
    epochs_target: Optional[int] = None,
    seed: int = 369963,
    device: str = "cpu",
    *,
    target_label_key: Optional[str] = None,
    context_layer: Optional[str] = None,
    target_layer: Optional[str] = None,
    context_name: str = "context",
    target_name: str = "target",
    models: Union[None, str, os.PathLike] = None,
    progress: bool = True,
    **options: Any,
) -> "Result":
    """Align `target` to `context` and transfer the context's cell-type labels.

    `context` and `target` are AnnData objects in memory; their raw counts come from `X`, from
    `layers[name]` (`*_layer="name"`) or from `raw` (`*_layer="raw"`), sparse or dense. A batch key
    of None makes all cells of that species one batch. `homology` is an ortholog table (a path, or a
    DataFrame whose first two columns are context gene and target gene); None matches gene symbols
    case-insensitively. `models`: a folder written by `Result.save`, whose trained models are used
    instead of training (label transfer only). `target_label_key`: the target's own labels, used only
    to evaluate (`res.metrics["evaluation"]`).

    Every other keyword is an option of `scspecies run` with `_` for `-` (e.g. `top_percent=20`,
    `members=3`, `n_top_genes=2000`, `threads=2`); see `scspecies run --help`. Options are checked
    like the command line's, with the same messages (`ValueError`).

    Returns a `Result`: `res.target` and `res.context` hold one row per input cell, in input order.
    """
    if context_label_key is None:
        raise ValueError("context_label_key is required: the obs column with the context's cell types")
    bad = _OWN.intersection(options)
    if bad:
        raise ValueError(f"unexpected keyword arguments: {sorted(bad)}")
    options = dict(options, epochs_context=epochs_context, epochs_target=epochs_target, seed=seed, device=device)
    inputs = {
        "context": "<context AnnData>",
        "target": "<target AnnData>",
        "context_batch_key": context_batch_key,
        "context_label_key": context_label_key,
        "target_batch_key": target_batch_key,
        "target_label_key": target_label_key,
        "homology": None,
        "context_name": context_name,
        "target_name": target_name,
        "context_layer": context_layer,
        "target_layer": target_layer,
        "homology_fill": "gaps",
    }
    table = None
    if isinstance(homology, pd.DataFrame):
        if homology.shape[1] < 2:
            raise ValueError("homology: the DataFrame needs two columns, context gene and target gene")
        table = ("<homology DataFrame>", [(str(a), str(b)) for a, b in homology.iloc[:, :2].itertuples(index=False)])
    elif homology is not None:
        path = os.fspath(homology)
        inputs["homology"] = path
        frame = pd.read_csv(path, sep="\t", header=None, dtype=str, comment=None)
        if frame.shape[1] < 2:
            raise ValueError(f"{path}: the ortholog table needs two tab-separated columns: context gene, target gene")
        table = (path, [(a, b) for a, b in frame.iloc[:, :2].itertuples(index=False)])
    ctx = _dataset(context, "context", context_layer, [context_batch_key, context_label_key])
    tgt = _dataset(target, "target", target_layer, [target_batch_key, target_label_key])
    native = _native.align(
        ctx,
        tgt,
        json.dumps(inputs),
        _flags(options),
        table,
        None if models is None else os.fspath(models),
        _Progress(progress),
    )
    return Result._from_native(native, context, target, inputs, ctx, tgt, table)


def _column(n: int, rows: np.ndarray, values: list, fill: Any, dtype: Any = None) -> np.ndarray:
    out = np.full(n, fill, dtype=dtype if dtype is not None else object)
    out[rows] = values
    return out


def _cells(native: Any, which: str, adata: ad.AnnData, name: str) -> ad.AnnData:
    """One species' result: every input cell, in input order; cells preprocessing removed carry the
    reason and no values."""
    c = native.cells(which)
    n = adata.n_obs
    rows = np.asarray(c["input_rows"], dtype=np.int64)
    obs = pd.DataFrame(index=pd.Index(adata.obs_names.astype(str), name=adata.obs_names.name))
    obs["dataset"] = pd.Categorical([name] * n)
    removed = [r for r in c["removed"]]
    obs["removed_reason"] = pd.Categorical(removed)
    obs["batch"] = pd.Categorical(_column(n, rows, c["batch"], None))
    if which == "target":
        obs["predicted_label"] = pd.Categorical(_column(n, rows, c["predicted_label"], None))
        obs["confidence"] = _column(n, rows, c["confidence"], np.nan, float)
        unassigned = pd.array([pd.NA] * n, dtype="boolean")
        unassigned[rows] = c["unassigned"]
        obs["unassigned"] = unassigned
        obs["knn_label"] = pd.Categorical(_column(n, rows, c["knn_label"], None))
        for k in ["member_agreement", "vote_share", "best_similarity", "novelty"]:
            obs[k] = _column(n, rows, c[k], np.nan, float)
        if "label" in c:
            obs["true_label"] = pd.Categorical(_column(n, rows, c["label"], None))
    elif "label" in c:
        obs["label"] = pd.Categorical(_column(n, rows, c["label"], None))
    dim = c["latent_dim"]
    latent = np.full((n, dim), np.nan, dtype=np.float32)
    latent[rows] = np.frombuffer(c["latent"], dtype=np.float32).reshape(-1, dim)
    return ad.AnnData(obs=obs, obsm={"X_scspecies": latent})


class Result:
    """A finished alignment.

    - `target`, `context`: AnnData, one row per input cell in input order, no X. `obs` holds
      `predicted_label`, `confidence`, `unassigned`, `knn_label` (target), `removed_reason` (why
      preprocessing removed a cell; NaN for kept cells); `obsm["X_scspecies"]` the latent means (NaN
      rows for removed cells).
    - `metrics`: what `metrics.json` holds (settings, preprocessing, homology, training, evaluation).
    - `save(dir)` writes the run folder (models, tables, `results.h5ad`); `load(dir)` reads it back,
      and `align(..., models=dir)` transfers labels with its models.
    - `similarity()`, `dge()`, `lrp()`, `evaluate()` run the analyses of `scspecies` on the saved run.
    """

    def __init__(self, context: ad.AnnData, target: ad.AnnData, metrics: dict, folder: Optional[str] = None):
        self.context = context
        self.target = target
        self.metrics = metrics
        self.folder = folder
        self._native = None
        self._inputs = None

    @classmethod
    def _from_native(cls, native, context, target, inputs, ctx, tgt, table) -> "Result":
        metrics = json.loads(native.metrics_json())
        res = cls(
            _cells(native, "context", context, inputs["context_name"]),
            _cells(native, "target", target, inputs["target_name"]),
            metrics,
        )
        res._native = native
        res._inputs = (inputs, ctx, tgt, table)
        return res

    def __repr__(self) -> str:
        ev = self.metrics.get("evaluation") or {}
        bas = (ev.get("balanced_accuracy") or {}).get("latent_transfer")
        extra = f", balanced accuracy {bas:.3f}" if isinstance(bas, float) else ""
        return f"scspecies_rs.Result({self.context.n_obs} context cells, {self.target.n_obs} target cells{extra})"

    def save(self, folder: Union[str, os.PathLike]) -> str:
        """Write the run folder: the trained models, the tables, `results.h5ad`, `metrics.json` and
        `report.html` (figures and tables on one page), plus the inputs (`inputs/*.h5ad`, the counts
        and label columns used), so that the analyses and `scspecies` commands can read it."""
        folder = os.path.abspath(os.fspath(folder))
        if self._native is None:
            raise ValueError("this Result was loaded from a folder; it is saved already")
        self._native.save(folder)
        inputs, ctx, tgt, table = self._inputs
        os.makedirs(os.path.join(folder, "inputs"), exist_ok=True)
        recorded = dict(inputs, context_layer=None, target_layer=None)
        for role, d in (("context", ctx), ("target", tgt)):
            path = os.path.join(folder, "inputs", f"{role}.h5ad")
            _write_input(d, path)
            recorded[role] = path
        if table is not None:
            path = os.path.join(folder, "inputs", "homology.tsv")
            pd.DataFrame(table[1]).to_csv(path, sep="\t", header=False, index=False)
            recorded["homology"] = path
        mpath = os.path.join(folder, "metrics.json")
        with open(mpath) as f:
            metrics = json.load(f)
        metrics["inputs"] = recorded
        tmp = mpath + ".tmp"
        with open(tmp, "w") as f:
            json.dump(metrics, f, indent=2)
        os.replace(tmp, mpath)
        self.metrics = metrics
        self.folder = folder
        _native.command(["report", "--run", folder, "--quiet"])
        return folder

    def _analysis(self, command: str, files: list, **options: Any) -> dict:
        if self.folder is None:
            self.save(tempfile.mkdtemp(prefix="scspecies_rs-"))
        _native.command([command, "--run", self.folder, "--quiet"] + _flags(options))
        out = os.path.join(self.folder, command)
        return {f: pd.read_csv(os.path.join(out, f), sep="\t") for f in files if os.path.exists(os.path.join(out, f))}

    def similarity(self, **options: Any) -> pd.DataFrame:
        """Cell-type similarity (target types x context types; `scspecies similarity`)."""
        return self._analysis("similarity", ["similarity.tsv"], **options)["similarity.tsv"]

    def evaluate(self, **options: Any) -> pd.DataFrame:
        """Integration metrics of the joint latent space (`scspecies evaluate`)."""
        return self._analysis("evaluate", ["metrics.tsv"], **options)["metrics.tsv"]

    def dge(self, **options: Any) -> pd.DataFrame:
        """Cross-species log2 fold changes per shared cell type, summarised (`scspecies dge`)."""
        return self._analysis("dge", ["summary.tsv"], **options)["summary.tsv"]

    def lrp(self, **options: Any) -> pd.DataFrame:
        """Relevance of input genes per cell type and species, summarised (`scspecies lrp`)."""
        return self._analysis("lrp", ["summary.tsv"], **options)["summary.tsv"]


def _write_input(d: tuple, path: str) -> None:
    source, n_genes, indptr, indices, data, cells, genes, obs = d
    indptr = np.frombuffer(indptr, dtype=np.int64)
    x = sp.csr_matrix(
        (np.frombuffer(data, dtype=np.float64).astype(np.float32), np.frombuffer(indices, dtype=np.int32), indptr),
        shape=(len(indptr) - 1, n_genes),
    )
    frame = pd.DataFrame({k: pd.Categorical(v) for k, v in obs}, index=pd.Index(cells))
    ad.AnnData(X=x, obs=frame, var=pd.DataFrame(index=pd.Index(genes))).write_h5ad(path)


def load(folder: Union[str, os.PathLike]) -> Result:
    """A saved run folder (`Result.save`, or `scspecies run --out`) as a `Result`. Its rows are the
    cells the run kept; `align(..., models=folder)` transfers labels with its trained models."""
    folder = os.path.abspath(os.fspath(folder))
    mpath = os.path.join(folder, "metrics.json")
    if not os.path.exists(mpath):
        raise ValueError(f"{mpath}: no such file; give the folder of a saved run")
    with open(mpath) as f:
        metrics = json.load(f)
    joint = ad.read_h5ad(os.path.join(folder, "results.h5ad"))
    names = metrics["inputs"]["context_name"], metrics["inputs"]["target_name"]
    parts = []
    for name in names:
        part = joint[joint.obs["dataset"] == name].copy()
        part.obs_names = [n[: -len(name) - 1] if n.endswith("_" + name) else n for n in part.obs_names]
        parts.append(part)
    target = parts[1]
    if "cell_type" in target.obs:
        target.obs["predicted_label"] = target.obs["cell_type"]
    return Result(parts[0], target, metrics, folder)
