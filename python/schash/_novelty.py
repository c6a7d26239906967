"""How typical a cell is of the reference: a per-cell p-value that needs no other query cell.

A network trained to map every cell to some anchor will map a cell of a type the
reference lacks onto a known anchor with full confidence, so the Hamming distance
alone cannot flag it.  Two views are combined:

*Expression.*  A small, stratified bank of reference cells is kept in a PCA of the
reference-scaled features, each cell as its PCA coordinates plus, as one more
coordinate, the norm of its residual off the PCA subspace (a new type's own marker
genes land there).  A cell's distance to the reference is the mean distance to its
``k`` nearest bank cells after every vector is scaled to unit length (``metric="cosine"``):
the *direction* of a cell's deviation from the reference mean says which type it
resembles, while its length grows with any technology shift — which made known cells
from another technology look new when plain distances were used.

*Network.*  The same bank cells are kept as the network's last hidden layer (scaled to
unit length), and a cell's distance is the mean distance to its ``k`` nearest of them
there (the deep nearest-neighbour score of Sun et al., ICML 2022): the network was
trained to place every known type, under technology-like perturbations, in its own
region of that space, so a cell of a new type lands away from every bank cell even when
its code happens to fall on a known anchor.

Both are calibrated on reference cells perturbed by the same technology-like
augmentation the network trains with (:func:`schash._train.augment`), so the p-values
expect a query from another technology; bank cells are scored without themselves.
The typicality combines the two conformal p-values by Fisher's method (for two,
``q (1 - ln q)`` with ``q`` their product).  Measured on the 31 cross-batch left-out-type
tasks of ``bench/accuracy.py`` (seeds 0-2): AUROC of ``1 - confidence`` 0.892-0.898, against
0.874-0.883 with the earlier network view (the mean agreement of the pre-tanh outputs with
the assigned anchor, combined by the Bonferroni minimum), and at ``novelty_alpha=0.02``
1.0-1.1 points fewer known-type cells Unassigned with as many left-out-type cells.

Models saved before this version use that margin (``margin_calibration``), and older ones
plain Euclidean distances (``metric="euclidean"``); both are scored as they were.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from ._scaled import dot_rows

METRICS = ("cosine", "euclidean")


@dataclass
class NoveltyScorer:
    components: np.ndarray  # n_comps × genes
    center: np.ndarray  # genes
    bank: np.ndarray  # n_bank × (n_comps + 1): PCA coordinates and residual norm
    calibration: np.ndarray  # sorted distances of calibration cells
    margin_calibration: np.ndarray | None = None  # sorted margins of calibration cells (older models)
    k: int = 10
    metric: str = "cosine"
    deep_bank: np.ndarray | None = None  # n_bank × width: the bank cells' last hidden layer, unit length
    deep_calibration: np.ndarray | None = None  # sorted deep distances of calibration cells

    def project(self, rows) -> np.ndarray:
        """PCA coordinates plus, as the last column, the norm of the residual off the PCA subspace.

        ``rows`` is a dense array of standardised rows or a :class:`~schash._scaled.Scaled` block.
        The residual is ``sqrt(||z - center||^2 - ||coords||^2)`` (the components are orthonormal).
        """
        if isinstance(rows, np.ndarray):
            centred = rows - self.center
            coords = centred @ self.components.T
            total = np.einsum("ij,ij->i", centred, centred)
        else:
            coords = rows.linear(self.components, -dot_rows(self.components, self.center))  # thread-independent
            total = rows.sq_dist(self.center)
        return self.project_from(coords, total)

    @staticmethod
    def project_from(coords: np.ndarray, total: np.ndarray) -> np.ndarray:
        """:meth:`project` from PCA coordinates and squared distances to the centre."""
        resid = np.sqrt(np.maximum(total - np.einsum("ij,ij->i", coords, coords), 0.0))
        return np.column_stack([coords, resid]).astype(np.float32)

    def _space(self, projected: np.ndarray) -> np.ndarray:
        if self.metric == "euclidean":
            return projected[:, :-1]
        return projected / np.maximum(np.linalg.norm(projected, axis=1, keepdims=True), 1e-12)

    def distances(self, projected: np.ndarray, own: np.ndarray | None = None) -> np.ndarray:
        """Mean distance to the ``k`` nearest bank cells; ``own[i]`` (bank row or -1) is left out."""
        d = _mean_knn(self._space(self.bank), self._space(projected), self.k, own)
        if self.metric == "euclidean":
            return np.sqrt(d**2 + projected[:, -1] ** 2)
        return d

    def deep_distances(self, features: np.ndarray, own: np.ndarray | None = None) -> np.ndarray:
        """Mean distance to the ``k`` nearest bank cells in the network's last hidden layer."""
        return _mean_knn(self.deep_bank, unit(features), self.k, own)

    @property
    def uses_features(self) -> bool:
        """Whether :meth:`typicality` takes the network's last hidden layer (else its margins)."""
        return self.deep_calibration is not None

    def typicality(self, coords: np.ndarray, margins: np.ndarray | None = None,
                   features: np.ndarray | None = None) -> np.ndarray:
        """Conformal p-values in (0, 1]; each cell's depends on that cell alone."""
        p = _p_above(self.calibration, self.distances(coords))
        if features is not None and self.uses_features:
            q = p * _p_above(self.deep_calibration, self.deep_distances(features))
            return np.minimum(1.0, q * (1.0 - np.log(q)))  # Fisher's combination of two p-values
        if margins is not None and self.margin_calibration is not None and len(self.margin_calibration):
            cal = self.margin_calibration
            p_margin = (1.0 + np.searchsorted(cal, margins, side="right")) / (1.0 + len(cal))
            p = np.minimum(1.0, 2.0 * np.minimum(p, p_margin))
        return p

    def to_tensors(self) -> dict[str, np.ndarray]:
        t = {"novelty.components": self.components, "novelty.center": self.center,
             "novelty.bank": self.bank, "novelty.calibration": self.calibration}
        if self.margin_calibration is not None:
            t["novelty.margin_calibration"] = self.margin_calibration
        if self.deep_calibration is not None:
            t["novelty.deep_bank"] = self.deep_bank
            t["novelty.deep_calibration"] = self.deep_calibration
        return t

    @classmethod
    def from_tensors(cls, t: dict, k: int, metric: str = "euclidean") -> NoveltyScorer:
        return cls(t["novelty.components"], t["novelty.center"], t["novelty.bank"], t["novelty.calibration"],
                   t.get("novelty.margin_calibration"), k=k, metric=metric, deep_bank=t.get("novelty.deep_bank"),
                   deep_calibration=t.get("novelty.deep_calibration"))


