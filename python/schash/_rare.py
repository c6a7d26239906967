"""Rare types: a second opinion, by rank correlation, where a type has too few reference cells.

The network learns a type from its reference cells; from one to nine cells it learns that
handful, and the same type from another technology lands elsewhere (measured on the
benchmark's pancreas folds, whose rarest types have one to three cells).  SingleR scores such
types well from very few cells: Spearman correlation with each type's reference cells over
marker genes (genes higher in one type's median profile than in another's), the 0.8 quantile
per type, then the same again over the markers of the types within 0.05 of the best
(fine-tuning) until one is left or the set stops shrinking.

:class:`RareTypes` holds what that contest needs and runs it for every query cell between the
network's call and the rare types among the cell's three nearest type prototypes (``NEAR``), so
that a cell whose call stands is never scored against all types, a call changes only where a rare
type wins, and a rare type must first look plausible to the network.  With every rare type in the
contest, a reference of many similar types with many rare ones lost calls to chance wins (mouse
cortex, 48 subclasses of which 15 rare: macro F1 0.526 against 0.551 without a contest, 0.561
with the gate), and its cost grew with the sets of rare types fine-tuned together; with at most
three candidates a cell's contest is bounded.  It is fitted at training on the training cells'
features (the values the network's input is scaled from; ranks within a cell do not depend on
normalisation or transform) and runs per chunk inside the one encoder.  Measured in
``bench/accuracy.py``; on a model without rare types nothing is stored or run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import sparse

from ._preprocess import stored_ranks

QUANTILE = 0.8  # SingleR's quantile of a type's per-cell correlations
TOLERANCE = 0.05  # SingleR's fine-tuning: types this close to the best stay in the contest
NEAR = 3  # a rare type enters a cell's contest when its prototype is among the cell's NEAR nearest
MAX_CELLS = 50  # stored reference cells per type (a seeded subsample of larger types)
MEDIAN_CELLS = 2000  # cells per type whose median profile picks the markers


@dataclass(frozen=True)
class RareTypes:
    rare: np.ndarray  # int64: the rare types' indices
    markers_from: np.ndarray  # int32 rare × types × n: genes higher in rare type r than in type j (-1 pads)
    markers_to: np.ndarray  # int32 rare × types × n: genes higher in type j than in rare type r (-1 pads)
    cells: sparse.csr_matrix  # float32 features of the stored reference cells (model genes)
    labels: np.ndarray  # int64: each stored cell's type
    _refs: dict = field(default_factory=dict, repr=False, compare=False)  # (type, genes) -> unit ranks
    _rows: dict = field(default_factory=dict, repr=False, compare=False)  # type -> its stored cells

    # -- the file -------------------------------------------------------------------------
    def to_tensors(self) -> dict:
        c = self.cells
        return {"rare.types": self.rare.astype(np.int32), "rare.markers_from": self.markers_from,
                "rare.markers_to": self.markers_to, "rare.data": c.data.astype(np.float32),
                "rare.indices": c.indices.astype(np.int32), "rare.indptr": c.indptr.astype(np.int64),
                "rare.labels": self.labels.astype(np.int32)}

    @classmethod
    def from_tensors(cls, t: dict, n_genes: int) -> RareTypes | None:
        if "rare.types" not in t:
            return None
        cells = sparse.csr_matrix((t["rare.data"], t["rare.indices"], t["rare.indptr"]),
                                  shape=(len(t["rare.indptr"]) - 1, n_genes))
        return cls(t["rare.types"].astype(np.int64), t["rare.markers_from"], t["rare.markers_to"], cells,
                   t["rare.labels"].astype(np.int64))

    # -- the contest ----------------------------------------------------------------------
    def contest(self, F, near: np.ndarray) -> np.ndarray:
        """The calls after the contest.  ``near`` holds each row of the features ``F`` its nearest type
        prototypes, nearest first (:func:`nearest`): the call stands where it wins among itself and
        the rare types among the others, else the rare type that wins takes it."""
        F = sparse.csr_matrix(F)
        near = np.asarray(near, dtype=np.int64).reshape(F.shape[0], -1)
        out = near[:, 0].copy()
        is_rare = np.zeros(self.markers_from.shape[1], dtype=bool)
        is_rare[self.rare] = True
        key = np.column_stack([out, np.sort(np.where(is_rare[near[:, 1:]], near[:, 1:], -1), axis=1)])
        keys, inverse = np.unique(key, axis=0, return_inverse=True)
        order = np.argsort(inverse.ravel(), kind="stable")
        groups = np.split(order, np.cumsum(np.bincount(inverse.ravel(), minlength=len(keys)))[:-1])
        todo = [(tuple(sorted({int(t) for t in k if t >= 0})), rows) for k, rows in zip(keys, groups, strict=True)]
        while todo:
            nxt = []
            for cands, rows in todo:
                if len(cands) == 1:
                    out[rows] = cands[0]
                    continue
                scores = self._scores(F[rows], cands)
                within = scores >= scores.max(1, keepdims=True) - TOLERANCE
                settled = within.all(1)  # the set stops shrinking: the best one wins
                out[rows[settled]] = np.asarray(cands)[scores[settled].argmax(1)]
                if (~settled).any():
                    keys, inverse = np.unique(within[~settled], axis=0, return_inverse=True)
                    left = rows[~settled]
                    nxt += [(tuple(np.asarray(cands)[k]), left[inverse.ravel() == i]) for i, k in enumerate(keys)]
            todo = nxt
        return out

    def _scores(self, F: sparse.csr_matrix, cands: tuple) -> np.ndarray:
        """Cells × ``cands``: the 0.8 quantile of each cell's Spearman correlations with the stored
        cells of each candidate type, over the markers between every two candidates."""
        genes = self._genes(cands)
        q, q_norm = centred_ranks(F[:, genes])
        refs = [self._ref(t, genes) for t in cands]
        cor = np.asarray(q @ np.vstack(refs).T) / q_norm[:, None]  # one product (the zeros meet zero-sum rows)
        out = np.empty((F.shape[0], len(cands)), dtype=np.float64)
        start = 0
        for i, ref in enumerate(refs):
            out[:, i] = row_quantile(cor[:, start : start + len(ref)], QUANTILE)
            start += len(ref)
        return out

    def _ref(self, t: int, genes: np.ndarray) -> np.ndarray:
        """Type ``t``'s stored cells as dense, centred, unit rank rows over ``genes`` (kept for the next chunk)."""
        key = (t, genes.tobytes())
        ref = self._refs.get(key)  # (one lookup: safe when several threads share the model)
        if ref is None:
            rows = self._rows.get(t)
            if rows is None:
                rows = self._rows[t] = self.cells[self.labels == t]
            r, r_norm = centred_ranks(rows[:, genes])
            ref = (r.toarray() + _zero_offsets(r, len(genes))[:, None]) / r_norm[:, None]
            if len(self._refs) >= 1024:
                self._refs.clear()
            self._refs[key] = ref
        return ref

    def _genes(self, cands: tuple) -> np.ndarray:
        pos = {int(t): i for i, t in enumerate(self.rare)}
        picks = []
        for a in cands:
            for b in cands:
                if a != b:
                    picks.append(self.markers_from[pos[a], b] if a in pos else self.markers_to[pos[b], a])
        genes = np.unique(np.concatenate(picks))
        return genes[genes >= 0]


