"""``train``: a schash model from a labelled reference.

The reference is read through the one input layer (:class:`schash._data.Source`): only the
training cells are held in memory (all, or ``max_cells_per_type`` of each type), the network
is trained on them (:mod:`schash._loop`), and the reference database — the code of every
reference cell — is encoded by the one encoder (:mod:`schash._encode`), a chunk at a time.
The model is built once, complete.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import pandas as pd

from . import _args, _hamming, _levels, _rare, _refmap
from ._anchors import make_anchors
from ._data import Source
from ._encode import Encoder
from ._errors import InputError
from ._logging import logger
from ._loop import TrainConfig, calibration_rows, split, train_network
from ._model import NOVELTY_ALPHA, SchashModel
from ._novelty import fit_novelty, prototype_cosines
from ._preprocess import SCALES, TRANSFORMS, fit_preprocessor


def _check_train_args(a: dict) -> None:
    """Every argument of :func:`train` that is not data, before anything is read."""
    _args.whole("n_bits", a["n_bits"], minimum=8)
    if a["n_bits"] % 8:
        raise InputError(f"n_bits must be a multiple of 8 (got {a['n_bits']}); 64 is the default")
    _args.whole("n_top_genes", a["n_top_genes"], none_ok=True, hint=" (None: all genes)")
    _args.choice("transform", a["transform"], TRANSFORMS)
    _args.choice("scale", a["scale"], SCALES)
    _args.whole("min_cells_per_type", a["min_cells_per_type"])
    _args.whole("rare_type_cells", a["rare_type_cells"], minimum=0, hint=" (0: no rare types' contest)")
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
    if a["lr"] is not None:
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
    cell_type_key: str | list[str] | None = None,
    batch_key: str | None = None,
    batches=None,
    layer: str | None = None,
    n_bits: int = 64,
    n_top_genes: int | None = 2000,
    transform: Literal["log", "rank"] = "log",
    scale: Literal["reference", "batch"] = "reference",
    min_cells_per_type: int = 1,
    rare_type_cells: int = 10,
    max_cells_per_type: int | None = None,
    reference_keys: list[str] | None = None,
    hidden: tuple[int, ...] = (128, 64),
    dropout: float = 0.2,
    lr: float | None = None,
    batch_size: int | None = None,
    max_epochs: int | None = None,
    augment: float = 0.8,
    basis: str | None = None,
    prune_quantile: float = 0.99,
    novelty_alpha: float = NOVELTY_ALPHA,
    seed: int = 0,
    device: Literal["auto", "cpu", "cuda"] | str = "auto",
    num_threads: int | None = None,
    progress: bool | None = None,
) -> SchashModel:
    """Train a schash model on a labelled reference.

    Parameters
    ----------
    data
        AnnData (``X`` or ``layer=``), a cells × genes DataFrame, a cells × genes
        array / sparse matrix with ``genes=``, or the path of an ``.h5ad`` file, which is
        read backed: only the training cells are loaded, and the database is encoded in chunks.
        Raw counts or log-normalised values
        (detected); counts are library-size normalised and log1p-transformed.
    labels, cell_type_key
        The cell types: a vector, or the name of an ``obs`` column.  Label levels: a list of
        ``obs`` columns, coarsest first (``["class", "subclass"]``), or a table of labels (a
        DataFrame, a dict of vectors or a 2-D list; one column per level).  The network learns
        the finest level; every finer type must lie in one coarser type, and calls are made at
        every level, in agreement (see :mod:`schash._levels`).
    batches, batch_key
        Optional batches (vector or ``obs`` column): gene selection is batch-aware, the
        typicality's expression axes are fitted without the batches' offsets within each type
        (:func:`schash._novelty.batch_adjusted`) and, with ``scale="batch"``, every batch is
        standardised on its own.
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
    rare_type_cells
        Types with fewer training cells than this are *rare*: every query cell's call is put to
        a contest between the called type and the rare types among the cell's three nearest type
        prototypes, scored as SingleR scores cells (Spearman correlation with each type's
        reference cells over marker genes, fine-tuned; see :mod:`schash._rare`), and a rare type
        that wins takes the call.  A network learns little from a handful of cells; this scores
        them from their expression instead.  ``0`` turns it off; models without rare types store
        and run nothing.  Applies to the prototype call (``method="auto"``, the default);
        measured in ``bench/accuracy.py``.  With at most three candidates per cell its cost stays
        about 1 s per 100,000 query cells however many types are rare (see the README).
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
        beyond which a call is ``Unassigned`` (the cells perturbed by the training
        augmentation, as the typicality is calibrated, so that a query from another
        technology is expected; clipped to between ``n_bits / 8`` and ``3 n_bits / 8 - 1``).
    novelty_alpha
        Calls whose typicality (p-value) is below this are ``Unassigned``.  Chosen on the
        cross-batch left-out-type tasks of ``bench/accuracy.py`` (seeds 0-4; see its report):
        the targets are at least half of the cells of a type missing from the reference
        Unassigned and at most 5% of known-type cells (0.018: 51.0% and 5.0% in the benchmark's
        last run, with the typicality's tail beyond the calibration's extremes; 47.0% and 4.6%
        before it, on the same models; seeds 3 and 4 alone leave more than 5% of known-type cells
        Unassigned; 5.6% of the cells of full-reference cross-batch queries).  ``confidence``
        ranks the rest.  ``predict`` and ``annotate`` take another value
        for one annotation (``novelty_alpha=``) without changing the model.
    hidden, dropout, lr, batch_size, max_epochs
        The network's hidden layer widths and dropout, Adam's learning rate (``None``: 1e-3 for
        batches of up to 128 cells, ``1e-3 * sqrt(batch_size / 128)`` for larger ones; see
        :func:`schash._loop.learning_rate`), cells per batch and the most epochs (``None``: chosen
        from the number of training cells; early stopping on a validation split ends sooner).
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
    coords = None
    if basis is not None:
        obsm = getattr(data, "obsm", None)
        if obsm is None or basis not in obsm:
            raise InputError(f"basis={basis!r} names no obsm entry of the reference" + (
                f"; it has {list(obsm.keys())}" if obsm is not None else
                " (it is not an in-memory AnnData): load it, or call model.set_reference_map() later"))
        coords = _refmap.check_coords(obsm[basis])
    with Source(data, genes, layer) as src:
        y_all, level_table = _levels.read_labels(src, cell_type_key, labels)
        if y_all is None:
            raise InputError("no cell types given: pass labels= (a vector) or cell_type_key= (an obs column)")
        b_all = src.column(batch_key, batches, "batch")
        extra = {key: src.column(key, None, "reference") for key in reference_keys or ()}
        # the network trains on these cells, held in memory; the database holds every cell
        idx = _training_cells(y_all, max_cells_per_type, seed)
        expr = src.subset(idx)
        keep = _usable_cells(expr.X, y_all[idx], min_cells_per_type)
        if not keep.all():
            idx = idx[keep]
            expr = src.subset(idx)
        y_str, b_str = y_all[idx], (b_all[idx] if b_all is not None else None)
        types = sorted(set(y_str))
        y = pd.Categorical(y_str, categories=types).codes.astype(np.int64)
        pre, X = fit_preprocessor(expr, n_top_genes=n_top_genes, batches=b_str, transform=transform, scale=scale)
        del expr
        anchors = make_anchors(len(types), n_bits, seed)
        cfg = TrainConfig(hidden=tuple(hidden), dropout=dropout, lr=lr, batch_size=batch_size,
                          max_epochs=max_epochs, num_threads=num_threads, augment=augment)
        log_scale = transform == "log"
        val_idx = split(y, cfg.val_fraction, seed)[1]  # the network's validation cells (its own split)
        X_ref = X.restat(np.zeros(len(y), dtype=np.int64), pre.ref_mean[None], pre.ref_std[None])
        module, history, novelty, prototypes = _train_with_novelty(
            X, X_ref, y, anchors, val_idx, n_types=len(types), cfg=cfg, seed=seed, device=device,
            progress=progress, log_scale=log_scale, scale=scale, batches=b_str)
        threshold = _prune_threshold(module, calibration_rows(X, cfg, log_scale, seed + PRUNE_STREAM), val_idx,
                                     anchors, prune_quantile)
        rare = _rare.fit(X.F, y, len(types), min_cells=rare_type_cells, seed=seed) if prototypes is not None else None
        del X, X_ref
        # the reference database: every reference cell of a known type with expression, encoded
        # as queries are (reference batches scaled on their own under scale="batch")
        groups = pd.factorize(pd.Series(b_all))[0].astype(np.int64) if b_all is not None else None
        # (typicality is not needed here; the novelty scorer only places cells on a reference map)
        enc = Encoder(pre, module, anchors, novelty if coords is not None else None).run(
            src, groups=groups, kind=pre.input_kind, progress=progress, keep_projected=coords is not None)
    in_db = np.isin(y_all, types) & ~enc.empty
    ref_batches = batch_categories = None
    if b_all is not None:
        bc = pd.Categorical(b_all[in_db])
        ref_batches, batch_categories = bc.codes.astype(np.int64), [str(c) for c in bc.categories]
    params = dict(n_bits=n_bits, n_top_genes=n_top_genes, transform=transform, scale=scale, seed=seed,
                  min_cells_per_type=min_cells_per_type, rare_type_cells=rare_type_cells, hidden=list(hidden),
                  dropout=dropout, lr=lr,
                  prune_quantile=prune_quantile, novelty_alpha=novelty_alpha, cell_type_key=cell_type_key,
                  batch_key=batch_key, layer=layer, n_training_cells=int(len(y)),
                  max_cells_per_type=max_cells_per_type, augment=float(augment),
                  n_reference_cells=int(in_db.sum()))
    logger.info("trained: %d types, %d genes, validation macro F1 %.3f", len(types), len(pre.genes),
                history["best_val_macro_f1"])
    return SchashModel(
        module=module, pre=pre, cell_types=types, anchors=anchors, threshold=threshold, novelty=novelty,
        novelty_alpha=float(novelty_alpha),
        ref_codes=enc.codes[in_db],
        ref_labels=pd.Categorical(y_all[in_db], categories=types).codes.astype(np.int64),
        ref_batches=ref_batches, batch_categories=batch_categories,
        ref_meta={key: pd.Categorical(values[in_db]) for key, values in extra.items()},
        ref_map=_refmap.build(enc, coords, basis=basis, seed=seed) if coords is not None else None,
        params=params, history=history,
        levels=_levels.Hierarchy.from_labels(level_table, types) if level_table is not None else None,
        prototypes=prototypes,
        rare=rare,
    )


