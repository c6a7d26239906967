"""Gradient saliency: which genes pull a cell's code toward the anchor of its type.

For a cell with scaled input ``x`` and assigned anchor ``a``, let ``g(x) = a · f(x)``
where ``f`` is the network's output before tanh.  The saliency is ``dg/dx``
(``"gradient"``), ``x · dg/dx`` (``"gradient_x_input"``) or the integrated gradients
from the average cell (zero after scaling) to ``x`` (``"integrated_gradients"``).
``"gradient_x_input"`` is the default: on scanpy's pbmc68k_reduced it recovered the
most known markers per type of the three, at a sixteenth of the cost of integrated
gradients.  The query is read through the model's encoder a chunk at a time: each chunk's
rows are made dense, their saliency added to per-group sums and reduced to each cell's
top genes, then dropped, so memory is bounded by the chunk, not the query.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from . import _args, _hamming
from ._data import Source, match_by_name
from ._errors import InputError, LabelKeyError

SALIENCY_METHODS = ("integrated_gradients", "gradient", "gradient_x_input")


@dataclass
class Saliency:
    by_group: pd.DataFrame  # genes × groups: mean saliency of the group's cells
    cell_top_genes: pd.Series  # per cell: its top genes, comma-separated


def _given_groups(src: Source, by) -> np.ndarray | None:
    """Each cell's group when ``by`` names an obs column or is a vector; ``None`` for ``by="label"``."""
    if isinstance(by, str) and by == "label":
        return None
    if isinstance(by, str):
        if src.obs is None or by not in src.obs:
            cols = [] if src.obs is None else list(src.obs.columns)
            raise LabelKeyError(f"by={by!r} is neither 'label' nor an obs column; columns: {cols}")
        return src.obs[by].astype(str).to_numpy()
    if isinstance(by, pd.Series):  # matched to the cells by name, like labels
        by = match_by_name(by, src.cells, "group")
    values = np.asarray(by, dtype=object)
    if len(values) != src.n:
        raise InputError(f"by= has {len(values)} values for {src.n} cells")
    return values.astype(str)


def _agreement_grad(model, x, target):
    """Gradient of the agreement between the pre-tanh output and the target anchor.

    The pre-tanh output is used because tanh saturates on trained codes, which would
    flatten the gradient of well-separated cells toward zero.
    """
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((model.module.net(x) * target).sum(), x)
    return grad


def _chunk_saliency(model, x, target, method, n_steps):
    if method == "integrated_gradients":
        # path from the average cell (all zeros after scaling) to x, midpoint rule
        alphas = (np.arange(n_steps) + 0.5) / n_steps
        grad = sum(_agreement_grad(model, x * float(a), target) for a in alphas) / n_steps
        return (grad * x).numpy()
    grad = _agreement_grad(model, x, target)
    return (grad * x).numpy() if method == "gradient_x_input" else grad.numpy()


def _top_columns(g: np.ndarray, n: int) -> np.ndarray:
    """Column indices of the ``n`` largest values of each row, largest first (a partial sort)."""
    if n >= g.shape[1]:
        return np.argsort(-g, axis=1, kind="stable")
    part = np.argpartition(-g, n - 1, axis=1)[:, :n] if n else np.zeros((g.shape[0], 0), dtype=np.int64)
    order = np.argsort(-np.take_along_axis(g, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def compute_saliency(model, data, *, genes=None, layer=None, by="label", method="gradient_x_input",
                     batch_key=None, n_top_cell: int = 5, chunk_size: int = 2048, n_steps: int = 16) -> Saliency:
    """Per-group mean saliency and each cell's top genes (see the module docstring)."""
    _args.choice("method", method, SALIENCY_METHODS)
    _args.whole("n_top_cell", n_top_cell, minimum=0)
    _args.whole("chunk_size", chunk_size)
    _args.whole("n_steps", n_steps)
    anchors = torch.from_numpy(model.anchors)
    packed = model.packed_anchors
    type_names = np.asarray(model.cell_types, dtype=object)
    gene_names = np.asarray(model.pre.genes, dtype=object)
    index: dict[str, int] = {}  # group -> row of the sums
    sums = np.zeros((0, len(gene_names)), dtype=np.float64)
    counts = np.zeros(0, dtype=np.int64)
    top: list[str] = []
    with Source(data, genes, layer) as src:
        given = _given_groups(src, by)
        cells = src.cells
        for a, b, block in model.encoder.scaled(src, batch_key=batch_key, chunk_size=chunk_size):
            x = torch.from_numpy(block.rows())
            with torch.no_grad():
                best, _, _ = _hamming.nearest_anchor(_hamming.pack(model.module.net(x).numpy()), packed)
            g = _chunk_saliency(model, x, anchors[torch.from_numpy(best)], method, n_steps).astype(np.float32)
            groups = type_names[best] if given is None else given[a:b]
            for name in dict.fromkeys(groups):
                if name not in index:
                    index[name] = len(index)
            rows = np.fromiter((index[name] for name in groups), dtype=np.int64, count=len(groups))
            if len(index) > len(sums):
                sums = np.vstack([sums, np.zeros((len(index) - len(sums), sums.shape[1]))])
                counts = np.concatenate([counts, np.zeros(len(index) - len(counts), dtype=np.int64)])
            np.add.at(sums, rows, g)
            counts += np.bincount(rows, minlength=len(counts))
            top.extend(",".join(r) for r in gene_names[_top_columns(g, n_top_cell)])
    order = sorted(index)  # groups in sorted order, as columns
    rows = [index[name] for name in order]
    means = sums[rows] / counts[rows][:, None]
    by_group = pd.DataFrame(means.T, index=pd.Index(model.pre.genes, name="gene"), columns=[str(c) for c in order])
    return Saliency(by_group, pd.Series(top, index=cells, name="top_genes"))


def top_genes(saliency: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """The ``n`` most salient genes of each group, as a tidy DataFrame (group, rank, gene, score)."""
    _args.whole("n", n)
    rows = []
    for group in saliency.columns:
        col = saliency[group].sort_values(ascending=False).head(n)
        rows += [(group, r + 1, gene, float(v)) for r, (gene, v) in enumerate(col.items())]
    return pd.DataFrame(rows, columns=["group", "rank", "gene", "score"])
