"""How typical a cell is of the reference: a per-cell p-value that needs no other query cell.

A network trained to map every cell to some anchor will map a cell of a type the
reference lacks onto a known anchor with full confidence, so the Hamming distance
alone cannot flag it.  Two views are combined:

*Expression.*  A small, stratified bank of reference cells is kept in a PCA of the
reference-scaled features, each cell as its PCA coordinates plus, as one more
coordinate, the norm of its residual off the PCA subspace (a new type's own marker
genes land there).  Where the reference has batches, the PCA is fitted with each type's
batches moved onto the type's mean (:func:`batch_adjusted`), so its axes follow cells and
types rather than the reference's own technologies.  A cell's distance to the reference is
the mean distance to its ``k`` nearest bank cells after every vector is scaled to unit length
(``metric="cosine"``): the *direction* of a cell's deviation from the reference mean says
which type it resembles, while its length grows with any technology shift — which made
known cells from another technology look new when plain distances were used.

*Network.*  The margin is the mean agreement between the pre-tanh output and the
anchor the cell is assigned to: cells the network has learned to place sit deep on
their anchor's side, cells unlike its training data near the decision boundaries.

Both are calibrated on reference cells perturbed by the same technology-like
augmentation the network trains with (:func:`schash._train.augment`), so the p-values
expect a query from another technology; bank cells are scored without themselves.

The two conformal p-values are combined by Fisher's statistic ``-log p_expr - log p_margin``,
itself calibrated on the calibration cells' own statistics (each cell's two p-values
against the other calibration cells): the typicality is the fraction of calibration cells
at least as atypical in both views together, so it is a p-value whether or not the views
agree.  Measured on the 31 cross-batch left-out-type tasks of ``bench/accuracy.py`` (seeds
0–4, the same models): AUROC of ``1 - confidence`` 0.882 against 0.871 for the doubled
smaller p-value (Bonferroni, used before).  Where both leave 6.0% of the cells of
full-reference cross-batch queries ``Unassigned`` (``novelty_alpha`` 0.018 here, 0.02 before),
the combination leaves 50.2% of left-out and 4.8% of known-type cells ``Unassigned``, against
58.2% and 6.9%: a query from another technology is moderately atypical in both views, which
the combination weighs, where the smaller p-value waited for one view to be extreme.

A conformal p-value cannot fall below ``1 / (n + 1)`` with ``n`` calibration cells, so every
value beyond the calibration's extreme used to get that floor: with a reference of a few hundred
cells the floor sits close to ``novelty_alpha``, and a cell whose margin lies far below every
calibration cell's counted no more than one at their edge.  Beyond the extremes each p-value now
goes on falling along an exponential tail fitted to the calibration's most extreme tenth, down to
a tenth of the floor (:func:`_p_above`); values within the calibration's range keep their
p-values exactly.  On the 31 cross-batch left-out-type tasks (seeds 0-4, the same models) it left
51.0% of left-out and 5.0% of known-type cells ``Unassigned`` at the default ``novelty_alpha``,
against 47.0% and 4.6% (at the same share of known-type cells the floor would leave about 49%);
nearly all of the gain is on CellBench's two-type references of 130-145 cells (16% to 47% of
left-out cells), where the floor was 0.007.  AUROC is unchanged (0.873).

The confidence also reads how close a cell's last hidden layer points to its nearest type
prototype and how clearly its expression points to one type (:mod:`schash._clarity`), both
calibrated on the same cells (:func:`confidence_factor`); neither enters the typicality, so neither
decides an ``Unassigned`` call.

Models saved before the calibrated combination keep Bonferroni; those saved before the
cosine bank use plain Euclidean distances (``metric="euclidean"``); those saved before the tail
keep the conformal floor (``tail=0``); those saved before the alignment or the clarity have a confidence
without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from . import _clarity, _hamming
from ._scaled import dot_rows

METRICS = ("cosine", "euclidean")


@dataclass
class NoveltyScorer:
    components: np.ndarray  # n_comps × genes
    center: np.ndarray  # genes
    bank: np.ndarray  # n_bank × (n_comps + 1): PCA coordinates and residual norm
    calibration: np.ndarray  # sorted distances of calibration cells
    margin_calibration: np.ndarray | None = None  # sorted margins of calibration cells
    joint_calibration: np.ndarray | None = None  # sorted Fisher statistics of calibration cells
    k: int = 10
    metric: str = "cosine"
    tail: float = 0.0  # share of calibration extremes an exponential tail is fitted to; 0: the conformal floor
    # sorted cosines of the calibration cells' last hidden layer with their nearest type prototype (the
    # confidence's alignment factor); None in models without prototypes or saved before it
    prototype_calibration: np.ndarray | None = None
    # the expression view's type classifier and its calibration cells' sorted largest probabilities (the
    # confidence's clarity factor, schash._clarity); None in models saved before it
    clarity_coef: np.ndarray | None = None
    clarity_intercept: np.ndarray | None = None
    clarity_calibration: np.ndarray | None = None

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
        k = min(self.k, len(self.bank) - (own is not None))
        extra = 1 if own is not None else 0
        d, i = NearestNeighbors(n_neighbors=k + extra).fit(self._space(self.bank)).kneighbors(self._space(projected))
        if own is not None:
            keep = i != own[:, None]
            keep &= np.cumsum(keep, axis=1) <= k
            d = np.where(keep, d, 0.0).sum(1) / k
        else:
            d = d.mean(1)
        if self.metric == "euclidean":
            return np.sqrt(d**2 + projected[:, -1] ** 2)
        return d

    def typicality(self, coords: np.ndarray, margins: np.ndarray | None = None) -> np.ndarray:
        """Conformal p-values in (0, 1]; each cell's depends on that cell alone."""
        p = _p_above(self.calibration, self.distances(coords), self.tail)
        if margins is None or self.margin_calibration is None or not len(self.margin_calibration):
            return p
        p_margin = _p_below(self.margin_calibration, margins, self.tail)
        if self.joint_calibration is None:  # a model saved before the calibrated combination
            return np.minimum(1.0, 2.0 * np.minimum(p, p_margin))
        return _p_above(self.joint_calibration, fisher(p, p_margin).astype(np.float32), self.tail)  # as stored

    def alignment(self, cosines: np.ndarray | None) -> np.ndarray | None:
        """Conformal p-values of cells' cosines with their nearest type prototype
        (:func:`prototype_cosines`) among the calibration cells': smaller is less aligned.  None where
        the model has no such calibration or no cosines are given."""
        if cosines is None or self.prototype_calibration is None or not len(self.prototype_calibration):
            return None
        return _p_below(self.prototype_calibration, cosines)

    def clarity(self, projected: np.ndarray | None) -> np.ndarray | None:
        """Conformal p-values of cells' largest class probability under the expression view's type
        classifier (:mod:`schash._clarity`) among the calibration cells': smaller is less clear.  None
        where the model has no such classifier or no coordinates are given."""
        if projected is None or self.clarity_calibration is None:
            return None
        probs = _clarity.max_probability(self._space(projected), self.clarity_coef, self.clarity_intercept)
        return _p_below(self.clarity_calibration, probs)

    def to_tensors(self) -> dict[str, np.ndarray]:
        t = {"novelty.components": self.components, "novelty.center": self.center,
             "novelty.bank": self.bank, "novelty.calibration": self.calibration}
        if self.margin_calibration is not None:
            t["novelty.margin_calibration"] = self.margin_calibration
        if self.joint_calibration is not None:
            t["novelty.joint_calibration"] = self.joint_calibration
        if self.prototype_calibration is not None:
            t["novelty.prototype_calibration"] = self.prototype_calibration
        if self.clarity_calibration is not None:
            t.update({"novelty.clarity_coef": self.clarity_coef, "novelty.clarity_intercept": self.clarity_intercept,
                      "novelty.clarity_calibration": self.clarity_calibration})
        return t

    @classmethod
    def from_tensors(cls, t: dict, k: int, metric: str = "euclidean", tail: float = 0.0) -> NoveltyScorer:
        return cls(t["novelty.components"], t["novelty.center"], t["novelty.bank"], t["novelty.calibration"],
                   t.get("novelty.margin_calibration"), t.get("novelty.joint_calibration"), k=k, metric=metric,
                   tail=tail, prototype_calibration=t.get("novelty.prototype_calibration"),
                   clarity_coef=t.get("novelty.clarity_coef"), clarity_intercept=t.get("novelty.clarity_intercept"),
                   clarity_calibration=t.get("novelty.clarity_calibration"))


