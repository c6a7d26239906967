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

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse

from ._data import Expr
from ._errors import GeneOverlapError, InputError
from ._genes import identifiers, map_query, species_of
from ._logging import logger
from ._scaled import Scaled, column_stats, column_sums, stats_from_sums
from ._values import detect_kind, log_normalise

TRANSFORMS = ("log", "rank")
SCALES = ("batch", "reference")


def stored_ranks(X: sparse.csr_matrix) -> np.ndarray:
    """Each stored value's rank among its row's stored values (1-based, ties share their mean rank),
    in stored order: what :func:`rank_transform` scales and the rare types' Spearman correlation
    (:mod:`schash._rare`) shifts past the row's zeros."""
    rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
    data = np.asarray(X.data, dtype=np.float64)
    order = None
    if len(data) and data.min() >= 0:  # one stable sort of row + value / (max + 1): ~2x faster than lexsort
        order = np.argsort(rows + data / (data.max() + 1.0), kind="stable")
        r, v = rows[order], X.data[order]
        if np.any((r[1:] == r[:-1]) & (v[1:] < v[:-1])):  # values too close for that key to order them
            order = None
    if order is None:
        order = np.lexsort((X.data, rows))
        r, v = rows[order], X.data[order]
    pos = np.arange(len(v), dtype=np.float64) - X.indptr[r] + 1  # ordinal rank within the row
    new_run = np.ones(len(v), dtype=bool)
    new_run[1:] = (r[1:] != r[:-1]) | (v[1:] != v[:-1])
    run_id = np.cumsum(new_run) - 1
    ranks = np.empty(len(v))
    ranks[order] = (np.bincount(run_id, weights=pos) / np.bincount(run_id))[run_id]
    return ranks


def rank_transform(X):
    """Per-cell rank of each non-zero value among the cell's non-zeros, scaled to (0, 1]; ties averaged."""
    X = sparse.csr_matrix(X, dtype=np.float32)
    out = X.copy()
    out.data = (stored_ranks(X) / np.repeat(np.diff(X.indptr), np.diff(X.indptr))).astype(np.float32)
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


def align_genes(X, genes: pd.Index, target: pd.Index, *, min_overlap: float = 0.3, what: str = "query",
                report: bool = True):
    """Reorder the columns of ``X`` to ``target``; missing genes become zero columns.

    Reports how many genes matched; raises :class:`GeneOverlapError` below ``min_overlap``.
    """
    if genes.equals(target):  # already the model's genes in the model's order
        return X, len(target)
    src = genes.get_indexer(target)
    present = src >= 0
    n_match = int(present.sum())
    frac = n_match / len(target)
    if frac < min_overlap:
        raise GeneOverlapError(
            f"only {n_match} of the model's {len(target)} genes ({frac:.0%}) are in the {what} "
            f"(needed: {min_overlap:.0%}), after mapping gene symbols, Ensembl IDs, version suffixes and case; "
            f"e.g. missing: {list(target[~present][:5])}. Check that the query is cells × genes and of the "
            "reference's species (a mouse query on a human model: pass species='mouse')"
        )
    if n_match < len(target) and report:
        msg = (
            f"{n_match} of {len(target)} model genes found in the {what}; "
            f"{len(target) - n_match} missing genes (e.g. {list(target[~present][:5])}) are set to zero"
        )
        warnings.warn(msg, UserWarning, stacklevel=3)
        logger.info(msg)
    if sparse.issparse(X):
        sel = sparse.csr_matrix(
            (np.ones(n_match, dtype=np.float32), (src[present], np.flatnonzero(present))),
            shape=(X.shape[1], len(target)),
        )
        return sparse.csr_matrix(X @ sel), n_match
    out = np.zeros((X.shape[0], len(target)), dtype=np.float32)
    out[:, present] = X[:, src[present]]
    return out, n_match


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
    input_kind: str = "log"  # what the reference held; the reference database is encoded as such
    # both identifier kinds of every model gene where known (GENCODE 44), and the reference's species,
    # for mapping queries named otherwise (schash._genes); None in models saved before they were kept
    gene_ids: list | None = None
    gene_symbols: list | None = None
    species: str | None = None

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

    def query_genes(self, genes: pd.Index, species: str | None = None) -> tuple[pd.Index, dict]:
        """The query's gene names renamed to the model's where they are the same genes named otherwise.

        Mapping (:func:`schash._genes.map_query`) runs only when a model gene is missing by
        exact name or ``species`` is given; returns the names and a report of what matched how.
        """
        if species is None and self.genes.isin(genes).all():
            n = len(self.genes)
            return genes, {"n_model_genes": n, "direct": n, "missing": 0,
                           "summary": f"{n} of {n} model genes found in the query by name"}
        ids = self.gene_ids if self.gene_ids is not None else None
        new, report = map_query(genes, self.genes, ids, self.gene_symbols if ids is not None else None,
                                species=species, model_species=self.species)
        return pd.Index(new), report

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
            **({"gene_ids": list(self.gene_ids), "gene_symbols": list(self.gene_symbols)}
               if self.gene_ids is not None else {}),
            **({"species": self.species} if self.species is not None else {}),
        }

    @classmethod
    def from_meta(cls, meta: dict, ref_mean: np.ndarray, ref_std: np.ndarray) -> Preprocessor:
        meta = dict(meta)
        genes = pd.Index(meta.pop("genes"))
        return cls(genes=genes, ref_mean=ref_mean, ref_std=ref_std, **meta)


def fit_preprocessor(expr: Expr, *, n_top_genes, batches, transform, scale,
                     target_sum=1e4) -> tuple[Preprocessor, Scaled]:
    """Fit the preprocessing on the reference; returns the preprocessor and the reference's scaled rows
    (scaled as the network sees them: per batch under ``scale="batch"``)."""
    if transform not in TRANSFORMS:
        raise InputError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    if scale not in SCALES:
        raise InputError(f"scale must be one of {SCALES}, got {scale!r}")
    kind = detect_kind(expr.X)
    X_log = log_normalise(expr.X, kind, target_sum)
    genes = select_genes(X_log, expr.genes, n_top_genes, batches)
    F, _ = align_genes(X_log, expr.genes, genes, what="reference")
    if transform == "rank":
        F = rank_transform(F)
    ref_mean, ref_std = column_stats(F)
    species = species_of(expr.genes)
    known = identifiers(genes, species=species)
    pre = Preprocessor(
        genes=genes, ref_mean=ref_mean[0], ref_std=np.maximum(ref_std[0], 1e-2),
        transform=transform, scale=scale, target_sum=target_sum, input_kind=kind,
        gene_ids=list(known["ensembl_id"]), gene_symbols=list(known["symbol"]), species=species,
    )
    if scale == "batch" and batches is not None:
        codes, _ = pd.factorize(pd.Series(batches).astype(str))
        groups, mean, std = pre.query_stats(F, codes.astype(np.int64))
    else:
        groups, mean, std = pre.query_stats(F, None) if scale == "batch" else (
            np.zeros(F.shape[0], dtype=np.int64), pre.ref_mean[None], pre.ref_std[None])
    present = np.ones(len(genes), dtype=bool)
    return pre, Scaled(F, groups, mean, std, present, pre.clip)
