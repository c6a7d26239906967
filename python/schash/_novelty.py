"""How typical a cell is of the reference, in expression space.

A network trained to map every cell to some anchor will map a cell of a type the
reference lacks onto a known anchor with full confidence, so the Hamming distance
alone cannot flag it.  This scorer keeps a small, stratified bank of reference
cells in a PCA of the reference's scaled features.  A cell's distance to the
reference is the mean distance to its ``k`` nearest bank cells inside the PCA
subspace combined with its residual off that subspace (what the reference's main
axes of variation cannot explain — a new type's own marker genes land there).
The distance is calibrated on held-out reference cells.

A second, network-side signal is the *margin*: the mean agreement between the
pre-tanh output and the anchor it is assigned to.  Cells the network has learned
to place sit deep on their anchor's side; cells unlike its training data tend to
sit near the decision boundaries.  It is calibrated on the same held-out cells.
The typicality is the smaller of the two p-values, doubled (Bonferroni), so it is
low when either view finds the cell unusual.  A query
cell's *typicality* is the fraction of held-out reference cells that lie at least
as far from the bank as it does — a conformal p-value, low for cells unlike any
reference type.  When most of a query lies farther away than the reference
(a batch or technology shift), distances are first divided by the ratio of their
lower quartiles, so the shift itself does not make every cell atypical; the lower
quartile, not the median, so that a new type making up to three quarters of the
query does not hide itself.  Features here are always standardised with the
reference's statistics (also under ``scale="batch"``): a query standardised on its
own would absorb a large new population into its means.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors


@dataclass
class NoveltyScorer:
    components: np.ndarray  # n_comps × genes
    center: np.ndarray  # genes
    bank: np.ndarray  # n_bank × n_comps
    calibration: np.ndarray  # sorted held-out distances
    margin_calibration: np.ndarray | None = None  # sorted held-out margins
    k: int = 10
    min_cells_shift: int = 50

    def project(self, rows) -> np.ndarray:
        """PCA coordinates plus, as the last column, the norm of the residual off the PCA subspace.

        ``rows`` is a dense array of standardised rows or a :class:`SparseScaled` block.
        The residual is ``sqrt(||z - center||^2 - ||coords||^2)`` (the components are orthonormal).
        """
        if isinstance(rows, np.ndarray):
            centred = rows - self.center
            coords = centred @ self.components.T
            total = np.einsum("ij,ij->i", centred, centred)
        else:
            coords = rows.linear(self.components, -(self.components @ self.center))
            total = rows.sq_dist(self.center)
        resid = np.sqrt(np.maximum(total - np.einsum("ij,ij->i", coords, coords), 0.0))
        return np.column_stack([coords, resid]).astype(np.float32)

    def distances(self, projected: np.ndarray) -> np.ndarray:
        k = min(self.k, len(self.bank))
        d, _ = NearestNeighbors(n_neighbors=k).fit(self.bank[:, :-1]).kneighbors(projected[:, :-1])
        return np.sqrt(d.mean(1) ** 2 + projected[:, -1] ** 2)

    def typicality(self, coords: np.ndarray, margins: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """Conformal p-values in (0, 1] and the shift factor applied to the query's distances."""
        d = self.distances(coords)
        big = len(d) >= self.min_cells_shift
        shift = max(1.0, float(np.quantile(d, 0.25) / np.quantile(self.calibration, 0.25))) if big else 1.0
        n_ge = len(self.calibration) - np.searchsorted(self.calibration, d / shift, side="left")
        p = (1.0 + n_ge) / (1.0 + len(self.calibration))
        if margins is not None and self.margin_calibration is not None and len(self.margin_calibration):
            cal = self.margin_calibration
            m_shift = min(1.0, float(np.quantile(margins, 0.75) / np.quantile(cal, 0.75))) if big else 1.0
            n_le = np.searchsorted(cal, margins / max(m_shift, 1e-6), side="right")
            p_margin = (1.0 + n_le) / (1.0 + len(cal))
            p = np.minimum(1.0, 2.0 * np.minimum(p, p_margin))
        return p, shift

    def to_tensors(self) -> dict[str, np.ndarray]:
        t = {"novelty.components": self.components, "novelty.center": self.center,
             "novelty.bank": self.bank, "novelty.calibration": self.calibration}
        if self.margin_calibration is not None:
            t["novelty.margin_calibration"] = self.margin_calibration
        return t

    @classmethod
    def from_tensors(cls, t: dict, k: int) -> "NoveltyScorer":
        return cls(t["novelty.components"], t["novelty.center"], t["novelty.bank"], t["novelty.calibration"],
                   t.get("novelty.margin_calibration"), k=k)