# the share of the calibration's most extreme values an exponential tail is fitted to (at least this
# many of them), for values beyond the most extreme one, and how far below the conformal floor the
# tail reaches (a factor: one decade); see _p_above
TAIL = 0.1
TAIL_MIN_POINTS = 5
TAIL_REACH = 0.1


def _p_above(calibration: np.ndarray, values: np.ndarray, tail: float = 0.0) -> np.ndarray:
    """Conformal p-values of ``values`` against the sorted ``calibration``: larger is less typical.

    A conformal p-value cannot fall below ``1 / (n + 1)``: every value beyond the largest of the
    ``n`` calibration values gets that floor, however far beyond it lies.  With few calibration
    cells (a reference of a few hundred cells) the floor is close to ``novelty_alpha``, so a cell
    far outside the reference in one view counted no more than one at its edge, and tied with
    them.  With ``tail > 0`` the p-value goes on falling beyond the largest value as the upper
    ``tail`` share of the calibration values falls: exponentially, its scale their mean excess
    over the value below them (a peaks-over-threshold fit with an exponential tail), down to
    ``TAIL_REACH`` times the floor: an extrapolation beyond the calibration is bounded, so that one
    view a shifted query leaves far behind weighs less alone.  Measured on pbmc68k_reduced's
    simulated technology shift with references of two or three types (89-153 cells, one type left
    out, 12 runs): 14.8% of left-out and 0.6% of known-type cells ``Unassigned`` at the floor,
    37.9% and 3.8% with the bounded tail, 43.2% and 5.8% unbounded (one run: 20% of known-type
    cells); on the benchmark's tasks the bound changes nothing at the default ``novelty_alpha``.
    Values up to the largest calibration value keep their conformal p-values exactly.
    """
    n = len(calibration)
    n_ge = n - np.searchsorted(calibration, values, side="left")
    p = (1.0 + n_ge) / (1.0 + n)
    m = min(n - 1, max(TAIL_MIN_POINTS, int(np.ceil(tail * n))))
    if not tail or m < 1:
        return p
    scale = float(np.mean(np.asarray(calibration[-m:], dtype=np.float64) - float(calibration[-m - 1])))
    beyond = (n_ge == 0) & (np.asarray(values) > calibration[-1])  # NaN (never expected) keeps the floor
    if scale > 0 and beyond.any():
        excess = (np.asarray(values, dtype=np.float64)[beyond] - float(calibration[-1])) / scale
        p[beyond] = np.maximum(np.exp(-excess), TAIL_REACH) / (1.0 + n)
    return p