def unit(a: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero)."""
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def _mean_knn(bank: np.ndarray, rows: np.ndarray, k: int, own: np.ndarray | None = None) -> np.ndarray:
    """Mean Euclidean distance of each row to its ``k`` nearest bank rows; ``own[i]`` (bank row or -1) is left out."""
    k = min(k, len(bank) - (own is not None))
    extra = 1 if own is not None else 0
    d, i = NearestNeighbors(n_neighbors=k + extra).fit(bank).kneighbors(rows)
    if own is None:
        return d.mean(1)
    keep = i != own[:, None]
    keep &= np.cumsum(keep, axis=1) <= k
    return np.where(keep, d, 0.0).sum(1) / k


def _p_above(calibration: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Conformal p-values of distances ``d``: the share of calibration distances at least as large."""
    n_ge = len(calibration) - np.searchsorted(calibration, d, side="left")
    return (1.0 + n_ge) / (1.0 + len(calibration))


def margins(logits: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Mean agreement of pre-tanh outputs with their nearest anchor."""
    best = ((logits > 0).astype(np.float32) * 2 - 1) @ anchors.T
    return (logits * anchors[best.argmax(1)]).mean(1)


def fit_novelty(X, y: np.ndarray, train_idx: np.ndarray, *, seed: int, calibration_rows, features,
                network_rows=None, margin_rows=None, n_comps: int = 30, bank_size: int = 1000, k: int = 10,
                n_calibration: int = 20000) -> NoveltyScorer:
    """Fit the PCA on (a sample of) the training cells, build the bank and calibrate.

    ``calibration_rows(idx)`` returns the reference rows ``idx`` as they are calibrated on
    (augmented when the network was trained with augmentation), ``features(rows)`` the
    network's last hidden layer for rows as the network takes them: ``network_rows(idx)`` (plain)
    and ``margin_rows(idx)`` (as calibrated) where the network's input is scaled otherwise
    (``scale="batch"``).  Everything but the network's view is done before ``features`` is first
    called, so this can run while the network trains.
    """
    rng = np.random.default_rng(seed)
    fit_idx = np.sort(rng.choice(train_idx, min(len(train_idx), 20000), replace=False))
    rows = X.rows(fit_idx)
    n_comps = int(min(n_comps, rows.shape[1] - 1, rows.shape[0] - 1))
    # two power iterations (scikit-learn's default is 7): the bank, the calibration and every query share
    # this one projection, so a rougher subspace shifts no p-value; on the benchmark's left-out-type tasks
    # AUROC and Unassigned fractions were the same, and the PCA of a 10,000-cell reference ~0.6 s faster
    pca = PCA(n_components=n_comps, svd_solver="randomized", iterated_power=2, random_state=seed).fit(rows)
    bank_idx = _stratified(train_idx, y, bank_size, rng)
    scorer = NoveltyScorer(pca.components_.astype(np.float32), pca.mean_.astype(np.float32),
                           np.zeros((0, n_comps + 1), np.float32), np.zeros(0, np.float32), k=k)
    bank_rows = X.rows(bank_idx)
    scorer.bank = scorer.project(bank_rows)
    # every reference cell may calibrate (a bank cell is scored without itself), so small
    # references still give p-values fine enough for a small alpha
    cal_idx = np.sort(rng.choice(len(y), min(len(y), n_calibration), replace=False))
    own = np.full(len(y), -1, dtype=np.int64)
    own[bank_idx] = np.arange(len(bank_idx))
    parts = [cal_idx[s : s + 4096] for s in range(0, len(cal_idx), 4096)]
    d, z_parts = [], []
    for part in parts:
        z = calibration_rows(part)
        d.append(scorer.distances(scorer.project(z), own=own[part]))
        z_parts.append(z if margin_rows is None else margin_rows(part))
    scorer.calibration = np.sort(np.concatenate(d)).astype(np.float32)
    # the network is needed only from here on (``features`` may wait for it: see _train.py); the
    # calibration rows are kept until then, at most n_calibration × genes float32 (160 MB at 2,000)
    net_bank = bank_rows if network_rows is None else network_rows(bank_idx)
    scorer.deep_bank = unit(features(net_bank)).astype(np.float32)
    deep = [scorer.deep_distances(features(z), own=own[part]) for z, part in zip(z_parts, parts, strict=True)]
    scorer.deep_calibration = np.sort(np.concatenate(deep)).astype(np.float32)
    return scorer


def _stratified(idx: np.ndarray, y: np.ndarray, size: int, rng) -> np.ndarray:
    """Up to ``size`` cells of ``idx``, proportional to type size but at least 50 (or all) of each type."""
    if len(idx) <= size:
        return idx
    out = []
    types, counts = np.unique(y[idx], return_counts=True)
    for t, c in zip(types, counts, strict=True):
        members = idx[y[idx] == t]
        take = min(c, max(50, int(round(size * c / len(idx)))))
        out.append(rng.choice(members, take, replace=False))
    return np.sort(np.concatenate(out))
