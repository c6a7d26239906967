"""From what the user passes to a checked cells × genes matrix.

Accepts AnnData (``X`` or ``layer=``), a pandas DataFrame (cells × genes), or a
NumPy / SciPy sparse matrix with gene names.  Sparse input stays sparse.  The
checks here are the ones that would otherwise surface as a wrong answer later:
orientation, duplicate genes, NaN/inf, negative values.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse

from ._errors import GeneOverlapError, InputError
from ._logging import logger


@dataclass
class Expr:
    """A validated expression matrix: ``X`` is cells × genes (CSR float32 or ndarray float32)."""

    X: sparse.csr_matrix | np.ndarray
    genes: pd.Index
    cells: pd.Index
    obs: pd.DataFrame | None = None


def _is_anndata(obj) -> bool:
    return type(obj).__name__ == "AnnData" and hasattr(obj, "var_names")


def extract(data, genes=None, *, layer: str | None = None, check_values: bool = True) -> Expr:
    """Return the expression matrix of ``data`` as an :class:`Expr` (cells × genes)."""
    obs = None
    if _is_anndata(data):
        if layer is None:
            X = data.X
        elif layer in data.layers:
            X = data.layers[layer]
        else:
            raise InputError(
                f"layer {layer!r} is not in this AnnData; its layers are {list(data.layers.keys())}. "
                "Pass one of these, or layer=None for .X"
            )
        if X is None:
            raise InputError("this AnnData has no expression matrix in .X; pass layer= to name one")
        if genes is not None:
            raise InputError("genes= is only for plain matrices; an AnnData carries its own var_names")
        gene_index, cells, obs = pd.Index(data.var_names), pd.Index(data.obs_names), data.obs
    elif isinstance(data, pd.DataFrame):
        X, gene_index, cells = data.to_numpy(), pd.Index(data.columns.astype(str)), pd.Index(data.index.astype(str))
    else:
        if layer is not None:
            raise InputError("layer= is only for AnnData input")
        X = data
        if genes is None:
            raise InputError(
                "a plain matrix needs gene names: pass genes= (one name per column, cells in rows)"
            )
        gene_index = pd.Index(np.asarray(genes).astype(str))
        cells = pd.Index([f"cell_{i}" for i in range(X.shape[0])]) if hasattr(X, "shape") else None
    X = _as_matrix(X)
    if X.shape[1] != len(gene_index):
        if X.shape[0] == len(gene_index):
            raise InputError(
                f"the matrix is {X.shape[0]} × {X.shape[1]} and its rows match the {len(gene_index)} gene names: "
                "it looks like genes × cells; schash wants cells × genes, so pass its transpose (X.T)"
            )
        raise InputError(f"the matrix has {X.shape[1]} columns but {len(gene_index)} gene names were given")
    if cells is None or len(cells) != X.shape[0]:
        cells = pd.Index([f"cell_{i}" for i in range(X.shape[0])])
    dup = gene_index[gene_index.duplicated()]
    if len(dup):
        raise InputError(
            f"{len(dup)} gene names occur more than once (e.g. {list(dup[:3])}); make them unique first, "
            "e.g. adata.var_names_make_unique()"
        )
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise InputError(f"the expression matrix is empty ({X.shape[0]} cells × {X.shape[1]} genes)")
    if check_values:
        check_finite_nonnegative(X)
    return Expr(X=X, genes=gene_index, cells=cells, obs=obs)


def _check_magnitude(v: np.ndarray) -> None:
    """Values beyond :data:`MAX_VALUE` are reported as too large (not as the inf float32 would make them)."""
    if v.size and v.dtype.kind == "f" and (v.max() > MAX_VALUE or v.min() < -MAX_VALUE):  # no copies if fine
        with np.errstate(invalid="ignore"):
            big = (np.abs(v) > MAX_VALUE) & np.isfinite(v)
        if big.any():
            raise InputError(
                f"the expression matrix holds {int(big.sum())} values too large to be expression values "
                f"(up to {float(np.abs(v[big]).max()):.3g}; the limit is {MAX_VALUE:.0e}); check how it was "
                "computed, or pass raw counts"
            )


def _as_matrix(X) -> sparse.csr_matrix | np.ndarray:
    if sparse.issparse(X):
        _check_magnitude(np.asarray(X.data))
        # no sum_duplicates(): it scans the whole matrix, and every later step (row sums,
        # gene alignment by sparse product) already treats duplicate entries as their sum
        return sparse.csr_matrix(X, dtype=np.float32)
    if hasattr(X, "to_memory"):  # anndata backed sparse dataset
        return _as_matrix(X.to_memory())
    arr = np.asarray(X)
    if arr.ndim != 2:
        raise InputError(f"expected a 2-d cells × genes matrix, got an array of shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"the expression matrix must be numeric, got dtype {arr.dtype}")
    _check_magnitude(arr.reshape(-1))
    return np.ascontiguousarray(arr, dtype=np.float32)


def _values(X) -> np.ndarray:
    return X.data if sparse.issparse(X) else X.reshape(-1)


def check_finite_nonnegative(X) -> None:
    """Raise :class:`InputError` on NaN/inf or negative values, saying how many and what to do."""
    v = _values(X)
    bad = ~np.isfinite(v)
    if bad.any():
        raise InputError(
            f"the expression matrix holds {int(bad.sum())} NaN or infinite values; "
            "remove or replace them (e.g. with 0) before calling schash"
        )
    neg = v < 0
    if neg.any():
        raise InputError(
            f"the expression matrix holds {int(neg.sum())} negative values: it looks scaled or centred. "
            "schash needs raw counts or log-normalised values: pass layer='counts', or adata.raw.to_adata()"
        )


KINDS = ("counts", "log", "normalised")
LOG_MAX = 20.0  # log1p of values normalised to 1e6 stays below 14, log2(1 + CPM) below 20
MAX_VALUE = 1e30  # no expression value is this large; beyond it float32 sums lose all meaning


def detect_kind(X, n_sample: int = 100_000, seed: int = 0) -> str:
    """What the values of ``X`` are: ``"counts"``, ``"log"`` (log-normalised) or ``"normalised"``.

    The one place schash decides this, for training and for queries.  ``X`` should be rows
    from across the whole input (see :meth:`schash._stream.Source.sample`), never its first
    rows alone.

    - ``"counts"``: every sampled non-zero value is a whole number;
    - ``"normalised"``: not whole numbers, but beyond the range of log-normalised data
      (largest value above :data:`LOG_MAX`) or every cell sums to the same total (CPM, TPM,
      RPKM, ``normalize_total`` without log).  Treated like counts: each cell is rescaled to
      the model's ``target_sum`` and ``log1p``-transformed, so a CPM query gets the labels
      of its counts;
    - ``"log"``: anything else (log-normalised values are used as they are).
    """
    v = _values(X)
    nz = v[v != 0]
    if nz.size == 0:
        return _report("log", "no non-zero values")
    sample = nz if nz.size <= n_sample else np.random.default_rng(seed).choice(nz, n_sample, replace=False)
    if np.all(np.abs(sample - np.round(sample)) < 1e-6):
        return _report("counts", "whole numbers")
    vmax = float(nz.max())
    if vmax > LOG_MAX:
        return _report("normalised", f"not whole numbers, largest value {vmax:.4g} is beyond the range of "
                                     f"log-normalised data; each cell is rescaled and log1p-transformed")
    totals = np.asarray(X.sum(axis=1), dtype=np.float64).reshape(-1)
    totals = totals[totals > 0]
    if len(totals) >= 2 and totals.std() <= 1e-3 * totals.mean():
        return _report("normalised", f"not whole numbers, every cell sums to {totals.mean():.4g}; "
                                     f"each cell is rescaled and log1p-transformed")
    return _report("log", f"not whole numbers, largest value {vmax:.4g}: log-normalised values, used as they are")


def _report(kind: str, why: str) -> str:
    logger.info("input values detected as %s (%s)", kind, why)
    return kind


def log_normalise(X, kind: str, target_sum: float = 1e4):
    """Counts (or normalised values) → rescaled to ``target_sum`` per cell and ``log1p``-transformed;
    log-normalised input is returned as it is.

    Cells with no counts stay all-zero (they are reported as Unassigned later).
    """
    if kind == "log":
        return X
    if kind not in ("counts", "normalised"):
        raise InputError(f"input kind must be one of {KINDS}, got {kind!r}")
    totals = np.asarray(X.sum(axis=1), dtype=np.float64).reshape(-1)
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals, dtype=np.float64), where=totals > 0)
    if sparse.issparse(X):
        Y = sparse.diags(scale.astype(np.float32)) @ X
        Y = sparse.csr_matrix(Y, dtype=np.float32)
        np.log1p(Y.data, out=Y.data)
        return Y
    return np.log1p(X * scale[:, None].astype(np.float32))


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
            f"(needed: {min_overlap:.0%}); e.g. missing: {list(target[~present][:5])}. Check that the "
            "query uses the same gene identifiers as the reference (symbols vs Ensembl IDs) and is cells × genes"
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


def column_sums(X, groups: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-group column sums and sums of squares (float64, ``n_groups`` × genes)."""
    onehot = sparse.csr_matrix(
        (np.ones(len(groups), dtype=np.float64), (groups, np.arange(len(groups)))), shape=(n_groups, len(groups))
    )

    def dense(m):
        return m.toarray() if sparse.issparse(m) else np.asarray(m)

    if sparse.issparse(X):
        X = sparse.csr_matrix(X)
        if n_groups == 1:  # one scatter-add per statistic instead of two sparse products
            G = X.shape[1]
            return (np.bincount(X.indices, weights=X.data, minlength=G)[None],
                    np.bincount(X.indices, weights=X.data * X.data, minlength=G)[None])
        return dense(onehot @ X), dense(onehot @ X.multiply(X))
    Xd = np.asarray(X, dtype=np.float64)
    return dense(onehot @ Xd), dense(onehot @ (Xd * Xd))


def stats_from_sums(s1: np.ndarray, s2: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (float32) from column sums over groups of ``sizes`` cells."""
    n = np.maximum(np.asarray(sizes, dtype=np.float64).reshape(-1, 1), 1)
    mean = s1 / n
    var = np.maximum(s2 / n - mean**2, 0)
    return mean.astype(np.float32), np.sqrt(var).astype(np.float32)


def column_stats(X, groups: np.ndarray | None = None, n_groups: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per-group column mean and standard deviation (``n_groups`` × genes, float32)."""
    if groups is None:
        groups = np.zeros(X.shape[0], dtype=np.int64)
        n_groups = 1
    s1, s2 = column_sums(X, groups, n_groups)
    return stats_from_sums(s1, s2, np.bincount(groups, minlength=n_groups))
