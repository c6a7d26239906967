"""The two verbs: :func:`train` a model on a labelled reference, :func:`annotate` an AnnData with it."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pandas as pd

from . import _hamming
from ._anchors import make_anchors
from ._data import Expr, _is_anndata, extract
from ._errors import InputError, LabelKeyError
from ._logging import logger
from ._model import SchashModel
from ._novelty import fit_novelty, margins
from ._preprocess import ScaledMatrix, SparseScaled, fit_preprocessor
from ._train import TrainConfig, train_network


def _column(expr, values, key, what):
    """Labels or batches from an obs column (``key``) or a vector (``values``), as strings."""
    if key is not None:
        if expr.obs is None:
            raise InputError(f"{what}_key= needs AnnData input; for a matrix pass the {what}s as a vector")
        if key not in expr.obs:
            raise LabelKeyError(
                f"{what} column {key!r} is not in obs; available columns: {list(expr.obs.columns)}"
            )
        values = expr.obs[key]
    if values is None:
        return None
    values = pd.Series(np.asarray(values, dtype=object))
    if len(values) != len(expr.cells):
        extra = " (it matches the number of genes: is the matrix genes × cells? pass X.T)" \
            if len(values) == len(expr.genes) else ""
        raise InputError(f"{len(values)} {what}s for {len(expr.cells)} cells{extra}")
    missing = values.isna()
    if missing.any():
        raise InputError(
            f"{int(missing.sum())} cells have a missing {what} (NA); remove those cells or give them a {what}"
        )
    return values.astype(str).to_numpy()


def train(
    data,
    labels=None,
    *,
    genes=None,
    cell_type_key: str | None = None,
    batch_key: str | None = None,
    batches=None,
    layer: str | None = None,
    n_bits: int = 64,
    n_top_genes: int | None = 2000,
    transform: str = "log",
    scale: str = "batch",
    min_cells_per_type: int = 10,
    max_cells_per_type: int | None = None,
    reference_keys: list[str] | None = None,
    hidden: tuple[int, ...] = (128, 64),
    dropout: float = 0.2,
    lr: float = 1e-3,
    batch_size: int | None = None,
    max_epochs: int | None = None,
    prune_quantile: float = 0.99,
    novelty_alpha: float = 0.02,
    seed: int = 0,
    device: str = "auto",
    num_threads: int | None = None,
    progress: bool = True,
) -> SchashModel:
    """Train a schash model on a labelled reference.

    Parameters
    ----------
    data
        AnnData (``X`` or ``layer=``), a cells × genes DataFrame, a cells × genes
        array / sparse matrix with ``genes=``, or the path of an ``.h5ad`` file, which is
        read backed: only the training cells are loaded, and the database is encoded in chunks.  Raw counts or log-normalised values
        (detected); counts are library-size normalised and log1p-transformed.
    labels, cell_type_key
        The cell types: a vector, or the name of an ``obs`` column.
    batches, batch_key
        Optional batches (vector or ``obs`` column): gene selection is batch-aware and,
        with ``scale="batch"``, every batch is standardised on its own.
    n_bits
        Length K of the hash codes (a multiple of 8; a power of two gives Hadamard anchors).
    n_top_genes
        Number of highly variable genes the model uses (``None``: all genes).
    transform, scale
        Input transform (``"log"``, ``"rank"``) and scaling (``"batch"``, ``"reference"``);
        see :mod:`schash._preprocess`.
    min_cells_per_type
        Types with fewer reference cells are dropped with a warning.
    max_cells_per_type
        Train on at most this many cells of each type (a random subsample); the reference
        database still holds the codes of every cell.  For atlases of millions of cells.
    reference_keys
        More ``obs`` columns (besides cell type and batch) to keep for every reference cell in
        the model's database, for :meth:`SchashModel.composition` and ``reference_obs()``.
    prune_quantile
        Held-out reference cells' anchor distances at this quantile set the distance
        beyond which a call is ``Unassigned``.
    novelty_alpha
        Calls whose typicality (p-value) is below this are ``Unassigned``.  Chosen on
        ``bench/accuracy.py``: with 0.02, 34% of the cells of a type missing from the reference
        were left Unassigned against 0.8% of the known-type cells of those tasks, and 0-4% of
        known-type cells in any cross-batch fold; 0.05 left 6% of known-type cells Unassigned on
        average.  ``confidence`` ranks the rest.
    seed, device, num_threads, progress
        Random seed (same seed, CPU and thread count give the same model),
        ``"auto"``/``"cpu"``/``"cuda"``, torch CPU threads while training (``None``: one
        thread for small networks, torch's default otherwise), and whether to show a
        progress bar.

    Returns
    -------
    A :class:`SchashModel`; ``model.history`` holds the per-epoch losses and validation scores.
    """
    path = data if isinstance(data, (str, os.PathLike)) else None
    meta = _reference_meta(path) if path is not None else extract(data, genes, layer=layer)
    y_all = _column(meta, labels, cell_type_key, "cell type")
    if y_all is None:
        raise InputError("no cell types given: pass labels= (a vector) or cell_type_key= (an obs column)")
    b_all = _column(meta, batches, batch_key, "batch")
    extra = {key: _column(meta, None, key, "reference") for key in reference_keys or ()}
    idx = _training_cells(y_all, max_cells_per_type, seed)
    expr = _load_rows(path, layer, idx) if path is not None else _take(meta, idx)
    y_str, b_str = y_all[idx], (b_all[idx] if b_all is not None else None)
    keep = _usable_cells(expr, y_str, min_cells_per_type)
    if not keep.all():
        expr, y_str = _take(expr, np.flatnonzero(keep)), y_str[keep]
        b_str = b_str[keep] if b_str is not None else None
    types = sorted(set(y_str))
    y = pd.Categorical(y_str, categories=types).codes.astype(np.int64)
    pre, X = fit_preprocessor(expr, n_top_genes=n_top_genes, batches=b_str, transform=transform, scale=scale)
    anchors = make_anchors(len(types), n_bits, seed)
    cfg = TrainConfig(hidden=tuple(hidden), dropout=dropout, lr=lr, batch_size=batch_size, max_epochs=max_epochs,
                      num_threads=num_threads)
    module, history, val_idx = train_network(X, y, anchors, cfg=cfg, seed=seed, device=device, progress=progress)
    codes, logits_val = _encode_rows(module, X, val_idx)
    _, val_dist, _ = _hamming.nearest_anchor(codes[val_idx], _hamming.pack(anchors))
    threshold = int(np.clip(np.ceil(np.quantile(val_dist, prune_quantile)), n_bits // 8, n_bits // 4 - 1))
    train_idx = np.setdiff1d(np.arange(len(y)), val_idx)
    X_ref = ScaledMatrix(X.F, np.zeros(len(y), dtype=np.int64), pre.ref_mean[None], pre.ref_std[None],
                         np.ones(len(pre.genes), dtype=bool), pre.clip)  # typicality uses reference scaling
    novelty = fit_novelty(X_ref, y, train_idx, val_idx, seed=seed, val_margins=margins(logits_val, anchors))
    db_labels, db_batches, db_rows = y_str, b_str, idx[keep]
    params = dict(n_bits=n_bits, n_top_genes=n_top_genes, transform=transform, scale=scale, seed=seed,
                  min_cells_per_type=min_cells_per_type, hidden=list(hidden), dropout=dropout, lr=lr,
                  prune_quantile=prune_quantile, novelty_alpha=novelty_alpha, cell_type_key=cell_type_key,
                  batch_key=batch_key, layer=layer, n_training_cells=int(len(y)),
                  max_cells_per_type=max_cells_per_type)
    logger.info("trained: %d types, %d genes, validation macro F1 %.3f", len(types), len(pre.genes),
                history["best_val_macro_f1"])
    model = SchashModel(module=module, pre=pre, cell_types=types, anchors=anchors, threshold=threshold,
                        novelty=novelty, ref_codes=codes, ref_labels=y, params=params, history=history)
    if len(idx) < len(y_all):  # trained on a subsample: the database still holds every reference cell
        codes, db_labels, db_batches, db_rows = _encode_database(model, path if path is not None else meta,
                                                                 y_all, b_all, layer, progress)
    model.ref_labels = pd.Categorical(db_labels, categories=types).codes.astype(np.int64)
    model.ref_codes = codes
    if db_batches is not None:
        bc = pd.Categorical(db_batches)
        model.ref_batches, model.batch_categories = bc.codes.astype(np.int64), [str(c) for c in bc.categories]
    model.ref_meta = {key: pd.Categorical(values[db_rows]) for key, values in extra.items()}
    model.params["n_reference_cells"] = int(len(model.ref_labels))
    return model


def _reference_meta(path) -> Expr:
    """Names and obs of an .h5ad reference, without reading its matrix."""
    import anndata as ad

    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    backed = ad.read_h5ad(path, backed="r")
    meta = Expr(X=None, genes=pd.Index(backed.var_names), cells=pd.Index(backed.obs_names), obs=backed.obs.copy())
    backed.file.close()
    return meta


def _training_cells(y_all: np.ndarray, max_per_type: int | None, seed: int) -> np.ndarray:
    """Indices of the cells to train on: all, or at most ``max_per_type`` of each type (sorted)."""
    if not max_per_type:
        return np.arange(len(y_all))
    rng = np.random.default_rng(seed)
    keep = []
    for t in np.unique(y_all):
        members = np.flatnonzero(y_all == t)
        keep.append(members if len(members) <= max_per_type else rng.choice(members, max_per_type, replace=False))
    return np.sort(np.concatenate(keep))


def _take(expr: Expr, idx: np.ndarray) -> Expr:
    if len(idx) == len(expr.cells):
        return expr
    obs = expr.obs.iloc[idx] if expr.obs is not None else None
    return Expr(X=expr.X[idx], genes=expr.genes, cells=expr.cells[idx], obs=obs)


def _load_rows(path, layer, idx: np.ndarray) -> Expr:
    """Read only the rows ``idx`` of an .h5ad (backed), checked like any input."""
    import anndata as ad

    backed = ad.read_h5ad(path, backed="r")
    sub = backed[idx].to_memory()
    backed.file.close()
    return extract(sub, layer=layer)


def _encode_database(model, source, y_all, b_all, layer, progress):
    """Codes of every reference cell of a known type, streamed in chunks (``source``: path or Expr)."""
    from ._stream import encode_pass

    groups = pd.factorize(pd.Series(b_all))[0].astype(np.int64) if b_all is not None else None
    data = source if not isinstance(source, Expr) else source.X
    genes = None if not isinstance(source, Expr) else list(source.genes)
    enc = encode_pass(model, data, genes=genes, layer=layer if not isinstance(source, Expr) else None,
                      groups=groups, progress=progress)
    ok = np.isin(y_all, model.cell_types) & ~enc.empty
    return enc.codes[ok], y_all[ok], (b_all[ok] if b_all is not None else None), np.flatnonzero(ok)


def _usable_cells(expr, y_str, min_cells):
    """Mask of reference cells to train on: drop empty cells and types below ``min_cells``."""
    totals = np.asarray(expr.X.sum(axis=1)).reshape(-1)
    keep = totals > 0
    if (~keep).any():
        warnings.warn(f"{int((~keep).sum())} reference cells have no expression and are left out", UserWarning,
                      stacklevel=3)
    counts = pd.Series(y_str[keep]).value_counts()
    small = counts[counts < min_cells]
    if len(small):
        warnings.warn(
            f"cell types with fewer than {min_cells} cells are left out: "
            + ", ".join(f"{t} ({n})" for t, n in small.items())
            + "; lower min_cells_per_type to keep them",
            UserWarning,
            stacklevel=3,
        )
        keep &= ~pd.Series(y_str).isin(small.index).to_numpy()
    n_types = len(set(y_str[keep]))
    if n_types < 2:
        raise InputError(
            f"the reference has {n_types} usable cell type(s); schash needs at least two "
            f"with {min_cells} or more cells each"
        )
    return keep


def _encode_rows(module, X, keep_logits: np.ndarray, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Packed codes of all rows of ``X``, and the pre-tanh outputs of the rows ``keep_logits``.

    Uses the same sparse first layer as query encoding, so a reference cell encoded again
    as a query gets exactly its database code.
    """
    codes, kept = [], []
    for s in range(0, X.shape[0], chunk):
        rows = np.arange(s, min(s + chunk, X.shape[0]))
        block = SparseScaled(X.F[s : s + chunk], X.groups[rows], X.mean, X.std, X.present, X.clip)
        logits = module.logits_sparse(block)
        codes.append(_hamming.pack(logits))
        kept.append(logits[np.isin(rows, keep_logits)])
    return np.concatenate(codes), np.concatenate(kept)


def annotate(
    adata,
    model: SchashModel,
    *,
    layer: str | None = None,
    method: str = "anchor",
    k: int = 15,
    batch_key: str | None = None,
    neighbors: int | None = None,
    key_added: str = "schash",
    copy: bool = False,
    progress: bool = False,
):
    """Annotate an AnnData in place (or a copy), scanpy-style.

    Writes
    ------
    ``obs[f"{key_added}_label"]``, ``obs[f"{key_added}_pruned_label"]`` (categorical),
    ``obs[f"{key_added}_distance"]``, ``obs[f"{key_added}_delta_next"]``,
    ``obs[f"{key_added}_typicality"]``, ``obs[f"{key_added}_confidence"]`` (float),
    ``obsm[f"X_{key_added}"]`` (the packed codes, uint8, n_bits/8 columns),
    ``obsm[f"{key_added}_scores"]`` (cells × types scores in [0, 1]: ``1 - d / n_bits`` for the
    Hamming distance ``d`` to each type's anchor; a DataFrame), with a reference map
    (``model.set_reference_map()``) ``obsm[f"X_{key_added}_umap"]`` (the cells placed on it) and
    ``uns[key_added]`` (the parameters and gene overlap).  With ``neighbors=k``, also the
    composition of the ``k`` nearest reference cells: ``obsm[f"{key_added}_cell_type_composition"]``
    and, when the reference had batches, ``obsm[f"{key_added}_batch_composition"]`` (DataFrames,
    rows sum to 1) and ``obs[f"{key_added}_neighbor_batch"]`` (the majority batch).

    Returns
    -------
    The annotated copy when ``copy=True``, else ``None``.
    """
    if not _is_anndata(adata):
        raise InputError("annotate() takes an AnnData; for a matrix use model.predict(X, genes=...)")
    enc = model._pass(adata, layer=layer, batch_key=batch_key, progress=progress)
    df = model.call(enc, method=method, k=k)
    if copy:
        adata = adata.copy()
    write_annotation(adata, model, enc, df, method=method, k=k, layer=layer, batch_key=batch_key,
                     neighbors=neighbors, key_added=key_added, progress=progress)
    return adata if copy else None


def write_annotation(adata, model, enc, df, *, method, k, layer, batch_key, neighbors=None, key_added="schash",
                     progress=False):
    """Write a finished annotation into ``adata`` (the fields listed in :func:`annotate`)."""
    for col in df.columns:
        adata.obs[f"{key_added}_{col}"] = df[col].values
    adata.obsm[f"X_{key_added}"] = enc.codes
    from ._scores import type_scores

    adata.obsm[f"{key_added}_scores"] = type_scores(model, enc.codes, adata.obs_names, enc.empty)
    if getattr(model, "ref_map", None) is not None and enc.projected is not None:
        adata.obsm[f"X_{key_added}_{model.map_name()}"] = model.ref_map.place(enc.projected)
    if neighbors:
        for by in model.reference_obs().columns:  # ties at the k-th distance share equally
            comp = model.composition(None, by=by, k=neighbors, _codes=(adata.obs_names, enc.codes))
            adata.obsm[f"{key_added}_{by}_composition"] = comp
            if by == "batch":
                adata.obs[f"{key_added}_neighbor_batch"] = pd.Categorical(comp.idxmax(axis=1))
    adata.uns[key_added] = {
        "params": {"method": method, "k": k, "neighbors": neighbors, "layer": layer, "batch_key": batch_key,
                   "n_bits": model.n_bits, "threshold": model.threshold,
                   "novelty_alpha": model.params.get("novelty_alpha", 0.02)},
        "n_genes_matched": enc.n_genes_matched,
        "n_genes_model": len(model.pre.genes),
        "typicality_shift": enc.shift,
    }
