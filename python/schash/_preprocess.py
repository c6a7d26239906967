"""Preprocessing that belongs to the model: normalisation, gene selection, input transform, scaling.

Everything fitted here is saved in the model file so a query is processed exactly
as the reference was.  Two choices are parameters because no single one wins on
every dataset (see ``bench/accuracy.py``):

``transform``
    ``"log"`` — library-size normalised log1p values (the default);
    ``"rank"`` — per cell, the rank of each expressed gene among the expressed
    genes, in (0, 1]; robust to technology- and species-specific scaling.
``scale``
    ``"reference"`` — everything is standardised gene by gene with the reference's mean
    and SD (the default): a cell's features, and so its call, depend on that cell alone;
    ``"batch"`` — each reference batch, and each query (or each ``batch_key`` group of
    it), is standardised with its own mean and SD.  This removes per-dataset shifts but
    makes calls depend on the query's composition (a query of one cell type fails).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from scipy import sparse

from ._data import Expr, align_genes, column_stats, column_sums, detect_kind, log_normalise, stats_from_sums
from ._errors import InputError
from ._logging import logger

TRANSFORMS = ("log", "rank")
SCALES = ("batch", "reference")


def rank_transform(X):
    """Per-cell rank of each non-zero value among the cell's non-zeros, scaled to (0, 1]; ties averaged."""
    X = sparse.csr_matrix(X, dtype=np.float32)
    rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
    order = np.lexsort((X.data, rows))
    r, v = rows[order], X.data[order]
    pos = np.arange(len(v), dtype=np.float64) - X.indptr[r] + 1  # ordinal rank within the row
    new_run = np.ones(len(v), dtype=bool)
    new_run[1:] = (r[1:] != r[:-1]) | (v[1:] != v[:-1])
    run_id = np.cumsum(new_run) - 1
    run_mean = np.bincount(run_id, weights=pos) / np.bincount(run_id)
    nnz = np.diff(X.indptr)[r]
    out = X.copy()
    out.data[order] = (run_mean[run_id] / nnz).astype(np.float32)
    return out


def select_genes(X_log, genes: pd.Index, n_top_genes: int, batches: np.ndarray | None) -> pd.Index:
    """Highly variable genes of the reference with scanpy (Seurat flavour, batch-aware when given)."""
    if n_top_genes is None or n_top_genes >= len(genes):
        return genes
    import anndata as ad
    import scanpy as sc

    adata = ad.AnnData(X=X_log, var=pd.DataFrame(index=genes))
    adata.uns["log1p"] = {"base": None}
    kwargs = {}
    if batches is not None and len(np.unique(batches)) > 1:
        adata.obs["batch"] = pd.Categorical(batches.astype(str))
        kwargs["batch_key"] = "batch"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            hv = sc.pp.highly_variable_genes(adata, flavor="seurat", n_top_genes=n_top_genes, inplace=False, **kwargs)
        except Exception as err:  # e.g. a batch too small for binning: fall back to the pooled selection
            logger.info("batch-aware gene selection failed (%s); selecting on all cells", err)
            hv = sc.pp.highly_variable_genes(adata, flavor="seurat", n_top_genes=n_top_genes, inplace=False)
    return genes[np.asarray(hv["highly_variable"], dtype=bool)]