def type_prototypes(module, X, y: np.ndarray, n_types: int, chunk: int = 8192) -> np.ndarray | None:
    """Each type's mean of the network's last hidden layer over its training cells (as the network
    sees them, without augmentation), scaled to unit length: what ``method="prototype"`` compares
    a query cell's own hidden layer with (by cosine).  None for a network without hidden layers."""
    if not module.config["hidden"]:
        return None
    first = module.net[0]
    w1, b1 = first.weight.detach().numpy(), first.bias.detach().numpy()
    sums = np.zeros((n_types, module.config["hidden"][-1]))
    for s in range(0, len(y), chunk):
        hidden, _ = module.hidden_and_logits_from_first(X.slice(s, s + chunk).linear(w1, b1))
        np.add.at(sums, y[s : s + chunk], hidden.astype(np.float64))
    means = sums / np.maximum(np.bincount(y, minlength=n_types), 1)[:, None]
    return (means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)).astype(np.float32)


PRUNE_STREAM = 7  # the prune threshold's augmentation draws: a random stream of their own


def _prune_threshold(module, rows, val_idx: np.ndarray, anchors: np.ndarray, quantile: float) -> int:
    """The anchor distance beyond which a call is ``Unassigned``: the ``quantile`` of the
    validation cells' distances, the cells perturbed by the training augmentation (``rows``,
    as the typicality is calibrated) so that a query from another technology is expected;
    clipped to [K/8, 3K/8 - 1].  The ceiling was K/4 - 1, which many thresholds of references
    from several technologies reached; measured on the benchmark's 31 cross-batch left-out-type
    tasks (seeds 0-4, the same models), 21 of 155 thresholds rose (to at most K/4 + 3), known-type
    cells Unassigned 5.5% -> 5.1%, left-out ones 52.5% -> 51.7%."""
    n_bits = anchors.shape[1]
    codes = [_hamming.pack(module.logits_dense(rows(val_idx[s : s + 4096]))) for s in range(0, len(val_idx), 4096)]
    _, dist, _ = _hamming.nearest_anchor(np.concatenate(codes), _hamming.pack(anchors))
    return int(np.clip(np.ceil(np.quantile(dist, quantile)), n_bits // 8, 3 * n_bits // 8 - 1))


def _train_with_novelty(X, X_ref, y, anchors, val_idx, *, n_types, cfg, seed, device, progress, log_scale, scale,
                        batches=None):
    """Train the network and fit the novelty scorer side by side: the scorer's PCA, bank and
    calibration distances do not need the network, so they run in a second thread while it
    trains (on 2 cores, ~0.6 s of a 10,000-cell reference's training); only the margins and the
    prototype cosines wait for the network and its type prototypes.  Returns (module, history, novelty
    scorer, prototypes): the same as one after the other."""
    from concurrent.futures import Future, ThreadPoolExecutor

    trained: Future = Future()
    with ThreadPoolExecutor(1, thread_name_prefix="schash-novelty") as pool:
        novelty = pool.submit(
            fit_novelty, X_ref, y, np.setdiff1d(np.arange(len(y)), val_idx), seed=seed, anchors=anchors,
            calibration_rows=calibration_rows(X_ref, cfg, log_scale, seed),
            network=lambda z: _outputs(*trained.result(), z),
            margin_rows=calibration_rows(X, cfg, log_scale, seed) if scale == "batch" else None, batches=batches)
        try:
            module, history, net_val_idx = train_network(X, y, anchors, cfg=cfg, seed=seed, device=device,
                                                         progress=progress, log_scale=log_scale)
            prototypes = type_prototypes(module, X, y, n_types)
        except BaseException as exc:
            trained.set_exception(exc)  # the scorer's thread stops waiting
            raise
        trained.set_result((module, prototypes))
        if not np.array_equal(net_val_idx, val_idx):
            raise RuntimeError("schash: the network's validation split differs from the novelty scorer's")
        return module, history, novelty.result(), prototypes


def _outputs(module, prototypes, rows):
    """The network's pre-tanh outputs for dense ``rows`` and, with prototypes, each row's cosine with
    its nearest one (what the novelty scorer calibrates)."""
    if prototypes is None:
        return module.logits_dense(rows), None
    hidden, logits = module.hidden_and_logits_dense(rows)
    return logits, prototype_cosines(hidden, hidden @ prototypes.T)


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


def _usable_cells(X, y_str, min_cells):
    """Mask of reference cells to train on: drop empty cells and types below ``min_cells``."""
    totals = np.asarray(X.sum(axis=1)).reshape(-1)
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
