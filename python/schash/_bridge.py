"""Functions for the R package (schashR), called through reticulate.

They take and return only arrays, lists, dicts and DataFrames, coerce the
numbers R sends as doubles (``64`` arrives as ``64.0``) and the length-one
vectors it sends as scalars, and keep R's cell and gene names.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pandas as pd
from scipy import sparse

from ._errors import InputError
from ._model import SchashModel
from ._result import annotation
from ._saliency import compute_saliency
from ._train import train

# Warnings raised while R's calls ran, for R to re-raise as R warnings (take_warnings()).
# Left to Python they would be printed raw to the console, with file paths, where R's
# suppressWarnings() and warnings() cannot see them.
_PENDING: list[str] = []
_DEVELOPER_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def _r_call(fn):
    """Run a bridge function with its warnings recorded for :func:`take_warnings`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for cat in _DEVELOPER_WARNINGS:  # meant for developers of the libraries, not for R users
                warnings.simplefilter("ignore", cat)
            try:
                return fn(*args, **kwargs)
            finally:
                for w in caught:
                    msg = str(w.message)
                    if msg not in _PENDING:
                        _PENDING.append(msg)

    return wrapper


def take_warnings() -> list[str]:
    """The messages of the warnings recorded since the last call (each once), and forget them."""
    out = list(_PENDING)
    _PENDING.clear()
    return out


_INT_ARGS = ("n_bits", "n_top_genes", "min_cells_per_type", "rare_type_cells", "max_cells_per_type", "batch_size",
             "max_epochs", "seed", "k", "num_threads", "chunk_size")


def _strs(x) -> list[str] | None:
    """A list of strings from what reticulate hands over (str, list, array, None)."""
    if x is None:
        return None
    if isinstance(x, str):
        return [x]
    return [str(v) for v in np.asarray(x, dtype=object).reshape(-1)]


def _labels(x) -> np.ndarray | pd.DataFrame | None:
    """Labels from R, with R's NA (None or NaN after conversion) kept as missing.

    A named list of label vectors (label levels, coarsest first) becomes a DataFrame.
    """
    if x is None:
        return None
    if isinstance(x, dict):
        return pd.DataFrame({str(k): _labels(v) for k, v in x.items()})
    if isinstance(x, str):
        x = [x]
    vals = pd.Series(np.asarray(x, dtype=object).reshape(-1))
    return vals.where(~vals.isna(), None).to_numpy()


def _ints(kwargs: dict) -> dict:
    out = dict(kwargs)
    for key in _INT_ARGS:
        if out.get(key) is not None:
            out[key] = int(out[key])
    if isinstance(out.get("hidden"), (int, float)):
        out["hidden"] = (int(out["hidden"]),)
    elif out.get("hidden") is not None:
        out["hidden"] = tuple(int(h) for h in out["hidden"])
    return out


def _anndata(X, genes, cells):
    """Cells × genes AnnData from a SciPy sparse or dense matrix and R's names, without densifying."""
    import anndata

    if sparse.issparse(X):
        X = sparse.csr_matrix(X)
    else:
        X = np.asarray(X)
        if X.ndim == 1:
            X = X.reshape(1, -1)
    genes, cells = _strs(genes), _strs(cells)
    if genes is None or len(genes) != X.shape[1]:
        raise InputError(f"the matrix has {X.shape[1]} genes but {0 if genes is None else len(genes)} gene names")
    if cells is None or len(cells) != X.shape[0]:
        cells = [f"cell_{i}" for i in range(X.shape[0])]
    with warnings.catch_warnings():
        # duplicate names: schash's own check (an error with advice) follows; no anndata warning first
        warnings.filterwarnings("ignore", message=r"(Variable|Observation) names are not unique")
        return anndata.AnnData(X=X, obs=pd.DataFrame(index=pd.Index(cells)), var=pd.DataFrame(index=pd.Index(genes)))


@_r_call
def train_matrix(X, genes, cells, labels, batches=None, ref_map=None, ref_map_name=None, **kwargs):
    """Train on a cells × genes matrix with R's label (and batch) vectors; ``labels`` may be a named
    list of vectors, one per label level (coarsest first).

    ``ref_map``: the reference's 2-D embedding (cells × 2, e.g. Seurat's UMAP) named
    ``ref_map_name``, kept in the model (``SchashModel.set_reference_map``).
    """
    adata = _anndata(X, genes, cells)
    kwargs = _ints(kwargs)
    kwargs.setdefault("progress", False)
    model = train(adata, labels=_labels(labels), batches=_labels(batches), **kwargs)
    if ref_map is not None:
        model.set_reference_map(adata, basis=str(ref_map_name or "map"), coords=np.asarray(ref_map, dtype=float),
                                seed=int(kwargs.get("seed", 0) or 0))
    return model


QUERY_BATCH = "schash_query_batch"  # the obs column the query's batches travel in