@dataclass
class Preprocessor:
    """The fitted preprocessing of a model; see the module docstring for ``transform`` and ``scale``."""

    genes: pd.Index
    ref_mean: np.ndarray
    ref_std: np.ndarray
    transform: str = "log"
    scale: str = "reference"
    target_sum: float = 1e4
    min_cells_own_scaling: int = 50
    clip: float = 10.0
    std_floor: float = 1e-2
    input_kind: str = "log"
    extra: dict = field(default_factory=dict)

    def features(self, expr: Expr, *, kind: str | None = None, min_overlap: float = 0.3, what: str = "query",
                 report: bool = True):
        """Normalise, align to the model's genes and transform: returns (features, present-gene mask, kind)."""
        kind = kind or detect_kind(expr.X)
        X = log_normalise(expr.X, kind, self.target_sum)
        F, _ = align_genes(X, expr.genes, self.genes, min_overlap=min_overlap, what=what, report=report)
        present = self.genes.isin(expr.genes)
        if self.transform == "rank":
            F = rank_transform(F)
        return F, present, kind

    def query_stats(self, F, groups: np.ndarray | None = None):
        """Scaling statistics for a query: its own (per group) under ``scale="batch"``, else the reference's."""
        n = F.shape[0]
        if groups is None:
            groups = np.zeros(n, dtype=np.int64)
        n_groups = int(groups.max()) + 1 if n else 1
        s1, s2 = column_sums(F, groups, n_groups)
        mean, std = self.stats_from_sums(s1, s2, np.bincount(groups, minlength=n_groups))
        return groups, mean, std

    def stats_from_sums(self, s1: np.ndarray, s2: np.ndarray, sizes: np.ndarray):
        """Per-group mean and floored SD from column sums; small groups fall back to the reference's."""
        mean, std = stats_from_sums(s1, s2, sizes)
        n_groups = len(sizes)
        for g in range(n_groups):
            if self.scale == "reference" or sizes[g] < self.min_cells_own_scaling:
                if self.scale == "batch" and sizes[g]:
                    logger.info(
                        "query group of %d cells is below min_cells_own_scaling=%d: using reference statistics",
                        sizes[g], self.min_cells_own_scaling,
                    )
                mean[g], std[g] = self.ref_mean, self.ref_std
        return mean, np.maximum(std, self.std_floor)

    def to_meta(self) -> dict:
        return {
            "genes": list(map(str, self.genes)),
            "transform": self.transform,
            "scale": self.scale,
            "target_sum": self.target_sum,
            "min_cells_own_scaling": self.min_cells_own_scaling,
            "clip": self.clip,
            "std_floor": self.std_floor,
            "input_kind": self.input_kind,
        }

    @classmethod
    def from_meta(cls, meta: dict, ref_mean: np.ndarray, ref_std: np.ndarray) -> "Preprocessor":
        meta = dict(meta)
        genes = pd.Index(meta.pop("genes"))
        return cls(genes=genes, ref_mean=ref_mean, ref_std=ref_std, **meta)


class ScaledMatrix:
    """Rows of standardised features, made dense one block at a time so memory stays bounded."""

    def __init__(self, F, groups, mean, std, present, clip):
        self.F = F if not sparse.issparse(F) else sparse.csr_matrix(F)
        self.groups, self.mean, self.std = groups, mean, std
        self.present, self.clip = present, clip

    @property
    def shape(self):
        return self.F.shape

    def rows(self, idx) -> np.ndarray:
        block = self.F[idx]
        block = block.toarray() if sparse.issparse(block) else np.array(block, dtype=np.float32)
        g = self.groups[idx]
        out = (block - self.mean[g]) / self.std[g]
        np.clip(out, -self.clip, self.clip, out=out)
        out[:, ~self.present] = 0.0
        return out.astype(np.float32, copy=False)


def fit_preprocessor(expr: Expr, *, n_top_genes, batches, transform, scale, target_sum=1e4, layer_kind=None):
    """Fit the preprocessing on the reference; returns the preprocessor and the reference's scaled matrix."""
    if transform not in TRANSFORMS:
        raise InputError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    if scale not in SCALES:
        raise InputError(f"scale must be one of {SCALES}, got {scale!r}")
    kind = layer_kind or detect_kind(expr.X)
    X_log = log_normalise(expr.X, kind, target_sum)
    genes = select_genes(X_log, expr.genes, n_top_genes, batches)
    F, _ = align_genes(X_log, expr.genes, genes, what="reference")
    if transform == "rank":
        F = rank_transform(F)
    ref_mean, ref_std = column_stats(F)
    pre = Preprocessor(
        genes=genes, ref_mean=ref_mean[0], ref_std=np.maximum(ref_std[0], 1e-2),
        transform=transform, scale=scale, target_sum=target_sum, input_kind=kind,
    )
    if scale == "batch" and batches is not None:
        codes, _ = pd.factorize(pd.Series(batches).astype(str))
        groups, mean, std = pre.query_stats(F, codes.astype(np.int64))
    else:
        groups, mean, std = pre.query_stats(F, None) if scale == "batch" else (
            np.zeros(F.shape[0], dtype=np.int64), pre.ref_mean[None], pre.ref_std[None])
    present = np.ones(len(genes), dtype=bool)
    return pre, ScaledMatrix(F, groups, mean, std, present, pre.clip)


