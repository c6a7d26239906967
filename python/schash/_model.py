"""``SchashModel``: the trained network with everything needed to annotate a query.

It owns the preprocessing, the anchors, the pruning threshold, the typicality
scorer and the reference database (packed codes and labels of every reference
cell).  ``encode`` and ``predict`` never modify their input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import sparse

from . import _hamming
from ._anchors import min_pairwise_distance
from ._data import extract
from ._errors import InputError, LabelKeyError
from ._module import HashMLP
from ._novelty import NoveltyScorer
from ._preprocess import Preprocessor, ScaledMatrix
from ._refmap import ReferenceMap
from ._stream import Encoded

UNASSIGNED = "Unassigned"
METHODS = ("anchor", "knn")


@dataclass
class SchashModel:
    module: HashMLP
    pre: Preprocessor
    cell_types: list[str]
    anchors: np.ndarray
    threshold: int
    novelty: NoveltyScorer
    ref_codes: np.ndarray
    ref_labels: np.ndarray
    params: dict = field(default_factory=dict)
    history: dict = field(default_factory=dict)
    ref_batches: np.ndarray | None = None
    batch_categories: list[str] | None = None
    ref_meta: dict = field(default_factory=dict)  # more obs columns of the reference: name -> Categorical
    ref_map: ReferenceMap | None = None  # the reference's 2-D embedding, see set_reference_map()

    # -- properties -----------------------------------------------------------------------
    @property
    def n_bits(self) -> int:
        return int(self.anchors.shape[1])

    @property
    def genes(self) -> list[str]:
        return list(self.pre.genes)

    @property
    def packed_anchors(self) -> np.ndarray:
        return _hamming.pack(self.anchors)

    def __repr__(self) -> str:
        return (
            f"SchashModel: {len(self.cell_types)} cell types, {len(self.pre.genes)} genes, {self.n_bits} bits, "
            f"{self.ref_codes.shape[0]} reference cells\n"
            f"    cell types: {', '.join(self.cell_types[:8])}{', …' if len(self.cell_types) > 8 else ''}\n"
            f"    transform={self.pre.transform!r}, scale={self.pre.scale!r}, distance threshold={self.threshold}"
        )

    # -- encoding ----------------------------------------------------------------------------
    def _prepare(self, data, *, genes=None, layer=None, batch_key=None, min_gene_overlap=0.3):
        """The whole query at once as dense-able scaled rows (for saliency, which needs gradients).

        Returns (expr, ScaledMatrix, n genes matched, empty-cell mask); encoding uses the chunked
        path in :mod:`schash._stream` instead.
        """
        from ._stream import Source

        src = Source(data, genes, layer)
        expr = src.chunk(0, src.n)
        expr.obs = src.obs
        F, present, _ = self.pre.features(expr, min_overlap=min_gene_overlap)
        groups, mean, std = self.pre.query_stats(F, src.groups(batch_key)[0])
        X = ScaledMatrix(F, groups, mean, std, present, self.pre.clip)
        nnz = np.diff(F.indptr) if sparse.issparse(F) else (F != 0).sum(1)
        return expr, X, int(present.sum()), np.asarray(nnz).reshape(-1) == 0

    def _pass(self, data, *, genes=None, layer=None, batch_key=None, chunk_size=8192,
              min_gene_overlap=0.3, progress=None) -> Encoded:
        from ._stream import encode_pass

        return encode_pass(self, data, genes=genes, layer=layer, batch_key=batch_key, chunk_size=chunk_size,
                           min_gene_overlap=min_gene_overlap, progress=progress)

    def encode(self, data, *, genes=None, layer=None, batch_key=None, chunk_size: int = 8192,
               progress: bool | None = None) -> np.ndarray:
        """Packed hash codes of the cells in ``data``: uint8, ``n_cells × n_bits/8``."""
        return self._pass(data, genes=genes, layer=layer, batch_key=batch_key, chunk_size=chunk_size,
                          progress=progress).codes

    # -- annotation --------------------------------------------------------------------------
    def predict(self, data, *, genes=None, layer=None, method: str = "anchor", k: int = 15,
                batch_key: str | None = None, chunk_size: int = 8192, progress: bool | None = None) -> pd.DataFrame:
        """Annotate the cells of ``data``; returns a DataFrame indexed by cell.

        Columns: ``label`` (nearest type), ``pruned_label`` (``"Unassigned"`` where the
        call is not trusted: anchor distance above the calibrated threshold, typicality
        below ``novelty_alpha``, or no expression), ``distance`` (Hamming distance to the
        nearest anchor), ``delta_next`` (gap to the second-nearest anchor), ``typicality`` (how typical the
        cell is of the reference, a p-value in (0, 1]) and ``confidence`` in [0, 1]: the
        code's closeness to its anchor (``method="anchor"``) or the winning vote fraction
        among the ``k`` nearest reference cells (``method="knn"``), times ``min(1, typicality / 0.5)``.
        ``progress=None`` shows bars only when stderr is an interactive terminal.
        """
        from ._annotate import _check_call_args

        _check_call_args(self, method=method, k=k, chunk_size=chunk_size)  # before the work
        enc = self._pass(data, genes=genes, layer=layer, batch_key=batch_key, chunk_size=chunk_size, progress=progress)
        return self.call(enc, method=method, k=k)

    def call(self, enc: Encoded, *, method: str = "anchor", k: int = 15) -> pd.DataFrame:
        """Turn an :class:`Encoded` pass into labels (see :meth:`predict`)."""
        from ._annotate import _check_call_args

        _check_call_args(self, method=method, k=k)
        best, dist, gap = _hamming.nearest_anchor(enc.codes, self.packed_anchors)
        half = max(min_pairwise_distance(self.anchors) / 2.0, 1.0)
        code_score = np.clip(1.0 - dist / half, 0.0, 1.0)
        if method == "knn":
            frac, _ = _hamming.knn_vote(enc.codes, self.ref_codes, self.ref_labels,
                                             len(self.cell_types), k, self.n_bits)
            best = frac.argmax(1)
            code_score = frac.max(1)
        labels = np.asarray(self.cell_types, dtype=object)[best]
        # cells more typical than half of the held-out reference cells keep their code score;
        # less typical ones are scaled down in proportion (this ranks left-out types lowest
        # on the benchmark's held-out-type tasks; see bench/accuracy.py)
        confidence = code_score * np.minimum(1.0, enc.typicality / 0.5)
        alpha = self.params.get("novelty_alpha", 0.02)
        keep = (dist <= self.threshold) & (enc.typicality >= alpha) & ~enc.empty
        labels = np.where(enc.empty, UNASSIGNED, labels)
        confidence = np.where(enc.empty, 0.0, confidence)
        cats = list(self.cell_types) + [UNASSIGNED]
        return pd.DataFrame(
            {
                "label": pd.Categorical(labels, categories=cats),
                "pruned_label": pd.Categorical(np.where(keep, labels, UNASSIGNED), categories=cats),
                "distance": dist.astype(np.float64),
                "delta_next": gap.astype(np.int64),
                "typicality": enc.typicality.astype(np.float64),
                "confidence": confidence.astype(np.float64),
            },
            index=enc.cells,
        )

    # -- reference database ------------------------------------------------------------------
    def neighbors(self, data, *, k: int = 15, genes=None, layer=None, batch_key=None,
                  progress: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest reference cells of each query cell by Hamming distance.

        Returns ``(indices, distances)``, each cells × k, ordered by distance.  Trained codes
        collapse onto few distinct values, so many reference cells often tie at the k-th
        distance; which of them are listed then follows the reference order.  Summaries
        that must not depend on that order, such as :meth:`composition`, weigh every tied
        cell equally instead.  Indices point into the reference database, whose labels and
        batches are ``model.reference_obs()``.
        """
        from . import _args

        _args.neighbours("k", k, len(self.ref_labels))
        progress = _args.progress(progress)
        codes = self.encode(data, genes=genes, layer=layer, batch_key=batch_key, progress=progress)
        return _hamming.knn_indices(codes, self.ref_codes, k, progress=progress)

    def reference_obs(self) -> pd.DataFrame:
        """The metadata of the reference database: one row per reference cell."""
        obs = pd.DataFrame({"cell_type": pd.Categorical.from_codes(self.ref_labels, self.cell_types)})
        if self.ref_batches is not None:
            obs["batch"] = pd.Categorical.from_codes(self.ref_batches, self.batch_categories)
        for key, values in self.ref_meta.items():
            obs[key] = values
        return obs

    def composition(self, data, *, by: str = "batch", k: int = 15, genes=None, layer=None, batch_key=None,
                    _neighbors=None, _codes=None) -> pd.DataFrame:
        """Fraction of each category of reference metadata ``by`` among each cell's ``k`` neighbours.

        A cells × categories DataFrame whose rows sum to 1 (``by`` is ``"cell_type"``, ``"batch"``
        or a ``reference_keys`` column).  Reference cells closer than the k-th distance count
        fully; those tied at the k-th distance share the remaining weight equally, so the
        answer does not depend on the order of the reference cells (bench/neighbor_ties.py:
        as accurate as breaking ties at random, without the randomness).
        ``_codes=(cells, packed codes)`` reuses an encoding pass; ``_neighbors=(cells, indices)``
        counts given neighbour lists as they are.
        """
        obs = self.reference_obs()
        if by not in obs:
            raise LabelKeyError(f"the reference database has no {by!r} column; it has {list(obs.columns)}")
        cats = list(obs[by].cat.categories)
        cat_codes = obs[by].cat.codes.to_numpy()
        if _neighbors is not None:
            expr_cells, idx = _neighbors
            cat = cat_codes[idx]  # cells × k
            counts = np.zeros((idx.shape[0], len(cats)))
            np.add.at(counts, (np.repeat(np.arange(idx.shape[0]), idx.shape[1]), cat.ravel()), 1.0)
            return pd.DataFrame(counts / idx.shape[1], index=expr_cells, columns=cats)
        if _codes is not None:
            expr_cells, codes = _codes
        else:
            expr_cells = extract(data, genes, layer=layer, check_values=False).cells
            codes = self.encode(data, genes=genes, layer=layer, batch_key=batch_key)
        frac, _ = _hamming.knn_vote(codes, self.ref_codes, cat_codes, len(cats), k, self.n_bits)
        return pd.DataFrame(frac, index=expr_cells, columns=cats)

    def add_reference(self, data, labels=None, *, cell_type_key=None, batches=None, batch_key=None,
                      genes=None, layer=None) -> None:
        """Append newly labelled cells to the reference database, encoded with the trained network.

        No retraining: the new cells become neighbours for ``method="knn"``, ``neighbors``
        and ``composition``.  Their cell types must be types the model knows.
        """
        from ._api import _column

        expr = extract(data, genes, layer=layer)
        y = _column(expr, labels, cell_type_key, "cell type")
        if y is None:
            raise InputError("add_reference needs labels= or cell_type_key=")
        unknown = sorted(set(y) - set(self.cell_types))
        if unknown:
            raise InputError(f"cell types unknown to this model: {unknown[:5]}; it knows {self.cell_types}")
        codes = self.encode(data, genes=genes, layer=layer)
        new_labels = pd.Categorical(y, categories=self.cell_types).codes.astype(np.int64)
        b = _column(expr, batches, batch_key, "batch")
        if self.ref_batches is not None or b is not None:
            old = (pd.Categorical.from_codes(self.ref_batches, self.batch_categories).astype(str)
                   if self.ref_batches is not None else np.full(len(self.ref_labels), "reference"))
            allb = pd.Categorical(np.concatenate([np.asarray(old, dtype=object),
                                                  b if b is not None else np.full(len(y), "added")]))
            self.ref_batches, self.batch_categories = allb.codes.astype(np.int64), [str(c) for c in allb.categories]
        for key in list(self.ref_meta):  # more reference columns: from the new cells' obs where present
            new = (expr.obs[key].astype(str).to_numpy() if expr.obs is not None and key in expr.obs
                   else np.full(len(y), "unknown", dtype=object))
            self.ref_meta[key] = pd.Categorical(np.concatenate([np.asarray(self.ref_meta[key], dtype=object), new]))
        self.ref_codes = np.concatenate([self.ref_codes, codes])
        self.ref_labels = np.concatenate([self.ref_labels, new_labels])

    # -- reference map -----------------------------------------------------------------------
    def set_reference_map(self, data, basis: str = "X_umap", *, coords=None, genes=None, layer=None,
                          batch_key=None, max_cells: int = 20000, k: int = 10, seed: int = 0) -> None:
        """Keep the reference's 2-D embedding (``data.obsm[basis]``, or ``coords``: cells × 2) in the model.

        Query cells are then placed on it like scanpy's ``ingest`` does: at the mean position
        of their ``k`` nearest reference cells in the PCA space of the typicality scorer (see
        :mod:`schash._refmap`); :func:`schash.annotate` writes ``obsm["X_schash_<name>"]`` and
        R's ``schash_annotate()`` a DimReduc / reducedDim ``"ref.<name>"``.  The map is saved
        with the model.  ``data`` is the reference (or any cells with known positions).
        """
        from . import _refmap

        if coords is None:
            obsm = getattr(data, "obsm", None)
            if obsm is None or basis not in obsm:
                have = list(obsm.keys()) if obsm is not None else []
                raise InputError(f"no obsm[{basis!r}] in the reference; it has {have}. Pass coords= for a matrix")
            coords = obsm[basis]
        self.ref_map = _refmap.build(self, data, np.asarray(coords), basis=basis, genes=genes, layer=layer,
                                     batch_key=batch_key, max_cells=max_cells, k=k, seed=seed)

    def map_name(self) -> str | None:
        """The reference map's name without a leading ``X_`` (``"umap"``), or ``None``."""
        if self.ref_map is None:
            return None
        b = self.ref_map.basis
        return b[2:] if b.startswith("X_") else b

    def place_on_reference_map(self, data, *, genes=None, layer=None, batch_key=None) -> np.ndarray:
        """Positions (cells × 2) of the cells of ``data`` on the reference map."""
        if self.ref_map is None:
            raise InputError("this model has no reference map; see set_reference_map()")
        enc = self._pass(data, genes=genes, layer=layer, batch_key=batch_key)
        return self.ref_map.place(enc.projected)

    # -- explanation -------------------------------------------------------------------------
    def saliency(self, data, *, genes=None, layer=None, by="label", method: str = "gradient_x_input",
                 batch_key: str | None = None) -> pd.DataFrame:
        """Gene saliency aggregated per group: a genes × groups DataFrame (mean over cells).

        For each cell, the attribution of the agreement between the network's output and
        the anchor of its assigned type to the (scaled) input genes: gradient × input
        (default), the plain ``"gradient"``, or ``"integrated_gradients"`` from the
        average cell (see :mod:`schash._saliency`).  ``by="label"``
        groups cells by their predicted type; pass an ``obs`` column name or a vector
        to group by known labels or clusters instead.
        """
        from ._saliency import compute_saliency

        return compute_saliency(self, data, genes=genes, layer=layer, by=by, method=method,
                                batch_key=batch_key).by_group

    # -- persistence -------------------------------------------------------------------------
    def save(self, path, *, overwrite: bool = False) -> None:
        """Write the model to one safetensors file (weights, tensors and JSON metadata; no pickle)."""
        from ._io import save_model

        save_model(self, path, overwrite=overwrite)
