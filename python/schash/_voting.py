"""Majority voting of cell-type calls over clusters (like CellTypist's ``majority_voting``).

``majority_vote`` relabels every cell with the most frequent call in its cluster;
``over_cluster`` makes small clusters from the cells' hash codes when the user has none.

Rules of the vote
-----------------
* Votes are the calls given, one per cell: pass ``pruned_label`` to let untrusted cells
  (``"Unassigned"``) vote as such, ``label`` to vote with every cell's nearest type.
* A cluster is ``Unassigned`` only when ``Unassigned`` is its strictly most frequent call;
  in a tie with a cell type the cell type wins (a vote exists to name the cluster).
* Ties between cell types go to the type that comes first in the label order: the
  categories' order where ``labels`` is categorical, alphabetical order otherwise.
* ``majority_share`` is the winning call's share of all the cluster's cells
  (``Unassigned`` cells included), so a low share marks a mixed cluster.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from ._errors import InputError
from ._logging import logger

# CellTypist's over-clustering resolutions: fewer than 5k cells -> 5, ..., 200k or more -> 30
_RESOLUTION_STEPS = ((5_000, 5.0), (20_000, 10.0), (40_000, 15.0), (100_000, 20.0), (200_000, 25.0))


def _as_series(x, what: str) -> pd.Series:
    if isinstance(x, pd.Series):
        return x
    if isinstance(x, (pd.DataFrame, dict)) or np.ndim(x) != 1:
        raise InputError(f"{what} must be one value per cell (a 1-D array, list or Series), got shape {np.shape(x)}")
    return pd.Series(x)


def majority_vote(labels, clusters, *, unassigned: str = "Unassigned") -> pd.DataFrame:
    """Replace each cell's call with the most frequent call of its cluster.

    Parameters
    ----------
    labels
        One call per cell (e.g. ``model.predict(q)["pruned_label"]``); a Series keeps its index.
    clusters
        One cluster id per cell (Leiden clusters, ``over_cluster(...)``), in the same order
        as ``labels``; where both are Series with the same cells in another order,
        ``clusters`` is aligned to ``labels``' index.
    unassigned
        The call that means "no trusted type"; it wins a cluster only by a strict majority.

    Returns
    -------
    DataFrame indexed like ``labels`` (a RangeIndex for non-Series input) with
    ``majority_label`` (categorical) and ``majority_share`` (float in (0, 1]). See the
    module docstring for the tie rules.
    """
    lab = _as_series(labels, "labels")
    clu = _as_series(clusters, "clusters")
    if len(lab) != len(clu):
        raise InputError(f"labels and clusters must have one value per cell: got {len(lab)} labels and "
                         f"{len(clu)} cluster ids")
    index = lab.index if isinstance(labels, pd.Series) else pd.RangeIndex(len(lab))
    if isinstance(labels, pd.Series) and isinstance(clusters, pd.Series) and not clu.index.equals(lab.index):
        if lab.index.has_duplicates or clu.index.has_duplicates or not clu.index.sort_values().equals(
                lab.index.sort_values()):
            raise InputError("labels and clusters are Series indexed by different cells; pass clusters for the "
                             "same cells (or .to_numpy() to match them by position)")
        clu = clu.reindex(lab.index)
    n_na = int(clu.isna().sum())
    if n_na:
        raise InputError(f"{n_na} of {len(clu)} cells have no cluster (NA); give them a cluster (e.g. "
                         f"clusters.astype(object).fillna('unclustered')) or vote over the clustered cells only")
    n_na = int(lab.isna().sum())
    if n_na:
        raise InputError(f"{n_na} of {len(lab)} labels are NA; give untrusted cells the call {unassigned!r}")

    if isinstance(lab.dtype, pd.CategoricalDtype):
        order = [str(c) for c in lab.cat.categories]
        lab = lab.astype(str)
    else:
        lab = lab.astype(str)
        order = sorted(set(lab))
    if unassigned not in order:
        order.append(unassigned)
    lab_code = pd.Categorical(lab.to_numpy(), categories=order).codes.astype(np.int64)
    clu_code, _ = pd.factorize(clu.to_numpy(), sort=False)
    n_clu, n_lab = int(clu_code.max(initial=-1)) + 1, len(order)

    counts = np.bincount(clu_code * n_lab + lab_code, minlength=n_clu * n_lab).reshape(n_clu, n_lab)
    score = 2 * counts
    score[:, order.index(unassigned)] -= 1  # Unassigned loses ties; argmax keeps the first of equal scores
    win = score.argmax(axis=1)
    share = counts[np.arange(n_clu), win] / np.maximum(counts.sum(axis=1), 1)
    out = pd.DataFrame({
        "majority_label": pd.Categorical.from_codes(win[clu_code], categories=order),
        "majority_share": share[clu_code].astype(np.float64)}, index=index)
    logger.debug("majority vote: %d cells in %d clusters", len(lab), n_clu)
    return out


def default_resolution(n_cells: int) -> float:
    """CellTypist's over-clustering resolution for ``n_cells`` cells (5 below 5k ... 30 from 200k)."""
    for limit, res in _RESOLUTION_STEPS:
        if n_cells < limit:
            return res
    return 30.0


