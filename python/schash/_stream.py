"""Chunked passes over a query, from memory or straight from an ``.h5ad`` file.

Every encoding goes through :func:`encode_pass`: cells are read, normalised, aligned
and transformed a chunk at a time; a first pass gathers the query's per-gene
statistics (for ``scale="batch"``), a second scales each chunk, runs the network
and keeps only the packed codes and a few numbers per cell.  A path to an ``.h5ad``
is opened in anndata's backed mode, so peak memory is bounded by the chunk, not the
file.  In-memory input is cut into the same chunks, so both give identical codes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse

from . import _args, _hamming
from ._data import Expr, _as_matrix, check_finite_nonnegative, column_sums, detect_kind, extract
from ._errors import InputError, LabelKeyError
from ._novelty import margins
from ._preprocess import SparseScaled

CACHE_LIMIT_BYTES = 1 << 30  # keep first-pass features in memory below this, else recompute


@dataclass
class Encoded:
    """What one pass over a query yields: packed codes, typicality and bookkeeping."""

    cells: pd.Index
    codes: np.ndarray
    typicality: np.ndarray
    empty: np.ndarray
    n_genes_matched: int
    kind: str = "counts"  # what the input was detected as (see schash._data.detect_kind)
    projected: np.ndarray | None = None  # cells × (PCA + residual) in the novelty scorer's space


class Source:
    """Rows of a query, a chunk at a time: AnnData, matrix, or an ``.h5ad`` path (read backed)."""

    def __init__(self, data, genes=None, layer=None):
        self.adata = None
        if isinstance(data, (str, os.PathLike)):
            import anndata as ad

            if not os.path.isfile(data):
                raise FileNotFoundError(f"no such file: {data}")
            self.adata = ad.read_h5ad(data, backed="r")
            if layer is not None and layer not in self.adata.layers:
                raise InputError(f"layer {layer!r} is not in {data}; its layers are {list(self.adata.layers.keys())}")
            self.matrix = self.adata.X if layer is None else self.adata.layers[layer]
            probe = extract(_as_matrix(self.matrix[: min(2, self.adata.n_obs)]), list(self.adata.var_names),
                            check_values=False)
            self.genes, self.cells, self.obs = probe.genes, pd.Index(self.adata.obs_names), self.adata.obs
        else:
            expr = extract(data, genes, layer=layer)
            self.matrix, self.genes, self.cells, self.obs = expr.X, expr.genes, expr.cells, expr.obs
        self.n = len(self.cells)

    def chunk(self, start: int, stop: int) -> Expr:
        X = _rows(self.matrix, start, stop)
        if self.adata is not None:
            X = _as_matrix(X)
            check_finite_nonnegative(X)
        return Expr(X=X, genes=self.genes, cells=self.cells[start:stop])

    def sample(self, n_rows: int = 2000, n_blocks: int = 64):
        """Rows spread over the whole input (contiguous blocks at evenly spaced positions), for
        deciding what kind of values it holds; cheap to read from a backed file."""
        if self.n <= n_rows:
            return _as_matrix(_rows(self.matrix, 0, self.n))
        size = max(1, n_rows // n_blocks)
        starts = np.unique(np.linspace(0, self.n - size, n_blocks).astype(np.int64))
        blocks = [_as_matrix(_rows(self.matrix, int(a), int(a) + size)) for a in starts]
        out = sparse.vstack([sparse.csr_matrix(b) for b in blocks]).tocsr()
        if out.count_nonzero() == 0:  # nearly all cells empty: the first rows (in fixed blocks) that are not
            for a in range(0, self.n, n_rows):
                block = sparse.csr_matrix(_as_matrix(_rows(self.matrix, a, min(a + n_rows, self.n))))
                if block.count_nonzero():
                    return block
        return out

    def groups(self, batch_key):
        if batch_key is None:
            return np.zeros(self.n, dtype=np.int64), 1
        if self.obs is None:
            raise InputError("batch_key= needs AnnData input (a plain matrix has no obs)")
        if batch_key not in self.obs:
            raise LabelKeyError(f"batch_key {batch_key!r} is not a column of obs; columns: {list(self.obs.columns)}")
        codes, cats = pd.factorize(self.obs[batch_key].astype(str))
        return codes.astype(np.int64), len(cats)


def _rows(X, start, stop):
    """Rows ``start:stop``; for an in-memory CSR matrix, views of its arrays instead of a copy."""
    if isinstance(X, sparse.csr_matrix):  # canonical: extract() made it so
        a, b = X.indptr[start], X.indptr[stop]
        out = sparse.csr_matrix((stop - start, X.shape[1]), dtype=X.dtype)
        out.data, out.indices, out.indptr = X.data[a:b], X.indices[a:b], X.indptr[start : stop + 1] - a
        return out
    return X[start:stop]


def _bounds(n, chunk_size):
    return [(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]


def encode_pass(model, data, *, genes=None, layer=None, batch_key=None, groups=None, chunk_size=8192,
                min_gene_overlap=0.3, progress=None, keep_projected=None) -> Encoded:
    from tqdm.auto import tqdm

    chunk_size = _args.whole("chunk_size", chunk_size)
    _args.number("min_gene_overlap", min_gene_overlap, lo=0, hi=1)
    progress = _args.progress(progress)
    src = Source(data, genes, layer)
    pre = model.pre
    bounds = _bounds(src.n, chunk_size)
    sample = src.sample()
    if src.adata is not None:
        check_finite_nonnegative(sample)
    kind = detect_kind(sample)  # from rows across the whole input, never the first chunk alone
    if groups is None:
        groups, n_groups = src.groups(batch_key)
    else:
        n_groups = int(groups.max()) + 1
    G = len(pre.genes)
    s1, s2 = np.zeros((n_groups, G)), np.zeros((n_groups, G))
    nnz = np.zeros(src.n, dtype=np.int64)
    cache, cached_bytes, present, n_matched = [], 0, None, 0
    for i, (a, b) in enumerate(tqdm(bounds, desc="schash read", disable=not progress, unit="chunk")):
        F, present, _ = pre.features(src.chunk(a, b), kind=kind, min_overlap=min_gene_overlap,
                                     what="query", report=i == 0)
        F = sparse.csr_matrix(F)
        c1, c2 = column_sums(F, groups[a:b], n_groups)
        s1 += c1
        s2 += c2
        nnz[a:b] = np.diff(F.indptr)
        cached_bytes += F.data.nbytes + F.indices.nbytes
        cache.append(F if cached_bytes <= CACHE_LIMIT_BYTES else None)
    n_matched = int(present.sum())
    mean, std = pre.stats_from_sums(s1, s2, np.bincount(groups, minlength=n_groups))
    codes, coords, margin = [], [], []
    for (a, b), F in zip(tqdm(bounds, desc="schash encode", disable=not progress, unit="chunk"), cache):
        if F is None:
            F = sparse.csr_matrix(pre.features(src.chunk(a, b), kind=kind, min_overlap=0, report=False)[0])
        block = SparseScaled(F, groups[a:b], mean, std, present, pre.clip)
        logits = model.module.logits_sparse(block)  # sign(tanh(x)) == sign(x)
        codes.append(_hamming.pack(logits))
        # typicality is judged against the reference's own scale, whatever `scale` the network uses
        ref_block = SparseScaled(F, np.zeros(b - a, dtype=np.int64), pre.ref_mean[None], pre.ref_std[None],
                                 present, pre.clip, structure=block.structure)
        coords.append(model.novelty.project(ref_block))
        margin.append(margins(logits, model.anchors))
    projected = np.concatenate(coords)
    typ = model.novelty.typicality(projected, np.concatenate(margin))
    if keep_projected is None:  # kept for placing cells on a reference map (schash._refmap) only
        keep_projected = getattr(model, "ref_map", None) is not None
    return Encoded(src.cells, np.concatenate(codes), typ, nnz == 0, n_matched, kind,
                   projected if keep_projected else None)
