"""What the values of an expression matrix are, and how they become log-normalised.

The checks that would otherwise surface as a wrong answer later (NaN/inf, negative or
absurdly large values), the one decision of what kind of values an input holds
(:func:`detect_kind`) and the normalisation that follows from it (:func:`log_normalise`).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from ._errors import InputError
from ._logging import logger

KINDS = ("counts", "log", "normalised")
LOG_MAX = 20.0  # log1p of values normalised to 1e6 stays below 14, log2(1 + CPM) below 20
MAX_VALUE = 1e30  # no expression value is this large; beyond it float32 sums lose all meaning


def check_magnitude(v: np.ndarray) -> None:
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


def detect_kind(X, n_sample: int = 100_000, seed: int = 0) -> str:
    """What the values of ``X`` are: ``"counts"``, ``"log"`` (log-normalised) or ``"normalised"``.

    The one place schash decides this, for training and for queries.  ``X`` should be rows
    from across the whole input (see :meth:`schash._data.Source.sample`), never its first
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
        # each stored value times its row's factor, as diag(scale) @ X computes it (in the product's
        # dtype, then float32), without SciPy's sparse product: that builds a new structure with
        # unsorted indices, which then need sorting (~0.15 s per 100,000 cells)
        X = sparse.csr_matrix(X)
        if not X.has_canonical_format:
            X = X.copy()
            X.sum_duplicates()
        factor = scale.astype(np.float32)
        dtype = np.result_type(factor, X.dtype)
        data = (X.data.astype(dtype, copy=False) * np.repeat(factor, np.diff(X.indptr)).astype(dtype, copy=False))
        Y = sparse.csr_matrix((data.astype(np.float32, copy=False), X.indices.copy(), X.indptr.copy()), shape=X.shape)
        Y.eliminate_zeros()  # as the product drops them: explicit zeros and the rows of empty cells
        np.log1p(Y.data, out=Y.data)
        return Y
    return np.log1p(X * scale[:, None].astype(np.float32))