def nearest(sims: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k`` largest columns of ``sims`` (cells × types), largest first; the first is
    ``sims.argmax(1)`` (ties to the lower index), the call without a contest."""
    k = min(k, sims.shape[1])
    part = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < sims.shape[1] else \
        np.broadcast_to(np.arange(k), sims.shape).copy()
    top = np.take_along_axis(part, np.lexsort((part, -np.take_along_axis(sims, part, 1)), axis=1), 1)
    call = sims.argmax(1)
    for i in np.flatnonzero(top[:, 0] != call):  # an exact tie across the cut: argmax's choice first
        top[i] = [call[i]] + [t for t in top[i] if t != call[i]][: k - 1]
    return top


def centred_ranks(F: sparse.csr_matrix) -> tuple[sparse.csr_matrix, np.ndarray]:
    """Each row's average ranks (ties share their mean rank, as Spearman's correlation takes them),
    as a sparse matrix holding ``rank - zero rank`` at the non-zero values, and each row's norm
    of ``rank - mean rank``.  A zero-sum vector ``u`` has ``(rank - mean) · u`` = the sparse row · ``u``.
    The non-zero values rank above the row's zeros, in the order :func:`stored_ranks` gives them."""
    F = sparse.csr_matrix(F, dtype=np.float64, copy=True)
    F.eliminate_zeros()
    n, g = F.shape
    per_row = np.diff(F.indptr)
    row = np.repeat(np.arange(n), per_row)
    zeros = g - per_row
    zero_rank = (zeros + 1) / 2.0
    values = stored_ranks(F) + zeros[row] - zero_rank[row]
    mean = (g + 1) / 2.0
    sq = zeros * (zero_rank - mean) ** 2 + np.bincount(row, weights=(values + zero_rank[row] - mean) ** 2, minlength=n)
    out = sparse.csr_matrix((values, F.indices, F.indptr), shape=F.shape)
    return out, np.maximum(np.sqrt(sq), 1e-12)


