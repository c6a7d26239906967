"""The one result builder: everything an annotation reports, computed from one encoding pass.

:func:`annotation` is used by :func:`schash.annotate` (which only writes the result into an
AnnData), the command line (which writes it to files) and the R bridge (which only converts
types).  Nothing here writes anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from . import _args, _hamming
from ._scores import type_scores
from ._voting import majority_vote, over_cluster

if TYPE_CHECKING:
    from ._encode import Encoded
    from ._model import SchashModel


@dataclass
class Annotation:
    """The calls and what explains them, for one query."""

    table: pd.DataFrame  # per cell: label, pruned_label, distance, delta_next, typicality, confidence
    #                      (and neighbor_batch with neighbours, when the reference has batches;
    #                      majority_label, majority_share and over_clustering with voting)
    codes: np.ndarray  # packed codes, cells × n_bits/8 (uint8)
    scores: pd.DataFrame  # cells × cell types, in [0, 1] (schash._scores)
    encoded: Encoded
    compositions: dict[str, pd.DataFrame] = field(default_factory=dict)  # by reference column, cells × categories
    placed: np.ndarray | None = None  # positions on the model's reference map (cells × 2)
    record: dict = field(default_factory=dict)  # parameters and input facts (uns[key_added])

    def signs(self, n_bits: int) -> np.ndarray:
        """The codes as ±1 float32, cells × n_bits: an embedding (Euclidean distance is monotone in Hamming)."""
        return _hamming.unpack(self.codes, n_bits)


def annotation(model: SchashModel, data, *, genes=None, layer=None, method="auto", k: int = 15,
               batch_key=None, species=None, neighbors: int | None = None, clusters=None, chunk_size: int = 8192,
               progress=None, cells=None, novelty_alpha: float | None = None) -> Annotation:
    """Encode ``data`` once and build every output of an annotation (see :func:`schash.annotate`).

    ``clusters``: one cluster id per cell to vote over (majority voting, :mod:`schash._voting`),
    or ``"codes"`` to over-cluster the cells by their codes first; ``None``: no voting.
    ``cells`` overrides the cell names of the tables (an AnnData's ``obs_names`` as they are).
    """
    _args.call(len(model.ref_labels), method=method, k=k, neighbors=neighbors, chunk_size=chunk_size,
               novelty_alpha=novelty_alpha)
    progress = _args.progress(progress)
    enc = model.encoded(data, genes=genes, layer=layer, batch_key=batch_key, species=species,
                        chunk_size=chunk_size, progress=progress, method=method)
    cells = enc.cells if cells is None else cells
    table = model.call(enc, method=method, k=k, novelty_alpha=novelty_alpha)
    table.index = cells
    result = Annotation(table=table, codes=enc.codes, scores=type_scores(model, enc.codes, cells, enc.empty),
                        encoded=enc)
    if neighbors:
        for by in model.reference_obs().columns:  # ties at the k-th distance share equally
            comp = model.composition_of_codes(enc.codes, by=by, k=neighbors, cells=cells)
            result.compositions[by] = comp
            if by == "batch":
                table["neighbor_batch"] = pd.Categorical(comp.idxmax(axis=1).to_numpy())
    if clusters is not None:
        if isinstance(clusters, str) and clusters == "codes":
            clusters = pd.Categorical(over_cluster(result.signs(model.n_bits)))
            table["over_clustering"] = clusters
        vote = majority_vote(table["pruned_label"].to_numpy(), np.asarray(clusters, dtype=object))
        table["majority_label"] = pd.Categorical(vote["majority_label"].to_numpy(),
                                                 categories=table["label"].cat.categories)
        table["majority_share"] = vote["majority_share"].to_numpy()
    if model.ref_map is not None and enc.projected is not None:
        result.placed = model.ref_map.place(enc.projected)
    result.record = {
        "params": {"method": model.resolve_method(method), "k": k, "neighbors": neighbors, "layer": layer,
                   "batch_key": batch_key, "n_bits": model.n_bits, "threshold": model.threshold,
                   "novelty_alpha": model.alpha_for(novelty_alpha)},
        "n_genes_matched": enc.n_genes_matched,
        "n_genes_model": len(model.pre.genes),
        "input_kind": enc.kind,
        "gene_mapping": _storable(enc.gene_mapping or {}),
    }
    return result


def _storable(report: dict) -> dict:
    """A gene-mapping report as ``uns`` can store it in an ``.h5ad`` (no None values)."""
    out = {}
    for key, value in report.items():
        if isinstance(value, dict):
            out[key] = _storable(value)
        elif value is not None:
            out[key] = value
    return out