def _p_below(calibration: np.ndarray, values: np.ndarray, tail: float = 0.0) -> np.ndarray:
    """Conformal p-values of ``values`` against the sorted ``calibration``: smaller is less typical;
    with ``tail``, :func:`_p_above`'s tail below the smallest calibration value."""
    if tail:
        return _p_above(-np.asarray(calibration)[::-1], -np.asarray(values), tail)
    return (1.0 + np.searchsorted(calibration, values, side="right")) / (1.0 + len(calibration))


def fisher(p_expr: np.ndarray, p_margin: np.ndarray) -> np.ndarray:
    """Fisher's statistic of the two views' p-values: larger is less typical."""
    return -np.log(p_expr) - np.log(p_margin)


def joint_calibration(distances: np.ndarray, margin_values: np.ndarray) -> np.ndarray:
    """Sorted Fisher statistics of the calibration cells, each cell's two p-values taken against the
    other calibration cells (``distances[i]`` and ``margin_values[i]`` belong to one cell): what a
    query cell's statistic is ranked among."""
    n = len(distances)
    d_sorted, m_sorted = np.sort(distances), np.sort(margin_values)
    # a query's p-values (_p_above, _p_below) taken against the other n - 1 cells: the searchsorted
    # counts include the cell itself, which stands for the 1 in (1 + count) / (1 + n - 1)
    p_expr = (n - np.searchsorted(d_sorted, distances, side="left")) / n
    p_margin = np.searchsorted(m_sorted, margin_values, side="right") / n
    return np.sort(fisher(p_expr, p_margin)).astype(np.float32)


def margins(logits: np.ndarray, anchors: np.ndarray, codes: np.ndarray | None = None) -> np.ndarray:
    """Mean agreement of pre-tanh outputs with their nearest anchor (by Hamming distance of the
    outputs' signs, ties to the lower index).  ``codes``: the outputs already packed, if at hand;
    the search runs over their distinct values."""
    codes = _hamming.pack(logits) if codes is None else codes
    best = _hamming.nearest_anchor(codes, _hamming.pack(anchors))[0]
    return (logits * anchors[best]).mean(1)