def _row_sums(values: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """Sum of ``values`` within each CSR row (empty rows give 0), in one pass."""
    if len(values) == 0:
        return np.zeros(len(indptr) - 1)
    starts = np.minimum(indptr[:-1], len(values) - 1)
    sums = np.add.reduceat(values, starts, dtype=np.float64)
    sums[indptr[:-1] == indptr[1:]] = 0.0
    return sums


class SparseScaled:
    """Linear maps of standardised rows without making the rows dense.

    A standardised row is ``z = clip((x - mean_g) / std_g)`` with zeros for genes the
    query lacks.  Where ``x`` is 0, ``z`` equals a per-group constant ``b_g``; so
    ``W z = W b_g + W (z - b_g)``, and ``z - b_g`` is as sparse as ``x``.  Clipping is
    applied to every value, so the result equals the dense computation up to float
    rounding, at a fraction of the cost for sparse single-cell data.
    """

    def __init__(self, F, groups, mean, std, present, clip, structure=None):
        F = sparse.csr_matrix(F, dtype=np.float32)
        self.groups, self.shape = groups, F.shape
        base = np.clip(-mean / std, -clip, clip).astype(np.float32)
        base[:, ~present] = 0.0
        self.base = base  # n_groups × genes
        cols = F.indices
        self._indptr = F.indptr
        inv_sd, shift = (1.0 / std).astype(np.float32), (mean / std).astype(np.float32)
        if mean.shape[0] == 1:  # one group: plain 1-d gathers are much faster than 2-d ones
            a, c = inv_sd[0][cols], shift[0][cols]
        else:
            g = groups[self.rows]
            a, c = inv_sd[g, cols], shift[g, cols]
        z = np.clip(F.data * a - c, -clip, clip)
        b = np.clip(-c, -clip, clip)  # the value of z where x is 0
        if not present.all():
            missing = ~present[cols]
            z[missing], b[missing] = 0.0, 0.0
        self.z_nz = z.astype(np.float32, copy=False)
        self.delta_data = self.z_nz - b
        self._cols, self._b = cols, b
        # torch's view of the sparsity pattern (int32, no copy); blocks over the same rows share it
        self.structure = structure or (torch.from_numpy(F.indptr.astype(np.int32, copy=False)),
                                       torch.from_numpy(cols.astype(np.int32, copy=False)))

    @functools.cached_property
    def rows(self) -> np.ndarray:
        """Row index of every stored value."""
        return np.repeat(np.arange(self.shape[0]), np.diff(self._indptr))

    def linear(self, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
        """``z @ weight.T + bias`` for every row (weight: out × genes).

        The sparse product runs in torch (CSR × dense uses every core; SciPy's uses one).
        """
        const = self.base @ weight.T
        if bias is not None:
            const = const + bias
        crow, col = self.structure
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch calls its sparse CSR support "beta"
            t = torch.sparse_csr_tensor(crow, col, torch.from_numpy(self.delta_data), size=self.shape)
            prod = (t @ torch.from_numpy(np.ascontiguousarray(weight.T, dtype=np.float32))).numpy()
        return prod + const[self.groups].astype(np.float32)

    def sq_dist(self, center: np.ndarray) -> np.ndarray:
        """``||z - center||^2`` for every row."""
        bc = self.base - center
        const = (bc * bc).sum(1)
        zc = self.z_nz - center[self._cols]
        bcc = self._b - center[self._cols]
        return const[self.groups] + _row_sums(zc * zc - bcc * bcc, self._indptr)
