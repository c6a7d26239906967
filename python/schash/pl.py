"""Plots for explained annotations, scanpy-style: each returns the matplotlib Axes.

``saliency``
    heatmap of the top salient genes of each type;
``composition``
    stacked bars of the cell-type or batch composition of each cell's nearest reference cells,
    averaged per predicted type (or any obs grouping);
``scores``
    heatmap of the per-type scores of every cell, grouped by label (like SingleR's plotScoreHeatmap);
``confusion``
    predicted against known labels, as row fractions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _axes(ax, figsize):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def saliency(saliency: pd.DataFrame, n: int = 5, *, ax=None, cmap: str = "RdBu_r", figsize=None):
    """Heatmap of the ``n`` top genes of each group (columns of a genes × groups saliency table)."""
    from ._saliency import top_genes

    top = top_genes(saliency, n)
    genes = list(dict.fromkeys(top["gene"]))
    mat = saliency.loc[genes].T
    scaled = mat.div(mat.abs().max(axis=1).replace(0, 1), axis=0)  # each type on its own scale
    ax = _axes(ax, figsize or (max(6, 0.28 * len(genes) + 2), 0.4 * len(mat) + 1.5))
    im = ax.imshow(scaled.to_numpy(), aspect="auto", cmap=cmap, vmin=-1, vmax=1)
    ax.set_xticks(range(len(genes)), genes, rotation=90, fontsize=8)
    ax.set_yticks(range(len(mat)), mat.index, fontsize=8)
    ax.set_title(f"schash saliency: top {n} genes per type")
    ax.figure.colorbar(im, ax=ax, label="saliency / type maximum", shrink=0.8)
    ax.figure.tight_layout()
    return ax


def composition(adata, *, by: str = "batch", groupby: str = "schash_label", key_added: str = "schash",
                ax=None, figsize=(7, 4)):
    """Stacked bars: mean neighbour composition (``by``: ``"cell_type"`` or ``"batch"``) per group.

    Needs ``schash.annotate(adata, model, neighbors=k)`` to have run.
    """
    key = f"{key_added}_{by}_composition"
    if key not in adata.obsm:
        raise KeyError(f"obsm[{key!r}] is missing: run schash.annotate(adata, model, neighbors=15) first")
    comp = pd.DataFrame(np.asarray(adata.obsm[key]), index=adata.obs_names,
                        columns=getattr(adata.obsm[key], "columns", None))
    groups = adata.obs[groupby].astype(str)
    mean = comp.groupby(groups.to_numpy()).mean()
    ax = _axes(ax, figsize)
    left = np.zeros(len(mean))
    import matplotlib.pyplot as plt

    colors = plt.get_cmap("tab20").colors
    for i, col in enumerate(mean.columns):
        ax.barh(mean.index, mean[col], left=left, label=str(col), color=colors[i % len(colors)])
        left += mean[col].to_numpy()
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"fraction of nearest reference cells, by {by}")
    ax.set_ylabel(groupby)
    ax.legend(bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=8, frameon=False)
    ax.figure.tight_layout()
    return ax


def confusion(adata, truth: str, *, predicted: str = "schash_label", ax=None, figsize=(6, 5)):
    """Heatmap of known (rows) against predicted (columns) labels, each row as fractions."""
    table = pd.crosstab(adata.obs[truth].astype(str), adata.obs[predicted].astype(str), normalize="index")
    ax = _axes(ax, figsize)
    im = ax.imshow(table.to_numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(table.shape[1]), table.columns, rotation=90, fontsize=8)
    ax.set_yticks(range(table.shape[0]), table.index, fontsize=8)
    ax.set_xlabel(predicted)
    ax.set_ylabel(truth)
    ax.figure.colorbar(im, ax=ax, label="fraction of row", shrink=0.8)
    ax.figure.tight_layout()
    return ax


def scores(adata, *, groupby: str = "schash_label", key_added: str = "schash", normalize: bool = True,
           ax=None, figsize=None, cmap: str = "viridis"):
    """Heatmap of the per-type scores (types × cells, cells grouped by ``groupby``), like SingleR's
    ``plotScoreHeatmap``; with ``normalize``, each cell's scores are rescaled to [0, 1]."""
    key = f"{key_added}_scores"
    if key not in adata.obsm:
        raise KeyError(f"obsm[{key!r}] is missing: run schash.annotate(adata, model) first")
    sc = pd.DataFrame(np.asarray(adata.obsm[key], dtype=float), index=adata.obs_names,
                      columns=getattr(adata.obsm[key], "columns", None))
    if normalize:
        lo, hi = sc.min(axis=1), sc.max(axis=1)
        sc = sc.sub(lo, axis=0).div((hi - lo).replace(0, 1), axis=0)
    groups = adata.obs[groupby].astype(str).to_numpy()
    order = np.lexsort((-np.nan_to_num(sc.max(axis=1).to_numpy()), groups))
    ax = _axes(ax, figsize or (8, 0.3 * sc.shape[1] + 2))
    im = ax.imshow(sc.to_numpy()[order].T, aspect="auto", cmap=cmap, interpolation="nearest")
    ax.set_yticks(range(sc.shape[1]), sc.columns, fontsize=8)
    bounds = np.flatnonzero(np.r_[True, groups[order][1:] != groups[order][:-1], True])
    for b in bounds[1:-1]:
        ax.axvline(b - 0.5, color="white", lw=0.8)
    ax.set_xticks((bounds[:-1] + bounds[1:] - 1) / 2, groups[order][bounds[:-1]], rotation=90, fontsize=8)
    ax.set_xlabel(f"cells, by {groupby}")
    ax.figure.colorbar(im, ax=ax, label="score" + (" (per cell, 0-1)" if normalize else ""), shrink=0.8)
    ax.figure.tight_layout()
    return ax
