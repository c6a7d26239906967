"""The two verbs: :func:`train` a model on a labelled reference, :func:`annotate` an AnnData with it
(:mod:`schash._annotate`)."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pandas as pd

from . import _args, _hamming
from ._anchors import make_anchors
from ._annotate import _check_call_args, annotate, write_annotation  # noqa: F401 - the public verbs live here
from ._data import Expr, extract
from ._errors import InputError, LabelKeyError
from ._logging import logger
from ._model import UNASSIGNED, SchashModel
from ._novelty import fit_novelty
from ._preprocess import ScaledMatrix, SparseScaled, fit_preprocessor
from ._train import TrainConfig, calibration_rows, train_network


def _column(expr, values, key, what):
    """Labels or batches from an obs column (``key``) or a vector (``values``), as strings.

    A pandas Series is matched to the cells by its index (cell names); a bare array or list,
    or a Series with a default 0..n-1 index, by position.
    """
    if key is not None:
        if expr.obs is None:
            raise InputError(f"{what}_key= needs AnnData input; for a matrix pass the {what}s as a vector")
        if key not in expr.obs:
            raise LabelKeyError(
                f"{what} column {key!r} is not in obs; available columns: {list(expr.obs.columns)}"
            )
        values = expr.obs[key].to_numpy()  # the obs column is aligned to the cells already
    if values is None:
        return None
    if isinstance(values, pd.Series):
        values = _by_cell_name(values, expr.cells, what)
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
    values = values.astype(str).to_numpy()
    if what == "cell type" and (values == UNASSIGNED).any():
        raise InputError(f"{int((values == UNASSIGNED).sum())} cells have the cell type {UNASSIGNED!r}, which schash "
                         "reserves for the cells it leaves unassigned; rename that type or leave those cells out")
    return values


def _by_cell_name(values: pd.Series, cells: pd.Index, what: str) -> np.ndarray:
    """The values of a Series in the order of ``cells``, matched by name."""
    index = values.index
    if isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1 \
            and not cells.equals(index.astype(str)):
        return values.to_numpy()  # pd.Series(list): no names to match, so by position
    names = index.astype(str)
    if names.equals(cells):
        return values.to_numpy()
    fix = f"; or pass {what}s.to_numpy() to match them to the cells by position"
    if names.has_duplicates:
        raise InputError(f"the {what}s Series has repeated cell names in its index "
                         f"(e.g. {list(names[names.duplicated()][:3])}){fix}")
    if cells.has_duplicates:
        raise InputError(f"the cell names are not unique (e.g. {list(cells[cells.duplicated()][:3])}), so the "
                         f"{what}s Series cannot be matched to them by name; make them unique "
                         f"(adata.obs_names_make_unique()){fix}")
    pos = names.get_indexer(cells)
    if (pos < 0).any():
        missing = cells[pos < 0]
        raise InputError(f"{len(missing)} cells have no {what} in the Series given (matched by cell name), "
                         f"e.g. {list(missing[:5])}; its index must hold every cell name{fix}")
    return values.to_numpy()[pos]


def _check_train_args(a: dict) -> None:
    """Every argument of :func:`train` that is not data, before anything is read."""
    from ._preprocess import SCALES, TRANSFORMS

    _args.whole("n_bits", a["n_bits"], minimum=8)
    if a["n_bits"] % 8:
        raise InputError(f"n_bits must be a multiple of 8 (got {a['n_bits']}); 64 is the default")
    _args.whole("n_top_genes", a["n_top_genes"], none_ok=True, hint=" (None: all genes)")
    _args.choice("transform", a["transform"], TRANSFORMS)
    _args.choice("scale", a["scale"], SCALES)
    _args.whole("min_cells_per_type", a["min_cells_per_type"])
    _args.whole("max_cells_per_type", a["max_cells_per_type"], none_ok=True, hint=" (None: every cell)")
    _args.whole("batch_size", a["batch_size"], none_ok=True, hint=" (None: chosen from the data size)")
    _args.whole("max_epochs", a["max_epochs"], none_ok=True, hint=" (None: chosen from the data size)")
    _args.whole("num_threads", a["num_threads"], none_ok=True)
    _args.whole("seed", a["seed"], minimum=0)
    hidden = a["hidden"]
    if not isinstance(hidden, (tuple, list)):
        raise InputError(f"hidden must be a tuple of layer widths like (128, 64), got {hidden!r}")
    for width in hidden:
        _args.whole("each hidden layer width", width)
    _args.number("dropout", a["dropout"], lo=0, hi=1, hi_open=True)
    _args.number("augment", a["augment"], lo=0, hi=1)
    _args.number("lr", a["lr"], lo=0, lo_open=True)
    _args.number("prune_quantile", a["prune_quantile"], lo=0, hi=1)
    _args.number("novelty_alpha", a["novelty_alpha"], lo=0, hi=1)
    _check_device(a["device"])
    keys = a["reference_keys"]
    if keys is not None and (isinstance(keys, str) or not all(isinstance(k, str) for k in keys)):
        raise InputError(f"reference_keys must be a list of obs column names, got {keys!r}")


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
    scale: str = "reference",
    min_cells_per_type: int = 1,
    max_cells_per_type: int | None = None,
    reference_keys: list[str] | None = None,
    hidden: tuple[int, ...] = (128, 64),
    dropout: float = 0.2,
    lr: float = 1e-3,
    batch_size: int | None = None,
    max_epochs: int | None = None,
    augment: float = 0.8,
    basis: str | None = None,
    prune_quantile: float = 0.99,
    novelty_alpha: float = 0.02,
    seed: int = 0,
    device: str = "auto",
    num_threads: int | None = None,
    progress: bool | None = None,
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
        Optional batches (vector or ``obs`` column): gene selection is batch-aware and, with
        ``scale="batch"``, every batch is standardised on its own.
    n_bits
        Length K of the hash codes (a multiple of 8; a power of two gives Hadamard anchors).
    n_top_genes
        Number of highly variable genes the model uses (``None``: all genes).
    transform, scale
        Input transform (``"log"``, ``"rank"``) and scaling (``"reference"``, ``"batch"``);
        see :mod:`schash._preprocess`.  The default ``scale="reference"`` makes every call
        depend on that cell alone; ``scale="batch"`` standardises each query (or each
        ``batch_key`` group of it) on itself, which fails on a query of one cell type.
    augment
        Fraction of training cells given a technology-like perturbation in each epoch (a
        random factor per gene and per cell and the loss of some non-zero values, on the
        log scale; see :func:`schash._train.augment`), so that the network cannot rely on one
        technology's quirks; novelty is calibrated on cells perturbed the same way.  ``0``
        turns it off.  Measured in ``bench/accuracy.py`` (``schash-noaug``).
    min_cells_per_type
        Types with fewer reference cells are dropped with a warning.  The default keeps every
        type: a type with a handful of cells is still learnt (class-balanced loss, never in the
        validation split below 3 cells), where dropping it makes all its query cells wrong.
    basis
        An ``obsm`` key of the reference's 2-D embedding (``"X_umap"``): the model keeps it as a
        reference map, and :func:`annotate` places query cells on it (``obsm["X_schash_umap"]``;
        see :meth:`SchashModel.set_reference_map`).
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
        Calls whose typicality (p-value) is below this are ``Unassigned``.  Chosen on the
        cross-batch left-out-type tasks of ``bench/accuracy.py`` (see its report): the
        targets are at least half of the cells of a type missing from the reference
        Unassigned and at most 5% of known-type cells.  ``confidence`` ranks the rest.
    seed, device, num_threads, progress
        Random seed (same seed, CPU and thread count give the same model),
        ``"auto"``/``"cpu"``/``"cuda"``, torch CPU threads while training (``None``: one
        thread for small networks, torch's default otherwise), and whether to show
        progress bars (``None``: only when stderr is an interactive terminal).

    Returns
    -------
    A :class:`SchashModel`; ``model.history`` holds the per-epoch losses and validation scores.
    """
    _check_train_args(locals())
    progress = _args.progress(progress)
    path = data if isinstance(data, (str, os.PathLike)) else None
    if basis is not None and basis not in (getattr(data, "obsm", None) or {}):
        have = list(data.obsm.keys()) if getattr(data, "obsm", None) is not None else None
        raise InputError(f"basis={basis!r} names no obsm entry of the reference"
                         + (f"; it has {have}" if have is not None else
                            " (it is not an in-memory AnnData): load it, or call model.set_reference_map() later"))
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
                      num_threads=num_threads, augment=augment)
    module, history, val_idx = train_network(X, y, anchors, cfg=cfg, seed=seed, device=device, progress=progress,
                                             log_scale=transform == "log")
    codes = _encode_rows(module, X)
    _, val_dist, _ = _hamming.nearest_anchor(codes[val_idx], _hamming.pack(anchors))
    threshold = int(np.clip(np.ceil(np.quantile(val_dist, prune_quantile)), n_bits // 8, n_bits // 4 - 1))
    train_idx = np.setdiff1d(np.arange(len(y)), val_idx)
    X_ref = ScaledMatrix(X.F, np.zeros(len(y), dtype=np.int64), pre.ref_mean[None], pre.ref_std[None],
                         np.ones(len(pre.genes), dtype=bool), pre.clip)  # typicality uses reference scaling
    novelty = fit_novelty(X_ref, y, train_idx, seed=seed, anchors=anchors,
                          calibration_rows=calibration_rows(X_ref, cfg, transform == "log", seed),
                          logits=module.logits_dense,
                          margin_rows=calibration_rows(X, cfg, transform == "log", seed) if scale == "batch" else None)
    db_labels, db_batches, db_rows = y_str, b_str, idx[keep]
    params = dict(n_bits=n_bits, n_top_genes=n_top_genes, transform=transform, scale=scale, seed=seed,
                  min_cells_per_type=min_cells_per_type, hidden=list(hidden), dropout=dropout, lr=lr,
                  prune_quantile=prune_quantile, novelty_alpha=novelty_alpha, cell_type_key=cell_type_key,
                  batch_key=batch_key, layer=layer, n_training_cells=int(len(y)),
                  max_cells_per_type=max_cells_per_type, augment=float(augment))
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
    if basis is not None:
        model.set_reference_map(data, basis=basis, genes=genes, layer=layer, seed=seed)
    return model


def _check_device(device) -> None:
    import torch

    if device == "auto":
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"device must be 'auto', 'cpu' or 'cuda' (or 'cuda:N'), got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device={device!r} but this torch has no usable CUDA GPU; use device='cpu' or 'auto'")


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


def _encode_rows(module, X, chunk: int = 8192) -> np.ndarray:
    """Packed codes of all rows of ``X``.

    Uses the same sparse first layer as query encoding, so a reference cell encoded again
    as a query gets exactly its database code.
    """
    codes = []
    for s in range(0, X.shape[0], chunk):
        rows = np.arange(s, min(s + chunk, X.shape[0]))
        block = SparseScaled(X.F[s : s + chunk], X.groups[rows], X.mean, X.std, X.present, X.clip)
        codes.append(_hamming.pack(module.logits_sparse(block)))
    return np.concatenate(codes)