def margins(logits: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Mean agreement of pre-tanh outputs with their nearest anchor."""
    best = ((logits > 0).astype(np.float32) * 2 - 1) @ anchors.T
    return (logits * anchors[best.argmax(1)]).mean(1)


def fit_novelty(X, y: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray, *, seed: int,
                val_margins: np.ndarray | None = None,
                n_comps: int = 30, bank_size: int = 1000, k: int = 10) -> NoveltyScorer:
    """Fit the PCA on (a sample of) the training cells, build the bank, calibrate on the other cells."""
    rng = np.random.default_rng(seed)
    fit_idx = np.sort(rng.choice(train_idx, min(len(train_idx), 20000), replace=False))
    rows = X.rows(fit_idx)
    n_comps = int(min(n_comps, rows.shape[1] - 1, rows.shape[0] - 1))
    pca = PCA(n_components=n_comps, svd_solver="randomized", random_state=seed).fit(rows)
    bank_idx = _stratified(train_idx, y, bank_size, rng)
    scorer = NoveltyScorer(pca.components_.astype(np.float32), pca.mean_.astype(np.float32),
                           np.zeros((0, n_comps + 1), np.float32), np.zeros(0, np.float32), k=k)
    scorer.bank = scorer.project(X.rows(bank_idx))
    # Calibrate on held-out cells and on training cells outside the bank: neither is its own
    # neighbour, and many cells give p-values fine enough for a small alpha.
    pool = np.setdiff1d(np.concatenate([val_idx, train_idx]), bank_idx)
    if len(pool) < 200:  # a small reference: every cell, each scored without itself
        cal = _leave_self_out(scorer, scorer.project(X.rows(bank_idx)))
        pool_d = scorer.distances(scorer.project(X.rows(pool))) if len(pool) else np.zeros(0)
        cal = np.concatenate([cal, pool_d])
    else:
        pool = np.sort(rng.choice(pool, min(len(pool), 20000), replace=False))
        cal = scorer.distances(scorer.project(X.rows(pool)))
    scorer.calibration = np.sort(cal).astype(np.float32)
    if val_margins is not None:
        scorer.margin_calibration = np.sort(val_margins).astype(np.float32)
    return scorer


def _leave_self_out(scorer: NoveltyScorer, projected: np.ndarray) -> np.ndarray:
    """Distances of bank cells to the bank, each leaving itself out."""
    k = min(scorer.k, len(scorer.bank) - 1)
    d, _ = NearestNeighbors(n_neighbors=k + 1).fit(scorer.bank[:, :-1]).kneighbors(projected[:, :-1])
    return np.sqrt(d[:, 1:].mean(1) ** 2 + projected[:, -1] ** 2)


def _stratified(idx: np.ndarray, y: np.ndarray, size: int, rng) -> np.ndarray:
    """Up to ``size`` cells of ``idx``, proportional to type size but at least 50 (or all) of each type."""
    if len(idx) <= size:
        return idx
    out = []
    types, counts = np.unique(y[idx], return_counts=True)
    for t, c in zip(types, counts):
        members = idx[y[idx] == t]
        take = min(c, max(50, int(round(size * c / len(idx)))))
        out.append(rng.choice(members, take, replace=False))
    return np.sort(np.concatenate(out))