def over_cluster(codes_pm1, *, resolution: float | None = None, seed: int = 0, n_neighbors: int = 15) -> np.ndarray:
    """Leiden clusters of cells from their ±1 hash codes; string ids ``"0"``, ``"1"``, ... (largest first).

    Cells with identical codes are one point: the k-NN graph (scanpy's ``neighbors``,
    Euclidean distance, which orders codes as Hamming distance does) and Leiden
    (igraph, 2 iterations) run on the distinct codes, and every cell takes its code's
    cluster. Identical codes therefore always share a cluster; on the cells themselves the
    graph among duplicates would be an arbitrary tie-break, which Leiden at over-clustering
    resolutions splits into near-singletons. The number of cells a code stands for does not
    weight the graph. ``resolution=None``: CellTypist's rule on the number of cells
    (:func:`default_resolution`). Fewer than three distinct codes: one cluster per code.
    The result depends only on the codes and ``seed``.

    ``codes_pm1``: cells × bits, values -1/+1 (``schash._hamming.unpack(model.encode(q), model.n_bits)``).
    """
    X = np.asarray(codes_pm1)
    if X.ndim != 2 or X.shape[1] == 0:
        raise InputError(f"codes_pm1 must be a cells × bits matrix, got shape {X.shape}")
    if not np.issubdtype(X.dtype, np.number) or not np.isin(X, (-1, 1)).all():
        raise InputError("codes_pm1 must hold only -1 and +1; for packed codes from model.encode() pass "
                         "schash._hamming.unpack(codes, model.n_bits)")
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, (int, np.integer)) or n_neighbors < 2:
        raise InputError(f"n_neighbors must be an integer >= 2, got {n_neighbors!r}")
    if resolution is not None and not (isinstance(resolution, (int, float, np.number)) and resolution > 0):
        raise InputError(f"resolution must be a positive number or None, got {resolution!r}")
    n = X.shape[0]
    res = default_resolution(n) if resolution is None else float(resolution)

    bits = np.ascontiguousarray(X > 0)
    packed = np.packbits(bits, axis=1)
    flat = packed.view(np.dtype((np.void, packed.shape[1]))).reshape(-1)
    _, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    m = len(first)
    if m < 3:
        code_cluster = np.arange(m)
    else:
        import anndata as ad
        import scanpy as sc

        a = ad.AnnData(np.zeros((m, 1), dtype=np.float32))
        a.obsm["X_codes"] = np.where(bits[first], 1.0, -1.0).astype(np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy's SparseEfficiencyWarning inside scanpy's neighbors
            sc.pp.neighbors(a, use_rep="X_codes", n_neighbors=min(int(n_neighbors), m), random_state=seed)
            sc.tl.leiden(a, resolution=res, random_state=seed, flavor="igraph", n_iterations=2, directed=False,
                         key_added="cluster")
        code_cluster = a.obs["cluster"].astype(int).to_numpy()
    cell_cluster = code_cluster[inverse]
    # ids by decreasing number of cells, ties by the smaller leiden id
    sizes = np.bincount(cell_cluster)
    rank = np.empty(len(sizes), dtype=np.int64)
    rank[np.lexsort((np.arange(len(sizes)), -sizes))] = np.arange(len(sizes))
    logger.debug("over_cluster: %d cells, %d distinct codes, resolution %g, %d clusters", n, m, res,
                 int((sizes > 0).sum()))
    return rank[cell_cluster].astype(str).astype(object)
