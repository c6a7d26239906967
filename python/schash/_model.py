"""``SchashModel``: the trained network with everything needed to annotate a query.

It owns the preprocessing, the anchors, the pruning threshold, the typicality scorer
and the reference database (packed codes and labels of every reference cell), all set
when it is built (:func:`schash.train` or :meth:`SchashModel.load`).  Every method reads
its data through the one input layer (:class:`schash._data.Source`: arrays, DataFrames,
AnnData in memory or backed, ``.h5ad`` paths) and encodes with the one encoder
(:mod:`schash._encode`); none modifies its input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from . import _args, _docs, _hamming
from ._anchors import min_pairwise_distance
from ._data import UNASSIGNED, Source
from ._encode import Encoded, Encoder
from ._errors import InputError, LabelKeyError, ModelFileError
from ._levels import Hierarchy, read_labels
from ._model_file import NOVELTY_ALPHA, from_state, state
from ._module import HashMLP
from ._novelty import NoveltyScorer, confidence_factor
from ._preprocess import Preprocessor
from ._rare import RareTypes
from ._refmap import ReferenceMap

__all__ = ["SchashModel", "UNASSIGNED", "NOVELTY_ALPHA"]


@dataclass
class SchashModel:
    module: HashMLP
    pre: Preprocessor
    cell_types: list[str]
    anchors: np.ndarray
    threshold: int  # Hamming distance beyond which a call is Unassigned
    novelty: NoveltyScorer
    ref_codes: np.ndarray  # the reference database: packed codes ...
    ref_labels: np.ndarray  # ... and the cell-type index of every reference cell
    novelty_alpha: float = NOVELTY_ALPHA  # typicality below this is Unassigned
    params: dict = field(default_factory=dict)
    history: dict = field(default_factory=dict)
    ref_batches: np.ndarray | None = None
    batch_categories: list[str] | None = None
    ref_meta: dict = field(default_factory=dict)  # more obs columns of the reference: name -> Categorical
    ref_map: ReferenceMap | None = None  # the reference's 2-D embedding, see set_reference_map()
    levels: Hierarchy | None = None  # label levels, coarsest first (schash._levels); None: one level
    prototypes: np.ndarray | None = None  # types × last hidden layer: each type's unit mean (method="prototype")
    rare: RareTypes | None = None  # types with few reference cells: their contest (schash._rare)

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

    @property
    def encoder(self) -> Encoder:
        """The model's one encoder (:mod:`schash._encode`): codes, typicality and prototype calls."""
        return Encoder(self.pre, self.module, self.anchors, self.novelty, self.prototypes)

    def encoder_for(self, method: str | None) -> Encoder:
        """The encoder for calls by ``method`` (``None``: no call, codes only): with the rare types'
        contest where the call is by prototype, the one call it refines; without, where nothing
        would read it (codes, anchors, votes), since it is the encoding's costliest step."""
        if method is None or self.rare is None or self.resolve_method(method) != "prototype":
            return self.encoder
        return Encoder(self.pre, self.module, self.anchors, self.novelty, self.prototypes, self.rare)

    def __repr__(self) -> str:
        return (
            f"SchashModel: {len(self.cell_types)} cell types, {len(self.pre.genes)} genes, {self.n_bits} bits, "
            f"{self.ref_codes.shape[0]} reference cells\n"
            f"    cell types: {', '.join(self.cell_types[:8])}{', …' if len(self.cell_types) > 8 else ''}\n"
            f"    transform={self.pre.transform!r}, scale={self.pre.scale!r}, distance threshold={self.threshold}, "
            f"novelty_alpha={self.novelty_alpha:g}"
            + (f"\n    reference map: {self.map_name()}" if self.ref_map is not None else "")
            + (f"\n    label levels: {' > '.join(self.levels.names)}" if self.levels is not None else "")
            + (f"\n    rare types (also scored by rank correlation): "
               f"{', '.join(self.cell_types[i] for i in self.rare.rare)}" if self.rare is not None else "")
        )

    # -- encoding ----------------------------------------------------------------------------
    @_docs.inputs
    def encoded(self, data, *, genes=None, layer=None, batch_key=None, species: str | None = None,
                chunk_size: int = 8192, min_gene_overlap: float = 0.3, progress: bool | None = None,
                method: Literal["auto", "anchor", "knn", "prototype"] | None = "auto") -> Encoded:
        """One encoding pass over ``data``: codes, typicality, empty cells, genes matched (for :meth:`call`).

        Parameters
        ----------
        {inputs}
        method
            The call the pass is for (:meth:`call`'s ``method``; ``None``: codes only): prototype
            calls get the rare types' contest here, which a later call by prototype needs.
        """
        progress = _args.progress(progress)
        with Source(data, genes, layer) as src:
            return self.encoder_for(method).run(src, batch_key=batch_key, species=species, chunk_size=chunk_size,
                                    min_gene_overlap=min_gene_overlap, progress=progress,
                                    keep_projected=self.ref_map is not None)

    @_docs.inputs
    def encode(self, data, *, genes=None, layer=None, batch_key=None, chunk_size: int = 8192,
               progress: bool | None = None) -> np.ndarray:
        """Packed hash codes of the cells in ``data``: uint8, ``n_cells × n_bits/8``.

        Parameters
        ----------
        {inputs}
        """
        return self.encoded(data, genes=genes, layer=layer, batch_key=batch_key, chunk_size=chunk_size,
                            progress=progress, method=None).codes

    # -- annotation --------------------------------------------------------------------------
    @_docs.inputs
    def predict(self, data, *, genes=None, layer=None, method: Literal["auto", "anchor", "knn", "prototype"] = "auto",
                k: int = 15,
                batch_key: str | None = None, species: Literal["human", "mouse"] | None = None,
                novelty_alpha: float | None = None, chunk_size: int = 8192,
                progress: bool | None = None) -> pd.DataFrame:
        """Annotate the cells of ``data``; returns a DataFrame indexed by cell.

        Columns: ``label`` (nearest type), ``pruned_label`` (``"Unassigned"`` where the
        call is not trusted: the code farther than the calibrated threshold from every anchor,
        typicality below ``novelty_alpha``, or no expression), ``distance`` (Hamming distance to
        the called type's anchor), ``delta_next`` (gap to the second-nearest anchor), ``typicality`` (how typical the
        cell is of the reference, a p-value in (0, 1]) and ``confidence`` in [0, 1]: the
        code's closeness to its anchor (``"prototype"``, ``"anchor"``) or the winning vote fraction
        among the ``k`` nearest reference cells (``method="knn"``), times ``min(1, typicality / 0.5)`` and
        ``min(1, p / 0.1)`` for two more p-values: how close the cell's last hidden layer points to a type
        prototype, and how clearly its expression points to one type (:func:`schash._novelty.confidence_factor`).
        A model trained on label levels adds ``label_<level>``, ``pruned_label_<level>`` and
        ``confidence_<level>`` for each level, ``resolved_label`` and ``resolved_level`` (:mod:`schash._levels`).

        Parameters
        ----------
        {inputs}
        method, k
            The type whose *prototype* — the mean of the network's last hidden layer over its
            reference cells — is nearest (cosine) to the cell's own (``"prototype"``; then
            ``distance`` is to the called type's anchor and ``delta_next`` the nearest other
            anchor's distance minus it, negative where that one is nearer), the nearest anchor
            (``"anchor"``), or a vote among the ``k`` nearest reference cells (``"knn"``).
            ``"auto"`` (the default) is ``"prototype"`` where the model keeps prototypes (models
            trained since they were added) and ``"anchor"`` otherwise.  Measured in
            ``bench/accuracy.py`` (``schash-anchor``, ``schash-knn``).
        novelty_alpha
            Calls whose ``typicality`` is below this are ``Unassigned``; ``None`` (the default): the
            model's own (``model.novelty_alpha``, set by :func:`schash.train`, 0.018).  Only
            ``pruned_label`` depends on it.  Raise it to catch more cells of types the reference
            lacks at the cost of more known-type cells: measured in ``bench/accuracy.py``
            (section 4 of its report, "Unassigned by ``novelty_alpha``").
        """
        _args.call(len(self.ref_labels), method=method, k=k, chunk_size=chunk_size,  # before the work
                   novelty_alpha=novelty_alpha)
        enc = self.encoded(data, genes=genes, layer=layer, batch_key=batch_key, species=species,
                           chunk_size=chunk_size, progress=progress, method=method)
        return self.call(enc, method=method, k=k, novelty_alpha=novelty_alpha)

    def alpha_for(self, novelty_alpha: float | None) -> float:
        """The ``novelty_alpha`` an annotation uses: the one given, or the model's own (``None``)."""
        return self.novelty_alpha if novelty_alpha is None else float(novelty_alpha)

    def call(self, enc: Encoded, *, method: Literal["auto", "anchor", "knn", "prototype"] = "auto",
             k: int = 15, novelty_alpha: float | None = None) -> pd.DataFrame:
        """Turn an :class:`~schash._encode.Encoded` pass into labels (see :meth:`predict`)."""
        _args.call(len(self.ref_labels), method=method, k=k, novelty_alpha=novelty_alpha)
        alpha = self.alpha_for(novelty_alpha)
        method = self.resolve_method("anchor" if method == "auto" and enc.prototype is None else method)
        if method == "prototype" and enc.prototype is None:
            raise InputError("method='prototype' needs each type's prototype, which this model lacks (saved before "
                             "prototypes were kept, or trained without hidden layers): retrain it, or use "
                             "method='anchor'")
        if method == "prototype" and self.rare is not None and not enc.contested:
            raise InputError("this encoding skipped the rare types' contest that a call by prototype needs: "
                             "make it with model.encoded(..., method='prototype') (or 'auto'), or call with "
                             "the method it was made for")
        if method == "prototype":  # the call's anchor distance, and how much nearer the nearest other is
            best, dist, gap = _hamming.to_anchor(enc.codes, self.packed_anchors, enc.prototype)
            nearest = dist + np.minimum(gap, 0)
        else:
            best, dist, gap = _hamming.nearest_anchor(enc.codes, self.packed_anchors)
            nearest = dist
        # a code farther than the threshold from every anchor is Unassigned, whatever the call (the
        # threshold is calibrated on validation cells' nearest-anchor distances)
        far = nearest > self.threshold
        half = max(min_pairwise_distance(self.anchors) / 2.0, 1.0)
        code_score = np.clip(1.0 - dist / half, 0.0, 1.0)
        frac = None
        if method == "knn":
            frac, _ = _hamming.knn_vote(enc.codes, self.ref_codes, self.ref_labels,
                                        len(self.cell_types), k, self.n_bits)
            best = frac.argmax(1)
            code_score = frac.max(1)
        labels = np.asarray(self.cell_types, dtype=object)[best]
        # cells typical of the reference, aligned with a type prototype and clear in expression keep their
        # code score, the others are scaled down in proportion (_novelty.confidence_factor)
        factor = confidence_factor(enc.typicality, enc.alignment, enc.clarity)
        confidence = code_score * factor
        trusted = (enc.typicality >= alpha) & ~enc.empty
        keep = ~far & trusted
        labels = np.where(enc.empty, UNASSIGNED, labels)
        confidence = np.where(enc.empty, 0.0, confidence)
        cats = list(self.cell_types) + [UNASSIGNED]
        table = pd.DataFrame(
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
        return table if self.levels is None else self.levels.extend(
            table, enc.codes, self.packed_anchors, half=half, trusted=trusted, factor=factor, votes=frac)

    def resolve_method(self, method: str) -> str:
        """The call ``method`` stands for: ``"auto"`` is ``"prototype"`` where the model keeps type
        prototypes, else ``"anchor"``."""
        if method != "auto":
            return method
        return "prototype" if self.prototypes is not None else "anchor"

    # -- reference database ------------------------------------------------------------------
    @_docs.inputs
    def neighbors(self, data, *, k: int = 15, genes=None, layer=None, batch_key=None,
                  progress: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest reference cells of each query cell by Hamming distance.

        Returns ``(indices, distances)``, each cells × k, ordered by distance.  Trained codes
        collapse onto few distinct values, so many reference cells often tie at the k-th
        distance; which of them are listed then follows the reference order.  Summaries
        that must not depend on that order, such as :meth:`composition`, weigh every tied
        cell equally instead.  Indices point into the reference database, whose labels and
        batches are ``model.reference_obs()``.

        Parameters
        ----------
        {inputs}
        """
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

    @_docs.inputs
    def composition(self, data, *, by: str = "batch", k: int = 15, genes=None, layer=None, batch_key=None,
                    progress: bool | None = None) -> pd.DataFrame:
        """Fraction of each category of reference metadata ``by`` among each cell's ``k`` neighbours.

        A cells × categories DataFrame whose rows sum to 1 (``by`` is ``"cell_type"``, ``"batch"``
        or a ``reference_keys`` column).  Reference cells closer than the k-th distance count
        fully; those tied at the k-th distance share the remaining weight equally, so the
        answer does not depend on the order of the reference cells (bench/neighbor_ties.py:
        as accurate as breaking ties at random, without the randomness).

        Parameters
        ----------
        {inputs}
        """
        self._reference_column(by)
        _args.neighbours("k", k, len(self.ref_labels))
        enc = self.encoded(data, genes=genes, layer=layer, batch_key=batch_key, progress=progress, method=None)
        return self.composition_of_codes(enc.codes, by=by, k=k, cells=enc.cells)

    def composition_of_codes(self, codes: np.ndarray, *, by: str = "batch", k: int = 15, cells=None) -> pd.DataFrame:
        """:meth:`composition` for packed codes already computed (e.g. ``Encoded.codes``)."""
        obs = self._reference_column(by)
        cats = list(obs[by].cat.categories)
        frac, _ = _hamming.knn_vote(codes, self.ref_codes, obs[by].cat.codes.to_numpy(), len(cats), k, self.n_bits)
        return pd.DataFrame(frac, index=cells, columns=cats)

    def _reference_column(self, by: str) -> pd.DataFrame:
        obs = self.reference_obs()
        if by not in obs:
            raise LabelKeyError(f"the reference database has no {by!r} column; it has {list(obs.columns)}")
        return obs

    def add_reference(self, data, labels=None, *, cell_type_key=None, batches=None, batch_key=None,
                      genes=None, layer=None) -> None:
        """Append newly labelled cells to the reference database, encoded with the trained network.

        No retraining: the new cells become neighbours for ``method="knn"``, ``neighbors``
        and ``composition``.  Their cell types must be types the model knows.  ``data`` is
        anything :meth:`predict` accepts; labels and batches are vectors or ``obs`` columns.
        """
        with Source(data, genes, layer) as src:
            y = read_labels(src, cell_type_key, labels)[0]  # label levels: the finest
            if y is None:
                raise InputError("add_reference needs labels= or cell_type_key=")
            unknown = sorted(set(y) - set(self.cell_types))
            if unknown:
                raise InputError(f"cell types unknown to this model: {unknown[:5]}; it knows {self.cell_types}")
            b = src.column(batch_key, batches, "batch")
            extra = {key: (src.obs[key].astype(str).to_numpy() if src.obs is not None and key in src.obs
                           else np.full(len(y), "unknown", dtype=object)) for key in self.ref_meta}
            codes = self.encoder.run(src).codes
        new_labels = pd.Categorical(y, categories=self.cell_types).codes.astype(np.int64)
        # everything computed: now extend the database
        if self.ref_batches is not None or b is not None:
            old = (pd.Categorical.from_codes(self.ref_batches, self.batch_categories).astype(str)
                   if self.ref_batches is not None else np.full(len(self.ref_labels), "reference"))
            allb = pd.Categorical(np.concatenate([np.asarray(old, dtype=object),
                                                  b if b is not None else np.full(len(y), "added")]))
            self.ref_batches, self.batch_categories = allb.codes.astype(np.int64), [str(c) for c in allb.categories]
        for key, new in extra.items():  # more reference columns: from the new cells' obs where present
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

        coords = _refmap.check_coords(_refmap.coords_of(data, basis) if coords is None else coords)
        with Source(data, genes, layer) as src:
            enc = self.encoder.run(src, batch_key=batch_key, keep_projected=True)
        self.ref_map = _refmap.build(enc, np.asarray(coords), basis=basis, max_cells=max_cells, k=k, seed=seed)

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
        return self.ref_map.place(self.encoded(data, genes=genes, layer=layer, batch_key=batch_key,
                                               method=None).projected)

    # -- explanation -------------------------------------------------------------------------
    @_docs.inputs
    def saliency(self, data, *, genes=None, layer=None, by="label",
                 method: Literal["gradient_x_input", "gradient", "integrated_gradients"] = "gradient_x_input",
                 batch_key: str | None = None, chunk_size: int = 2048) -> pd.DataFrame:
        """Gene saliency aggregated per group: a genes × groups DataFrame (mean over cells).

        For each cell, the attribution of the agreement between the network's output and
        the anchor of its assigned type to the (scaled) input genes: gradient × input
        (default), the plain ``"gradient"``, or ``"integrated_gradients"`` from the
        average cell (see :mod:`schash._saliency`).  ``by="label"`` groups cells by their
        predicted type; pass an ``obs`` column name or a vector to group by known labels or
        clusters instead.  Computed a chunk at a time: memory is bounded by ``chunk_size``.

        Parameters
        ----------
        {inputs}
        """
        from ._saliency import compute_saliency

        return compute_saliency(self, data, genes=genes, layer=layer, by=by, method=method,
                                batch_key=batch_key, chunk_size=chunk_size).by_group

    # -- persistence -------------------------------------------------------------------------
    def save(self, path, *, overwrite: bool = False) -> None:
        """Write the model to one safetensors file (weights, tensors and JSON metadata; no pickle)."""
        from . import _io

        _io.check_writable(path, overwrite=overwrite)  # before the work of serialising
        tensors, meta = self._state()
        _io.write(path, tensors, meta, overwrite=overwrite)

    @classmethod
    def load(cls, path) -> SchashModel:
        """Load a model saved by :meth:`save` (either language).

        The file is read once; a file that is not a consistent schash model raises
        :class:`~schash.ModelFileError` naming the problem.
        """
        from . import _io

        meta, tensors = _io.read(path)
        try:
            return cls._from_state(tensors, meta)
        except Exception as err:  # noqa: BLE001 - every check passed; still never let a bad file crash otherwise
            raise ModelFileError(f"{path} could not be loaded ({type(err).__name__}: {err})") from None

    def _state(self) -> tuple[dict, dict]:
        """The model as the file holds it: tensors (name -> array) and JSON metadata (:mod:`schash._model_file`)."""
        return state(self)

    @classmethod
    def _from_state(cls, t: dict, meta: dict) -> SchashModel:
        return from_state(cls, t, meta)