def row_quantile(x: np.ndarray, p: float) -> np.ndarray:
    """``np.quantile(x, p, axis=1)`` (linear interpolation, R's type 7 as SingleR takes it), the same
    values, from a partition of the two order statistics it needs rather than NumPy's general path."""
    k = x.shape[1]
    pos = p * (k - 1)
    lo = int(np.floor(pos))
    hi = min(lo + 1, k - 1)
    part = np.partition(x, [lo, hi] if hi != lo else [lo], axis=1)
    a, b, t = part[:, lo], part[:, hi], pos - lo
    diff = b - a
    return np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)


def _zero_offsets(r: sparse.csr_matrix, g: int) -> np.ndarray:
    """Each row's ``zero rank - mean rank``: the centred rank of its zeros."""
    zeros = g - np.diff(r.indptr)
    return (zeros + 1) / 2.0 - (g + 1) / 2.0


def fit(F, y: np.ndarray, n_types: int, *, min_cells: int, seed: int) -> RareTypes | None:
    """What the contest needs, from the training cells' features ``F`` (cells × model genes) and
    types ``y``; None where every type has at least ``min_cells`` cells (or ``min_cells`` is 0)."""
    counts = np.bincount(y, minlength=n_types)
    rare = np.flatnonzero(counts < min_cells)
    if len(rare) == 0:
        return None
    F = sparse.csr_matrix(F, dtype=np.float32)
    rng = np.random.default_rng(seed)
    medians = np.zeros((n_types, F.shape[1]), dtype=np.float32)
    stored = []
    for t in range(n_types):
        idx = np.flatnonzero(y == t)
        some = np.sort(rng.choice(idx, MEDIAN_CELLS, replace=False)) if len(idx) > MEDIAN_CELLS else idx
        medians[t] = np.median(F[some].toarray(), axis=0)
        stored.append(np.sort(rng.choice(idx, MAX_CELLS, replace=False)) if len(idx) > MAX_CELLS else idx)
    # SingleR's number of markers per pair of types: 500 (2/3)^log2(number of types)
    n = min(max(int(round(500 * (2 / 3) ** np.log2(max(n_types, 2)))), 1), F.shape[1])
    markers_from = np.full((len(rare), n_types, n), -1, dtype=np.int32)
    markers_to = np.full((len(rare), n_types, n), -1, dtype=np.int32)
    for i, r in enumerate(rare):
        for j in range(n_types):
            if j != r:
                markers_from[i, j] = _top(medians[r] - medians[j], n)
                markers_to[i, j] = _top(medians[j] - medians[r], n)
    cells = np.concatenate(stored)
    return RareTypes(rare.astype(np.int64), markers_from, markers_to, F[cells], y[cells].astype(np.int64))


def _top(diff: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` genes of largest positive ``diff`` (-1 where fewer are positive)."""
    order = np.argsort(-diff, kind="stable")[:n]
    return np.where(diff[order] > 0, order, -1).astype(np.int32)