@_r_call
def annotate_matrix(model, X, genes, cells, method="auto", k=15, saliency=True, n_top_cell=5, neighbors=None,
                    batches=None, clusters=None, species=None, novelty_alpha=None):
    """Annotate a cells × genes matrix.

    ``batches``: the query's batches, one per cell (R's ``batch=``), used like
    ``annotate(batch_key=)``: each query batch is scaled on its own.  ``clusters``: one cluster
    per cell for majority voting (R's ``over_clustering=``), or ``"codes"`` to over-cluster the
    cells by their codes first.  ``novelty_alpha``: the typicality below which a call is
    ``Unassigned`` (``None``: the model's), as in :meth:`SchashModel.predict`.

    Returns a dict: ``table`` (dict of per-cell columns: label, pruned_label, distance,
    delta_next, typicality, confidence, top_genes with ``saliency``, and neighbor_batch with
    ``neighbors`` when the reference had batches), ``codes`` (cells × n_bits, ±1 int32),
    ``saliency`` (genes × types: dict of values, rows, cols; or None), ``composition``
    (with ``neighbors=k``: ``{"cell_type": ..., "batch": ...}``, each cells × categories as
    values, rows, cols — the fractions among the ``k`` nearest reference cells by Hamming
    distance, from the same encoding pass; else None), ``batch_levels`` and ``n_genes_matched``.
    """
    adata = _anndata(X, genes, cells)
    batch_key = None
    if batches is not None:
        b = _labels(batches)
        if len(b) != adata.n_obs:
            raise InputError(f"{len(b)} batches for {adata.n_obs} cells")
        adata.obs[QUERY_BATCH] = pd.Categorical(np.asarray(b, dtype=str))
        batch_key = QUERY_BATCH
    if clusters is not None and not (isinstance(clusters, str) and clusters == "codes"):
        clusters = _labels(clusters)
        if len(clusters) != adata.n_obs:
            raise InputError(f"{len(clusters)} clusters for {adata.n_obs} cells")
    res = annotation(model, adata, method=str(method), k=int(k), batch_key=batch_key, clusters=clusters,
                     species=None if species is None else str(species),
                     neighbors=int(neighbors) if neighbors is not None and int(neighbors) > 0 else None,
                     progress=False, novelty_alpha=novelty_alpha)
    table = res.table
    table.index = pd.Index(list(adata.obs_names))
    out = {"codes": res.signs(model.n_bits).astype(np.int32), "saliency": None, "scores": _matrix(res.scores),
           "composition": {by: _matrix(comp) for by, comp in res.compositions.items()} or None,
           "batch_levels": [str(c) for c in res.compositions["batch"].columns] if "batch" in res.compositions
           else None,
           "n_genes_matched": int(res.encoded.n_genes_matched), "gene_mapping": res.record["gene_mapping"]}
    if saliency:
        sal = compute_saliency(model, adata, n_top_cell=int(n_top_cell), batch_key=batch_key)
        table["top_genes"] = sal.cell_top_genes.to_numpy()
        out["saliency"] = _matrix(sal.by_group)
    # columns as plain arrays (label columns as strings; R makes the factors with these levels)
    text = ("label", "pruned_label", "top_genes", "neighbor_batch", "majority_label", "over_clustering")
    # the label levels' columns (schash._levels), with the factor levels R gives them
    out["factors"] = {col: [str(c) for c in table[col].cat.categories]
                      for col in (model.levels.columns() if model.levels is not None else ())
                      if isinstance(table[col].dtype, pd.CategoricalDtype)}
    out["table"] = {col: (table[col].astype(str).to_numpy(dtype=object) if col in text or col in out["factors"]
                          else table[col].to_numpy()) for col in table.columns}
    out["levels"] = list(model.cell_types) + ["Unassigned"]
    out["ref_map"] = None
    if res.placed is not None:
        out["ref_map"] = {"name": model.map_name(), "values": res.placed.astype(np.float64)}
    return out


def _matrix(df: pd.DataFrame) -> dict:
    """A DataFrame as values plus row and column names (no reliance on index conversion)."""
    return {"values": df.to_numpy(dtype=np.float64), "rows": [str(v) for v in df.index],
            "cols": [str(v) for v in df.columns]}


@_r_call
def model_info(model) -> dict:
    """What the R print method shows."""
    return {
        "description": repr(model),
        "cell_types": list(model.cell_types),
        "genes": list(model.genes),
        "n_genes": len(model.genes),
        "n_bits": int(model.n_bits),
        "n_reference_cells": int(model.ref_codes.shape[0]),
        "threshold": int(model.threshold),
        "transform": str(model.pre.transform),
        "scale": str(model.pre.scale),
        "ref_map": model.map_name(),
        "levels": list(model.levels.names) if model.levels is not None else None,
    }


@_r_call
def save(model, path, overwrite=False) -> None:
    model.save(str(path), overwrite=bool(overwrite))


@_r_call
def load(path):
    return SchashModel.load(str(path))