def fit_novelty(X, y: np.ndarray, train_idx: np.ndarray, *, seed: int, calibration_rows, network,
                anchors: np.ndarray, margin_rows=None, batches: np.ndarray | None = None, n_comps: int = 30,
                bank_size: int = 1000, k: int = 10, n_calibration: int = 20000) -> NoveltyScorer:
    """Fit the PCA on (a sample of) the training cells, build the bank and calibrate.

    With the reference's ``batches`` (one per cell of ``y``) the PCA is fitted on the cells with
    each type's cells of each batch moved to that type's mean over all batches
    (:func:`batch_adjusted`), so that its axes follow how cells and types differ rather than how
    the reference's own batches (technologies) do; the bank, the calibration and every query are
    projected as they are.

    ``calibration_rows(idx)`` returns the reference rows ``idx`` as they are calibrated on
    (augmented when the network was trained with augmentation), ``network(rows)`` the network's
    pre-tanh outputs and each row's cosine with its nearest type prototype (None without
    prototypes), of ``margin_rows(idx)`` where the network's input is scaled otherwise
    (``scale="batch"``).  Everything but the margins and cosines is done before ``network`` is first
    called, so this can run while the network trains.
    """
    rng = np.random.default_rng(seed)
    fit_idx = np.sort(rng.choice(train_idx, min(len(train_idx), 20000), replace=False))
    rows = X.rows(fit_idx)
    if batches is not None:
        rows = batch_adjusted(rows, y[fit_idx], np.asarray(batches)[fit_idx])
    n_comps = int(min(n_comps, rows.shape[1] - 1, rows.shape[0] - 1))
    # two power iterations (scikit-learn's default is 7): the bank, the calibration and every query share
    # this one projection, so a rougher subspace shifts no p-value; on the benchmark's left-out-type tasks
    # AUROC and Unassigned fractions were the same, and the PCA of a 10,000-cell reference ~0.6 s faster
    pca = PCA(n_components=n_comps, svd_solver="randomized", iterated_power=2, random_state=seed).fit(rows)
    bank_idx = _stratified(train_idx, y, bank_size, rng)
    scorer = NoveltyScorer(pca.components_.astype(np.float32), pca.mean_.astype(np.float32),
                           np.zeros((0, n_comps + 1), np.float32), np.zeros(0, np.float32), k=k, tail=TAIL)
    scorer.bank = scorer.project(X.rows(bank_idx))
    classifier = _clarity.fit(scorer._space(scorer.bank), y[bank_idx])
    # every reference cell may calibrate (a bank cell is scored without itself), so small
    # references still give p-values fine enough for a small alpha
    cal_idx = np.sort(rng.choice(len(y), min(len(y), n_calibration), replace=False))
    own = np.full(len(y), -1, dtype=np.int64)
    own[bank_idx] = np.arange(len(bank_idx))
    d, probs, z_parts = [], [], []
    for s in range(0, len(cal_idx), 4096):
        part = cal_idx[s : s + 4096]
        z = calibration_rows(part)
        projected = scorer.project(z)
        d.append(scorer.distances(projected, own=own[part]))
        if classifier is not None:
            probs.append(_clarity.max_probability(scorer._space(projected), *classifier))
        z_parts.append(z if margin_rows is None else part)
    d = np.concatenate(d).astype(np.float32)
    scorer.calibration = np.sort(d)
    if classifier is not None:
        scorer.clarity_coef, scorer.clarity_intercept = classifier
        scorer.clarity_calibration = np.sort(np.concatenate(probs)).astype(np.float32)
    # the network is needed only from here on (``network`` may wait for it: see _train.py); the
    # calibration rows are kept until then, at most n_calibration × genes float32 (160 MB at 2,000)
    outputs = [network(z if margin_rows is None else margin_rows(z)) for z in z_parts]
    m = np.concatenate([margins(logits, anchors) for logits, _ in outputs]).astype(np.float32)
    scorer.margin_calibration = np.sort(m)
    if outputs and all(cos is not None for _, cos in outputs):
        scorer.prototype_calibration = np.sort(np.concatenate([cos for _, cos in outputs])).astype(np.float32)
    scorer.joint_calibration = joint_calibration(d, m)  # cell i's distance and margin: d[i], m[i]
    return scorer


