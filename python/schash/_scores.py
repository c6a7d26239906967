"""Per-type scores: how close each cell's code is to every cell type's anchor.

``score = 1 - d / n_bits`` with ``d`` the Hamming distance between the cell's code and the
anchor of the type: 1 on the anchor, about 0.5 for an unrelated code (anchors of different
types are about ``n_bits / 2`` apart).  The nearest-anchor call (``method="anchor"``) has the
highest score; the default call by type prototype may be another type (its ``distance`` is to its
own type's anchor).  Cells without expression get NaN.  Like SingleR's score matrix, for heatmaps
(``schash.pl.scores``, R's ``schash_plot_scores()``) and per-type thresholds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import _hamming


def type_scores(model, codes: np.ndarray, cells=None, empty: np.ndarray | None = None) -> pd.DataFrame:
    """Cells × cell types scores in [0, 1] for packed ``codes`` (see the module docstring)."""
    d = _hamming.distances(codes, model.packed_anchors).astype(np.float64)
    scores = 1.0 - d / model.n_bits
    if empty is not None:
        scores[np.asarray(empty, dtype=bool)] = np.nan
    if cells is None or isinstance(cells, pd.Index):
        index = cells  # an AnnData's obs_names as they are (obsm checks the index, dtype included)
    else:
        index = pd.Index([str(c) for c in cells])
    return pd.DataFrame(scores, index=index, columns=list(model.cell_types))