# the confidence keeps a call's code score for cells at least this typical (typicality), this aligned
# with a type prototype (alignment) and this clear in expression (clarity); below, it scales down in proportion
CONFIDENT_TYPICALITY = 0.5
CONFIDENT_ALIGNMENT = 0.1
CONFIDENT_CLARITY = 0.1


def confidence_factor(typicality: np.ndarray, alignment: np.ndarray | None = None,
                      clarity: np.ndarray | None = None) -> np.ndarray:
    """What a call's code score is multiplied by to give its confidence: ``min(1, typicality / 0.5)``
    and, where the model calibrates them, ``min(1, alignment / 0.1)`` and ``min(1, clarity / 0.1)``.

    The typicality factor ranks cells of types the reference lacks lowest. The alignment is how close a
    cell's last hidden layer points to its nearest type prototype, the clarity how clearly its
    expression points to one reference type (:mod:`schash._clarity`), each as a p-value among the
    (augmented) calibration cells: the tenth least aligned or clear of those and any cell below them
    lose confidence in proportion. The network's outputs collapse on the few directions that separate
    the reference's types (one, for two types), where a new type can land deep on a known type's side;
    its hidden layer keeps more, and the expression more still. Measured in ``bench/accuracy.py`` with
    the same models (calls, typicality and ``Unassigned`` unchanged), on the 31 cross-batch
    left-out-type tasks, AUROC of ``1 - confidence`` for the left-out cells (means over seeds 0-4):
    0.873 with the typicality alone, 0.893 with the alignment (CellBench's two-type references 0.90 to
    0.98), 0.900 with the clarity too (CellBench 0.996). Where every type is known the confidence tells
    wrong calls from right ones with AUROC 0.905 (0.900 before the clarity, 0.882 before the alignment).
    On the fine-grained guard (pbmc68k_reduced, close subtypes) the left-out-type AUROC was 0.680, 0.673
    and 0.672 (NK cells 0.655, 0.613 and 0.603). Known-type cells across batches keep a median
    confidence of about 0.67 (0.70 before the clarity, 0.82 with the typicality alone; a harness).
    """
    factor = np.minimum(1.0, typicality / CONFIDENT_TYPICALITY)
    if alignment is not None:
        factor = factor * np.minimum(1.0, alignment / CONFIDENT_ALIGNMENT)
    if clarity is not None:
        factor = factor * np.minimum(1.0, clarity / CONFIDENT_CLARITY)
    return factor


def prototype_cosines(hidden: np.ndarray, sims: np.ndarray) -> np.ndarray:
    """Each cell's cosine with its nearest type prototype, from its last hidden layer and ``sims``,
    the hidden layer's products with the unit prototypes (cells × types)."""
    return (sims.max(1) / np.maximum(np.linalg.norm(hidden, axis=1), 1e-12)).astype(np.float32)


def batch_adjusted(rows: np.ndarray, y: np.ndarray, batches: np.ndarray) -> np.ndarray:
    """A copy of ``rows`` with the cells of each type in each batch moved, together, to the type's mean
    over all batches: the batches' offsets within every type removed, the types' own means and each
    cell's deviation from its group kept (so the overall mean is unchanged).  A type seen in one
    batch only (and so a reference of one batch) is left as it is.

    Fitted on these rows, the expression view ranked left-out types better on the 31 cross-batch
    left-out-type tasks of ``bench/accuracy.py`` (seeds 0-4, the same models: AUROC of the view
    alone 0.802 against 0.795, on panc8sub's five technologies 0.578 against 0.561) and, at the
    default ``novelty_alpha``, left fewer cells of full-reference cross-batch queries
    ``Unassigned`` (4.5% against 5.4%).  Centring each batch as a whole did about as well there (seeds
    0-2) but also removes differences between types wherever the batches hold different types."""
    batch = np.unique(np.asarray(batches).astype(str), return_inverse=True)[1]
    out = np.array(rows, dtype=np.float32)
    for t in np.unique(y):
        of_t = np.flatnonzero(y == t)
        in_batch = batch[of_t]
        if len(np.unique(in_batch)) < 2:
            continue
        type_mean = out[of_t].mean(0, dtype=np.float64)
        for b in np.unique(in_batch):
            group = of_t[in_batch == b]
            out[group] += (type_mean - out[group].mean(0, dtype=np.float64)).astype(np.float32)
    return out


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
