"""The one input layer: from what the user passes to checked rows of a cells × genes matrix.

Every public entry point (``train``, ``annotate``, ``SchashModel.predict``/``encode``/
``neighbors``/``composition``/``add_reference``/``saliency``, the CLI and the R bridge) reads
its data through :class:`Source`, which accepts

- an AnnData (``X`` or ``layer=``), in memory or backed (``read_h5ad(..., backed="r")``);
- the path of an ``.h5ad`` file, opened backed, so that only the rows in use are read;
- a pandas DataFrame (cells × genes);
- a NumPy / SciPy sparse matrix (cells × genes) with ``genes=``;
- Dask input: an AnnData whose ``X`` (or layer) is a Dask array, a Dask array with
  ``genes=``, or the path of an AnnData stored as ``.zarr`` (needs the ``dask`` extra);
  ``Source(...)`` then returns a :class:`schash._dask.DaskSource`, whose rows the encoder
  sends to Dask workers a block at a time.

Sparse input stays sparse.  The checks here are the ones that would otherwise surface
as a wrong answer later: orientation, duplicate genes, NaN/inf, negative values (see
:mod:`schash._values`).  Labels and batches come from an ``obs`` column or a vector
matched to the cells (:meth:`Source.column`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse

from ._errors import InputError, LabelKeyError
from ._values import check_finite_nonnegative, check_magnitude

UNASSIGNED = "Unassigned"  # the label of cells left unassigned; never a reference cell type


@dataclass
class Expr:
    """A validated expression matrix: ``X`` is cells × genes (CSR float32 or ndarray float32)."""

    X: sparse.csr_matrix | np.ndarray
    genes: pd.Index
    cells: pd.Index
    obs: pd.DataFrame | None = None


def is_anndata(obj) -> bool:
    return type(obj).__name__ == "AnnData" and hasattr(obj, "var_names")


def extract(data, genes=None, *, layer: str | None = None, check_values: bool = True) -> Expr:
    """Return the expression matrix of ``data`` as an :class:`Expr` (cells × genes)."""
    obs = None
    if is_anndata(data):
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


def _as_matrix(X) -> sparse.csr_matrix | np.ndarray:
    if sparse.issparse(X):
        check_magnitude(np.asarray(X.data))
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
    check_magnitude(arr.reshape(-1))
    return np.ascontiguousarray(arr, dtype=np.float32)


def _is_path(data) -> bool:
    return isinstance(data, (str, os.PathLike))


def _is_backed(data) -> bool:
    return is_anndata(data) and bool(getattr(data, "isbacked", False))


def is_dask_array(X) -> bool:
    """Whether ``X`` is a Dask array (without importing Dask)."""
    return type(X).__module__.startswith("dask.array")


def is_zarr_path(data) -> bool:
    """Whether ``data`` names an AnnData stored as zarr (a ``.zarr`` path, or a folder with zarr metadata)."""
    if not _is_path(data):
        return False
    path = os.fspath(data).rstrip("/")
    return path.endswith(".zarr") or (os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, meta)) for meta in (".zgroup", "zarr.json")))


def _wants_dask(data, layer) -> bool:
    if is_zarr_path(data):
        return True
    if is_anndata(data):
        if _is_backed(data):
            return False
        root = getattr(data, "_adata_ref", None) if getattr(data, "is_view", False) else data
        root = data if root is None else root  # a view's matrix is that of its parent, cut (so look there)
        X = root.X if layer is None else root.layers[layer] if layer in root.layers else None
        return is_dask_array(X)
    return is_dask_array(data)


class Source:
    """The rows of an input, a chunk at a time (see the module docstring).

    In-memory input is checked once, whole; backed input (an ``.h5ad`` path or a backed
    AnnData) is checked chunk by chunk as it is read, so memory stays bounded by the chunk.
    Use it as a context manager to close a file it opened.  Dask input (see the module
    docstring) gives a :class:`schash._dask.DaskSource`, with the same interface.
    """

    dask_source = None  # schash._dask.DaskSource registers itself here (it imports Dask only when used)

    def __new__(cls, data=None, genes=None, layer=None):
        if cls is Source and _wants_dask(data, layer):
            return super().__new__(Source.dask_source)
        return super().__new__(cls)

    def __init__(self, data, genes=None, layer=None):
        self._opened = None
        backed = data
        if _is_path(data):
            import anndata as ad

            if not os.path.isfile(data):
                raise FileNotFoundError(f"no such file: {data}")
            backed = self._opened = ad.read_h5ad(data, backed="r")
        if _is_path(data) or _is_backed(data):
            if genes is not None:
                raise InputError("genes= is only for plain matrices; an AnnData carries its own var_names")
            if layer is not None and layer not in backed.layers:
                where = data if _is_path(data) else "this AnnData"
                raise InputError(f"layer {layer!r} is not in {where}; its layers are {list(backed.layers.keys())}")
            self.adata, self.layer = backed, layer
            self.matrix = backed.X if layer is None else backed.layers[layer]
            probe = extract(_as_matrix(self.matrix[: min(2, backed.n_obs)]), list(backed.var_names),
                            check_values=False)  # names checked like any input's
            self.genes, self.cells, self.obs = probe.genes, pd.Index(backed.obs_names), backed.obs
        else:
            expr = extract(data, genes, layer=layer)
            self.adata, self.layer = None, layer
            self.matrix, self.genes, self.cells, self.obs = expr.X, expr.genes, expr.cells, expr.obs
        self.n = len(self.cells)

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the file this source opened (a backed AnnData passed in is left open)."""
        if self._opened is not None:
            self._opened.file.close()
            self._opened = None

    @property
    def backed(self) -> bool:
        return self.adata is not None

    def chunk(self, start: int, stop: int) -> Expr:
        """Rows ``start:stop`` as a checked :class:`Expr`."""
        X = _rows(self.matrix, start, stop)
        if self.backed:
            X = _as_matrix(X)
            check_finite_nonnegative(X)
        return Expr(X=X, genes=self.genes, cells=self.cells[start:stop])

    def bounds(self, chunk_size: int) -> list[tuple[int, int]]:
        return [(s, min(s + chunk_size, self.n)) for s in range(0, self.n, chunk_size)]

    def subset(self, idx: np.ndarray) -> Expr:
        """Rows ``idx`` (sorted indices) in memory, checked, with their ``obs``."""
        idx = np.asarray(idx, dtype=np.int64)
        obs = self.obs.iloc[idx] if self.obs is not None else None
        if self.backed:
            X = _as_matrix(self.matrix[idx] if len(idx) < self.n else self.matrix[:])
            check_finite_nonnegative(X)
        else:
            X = self.matrix if len(idx) == self.n else self.matrix[idx]
        return Expr(X=X, genes=self.genes, cells=self.cells[idx], obs=obs)

    def sample(self, n_rows: int = 2000, n_blocks: int = 64):
        """Rows spread over the whole input (contiguous blocks at evenly spaced positions), for
        deciding what kind of values it holds; cheap to read from a backed file."""
        if self.n <= n_rows:
            return self._read([(0, self.n)])[0]
        size = max(1, n_rows // n_blocks)
        starts = np.unique(np.linspace(0, self.n - size, n_blocks).astype(np.int64))
        blocks = self._read([(int(a), int(a) + size) for a in starts])
        out = sparse.vstack([sparse.csr_matrix(b) for b in blocks]).tocsr()
        if out.count_nonzero() == 0:  # nearly all cells empty: the first rows (in fixed blocks) that are not
            for a in range(0, self.n, n_rows):
                block = sparse.csr_matrix(self._read([(a, min(a + n_rows, self.n))])[0])
                if block.count_nonzero():
                    return block
        return out

    def _read(self, ranges) -> list:
        """Rows ``a:b`` for each ``(a, b)`` of ``ranges``, as matrices (not yet checked)."""
        return [_as_matrix(_rows(self.matrix, a, b)) for a, b in ranges]

    def groups(self, batch_key) -> tuple[np.ndarray, int]:
        """Each cell's group (batch) code and the number of groups; one group without ``batch_key``."""
        if batch_key is None:
            return np.zeros(self.n, dtype=np.int64), 1
        if self.obs is None:
            raise InputError("batch_key= needs AnnData input (a plain matrix has no obs)")
        if batch_key not in self.obs:
            raise LabelKeyError(f"batch_key {batch_key!r} is not a column of obs; columns: {list(self.obs.columns)}")
        codes, cats = pd.factorize(self.obs[batch_key].astype(str))
        return codes.astype(np.int64), len(cats)

    def column(self, key: str | None, values, what: str) -> np.ndarray | None:
        """Labels, batches or groups from an obs column (``key``) or a vector (``values``), as strings.

        A pandas Series is matched to the cells by its index (cell names); a bare array or list,
        or a Series with a default 0..n-1 index, by position.  Missing values are an error.
        """
        if key is not None:
            if self.obs is None:
                raise InputError(f"{what}_key= needs AnnData input; for a matrix pass the {what}s as a vector")
            if key not in self.obs:
                raise LabelKeyError(f"{what} column {key!r} is not in obs; available columns: {list(self.obs.columns)}")
            values = self.obs[key].to_numpy()  # the obs column is aligned to the cells already
        if values is None:
            return None
        if isinstance(values, pd.Series):
            values = match_by_name(values, self.cells, what)
        values = pd.Series(np.asarray(values, dtype=object))
        if len(values) != self.n:
            extra = " (it matches the number of genes: is the matrix genes × cells? pass X.T)" \
                if len(values) == len(self.genes) else ""
            raise InputError(f"{len(values)} {what}s for {self.n} cells{extra}")
        missing = values.isna()
        if missing.any():
            raise InputError(
                f"{int(missing.sum())} cells have a missing {what} (NA); remove those cells or give them a {what}"
            )
        values = values.astype(str).to_numpy()
        if what == "cell type" and (values == UNASSIGNED).any():
            raise InputError(f"{int((values == UNASSIGNED).sum())} cells have the cell type {UNASSIGNED!r}, which "
                             "schash reserves for the cells it leaves unassigned; rename that type or leave those "
                             "cells out")
        return values


def match_by_name(values: pd.Series, cells: pd.Index, what: str) -> np.ndarray:
    """The values of a Series in the order of ``cells``, matched by name."""
    index = values.index
    if isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1 \
            and not cells.equals(index.astype(str)):
        return values.to_numpy()  # pd.Series(list): no names to match, so by position
    names = index.astype(str)
    if names.equals(cells):
        return values.to_numpy()
    fix = f"; or pass {what}s.to_numpy() to match them to the cells by position"
    if names.has_duplicates:
        raise InputError(f"the {what}s Series has repeated cell names in its index "
                         f"(e.g. {list(names[names.duplicated()][:3])}){fix}")
    if cells.has_duplicates:
        raise InputError(f"the cell names are not unique (e.g. {list(cells[cells.duplicated()][:3])}), so the "
                         f"{what}s Series cannot be matched to them by name; make them unique "
                         f"(adata.obs_names_make_unique()){fix}")
    pos = names.get_indexer(cells)
    if (pos < 0).any():
        missing = cells[pos < 0]
        raise InputError(f"{len(missing)} cells have no {what} in the Series given (matched by cell name), "
                         f"e.g. {list(missing[:5])}; its index must hold every cell name{fix}")
    return values.to_numpy()[pos]


def _rows(X, start, stop):
    """Rows ``start:stop``; for an in-memory CSR matrix, views of its arrays instead of a copy."""
    if isinstance(X, sparse.csr_matrix):  # canonical: extract() made it so
        a, b = X.indptr[start], X.indptr[stop]
        out = sparse.csr_matrix((stop - start, X.shape[1]), dtype=X.dtype)
        out.data, out.indices, out.indptr = X.data[a:b], X.indices[a:b], X.indptr[start : stop + 1] - a
        return out
    group = getattr(X, "group", None)
    if getattr(X, "format", None) == "csr" and hasattr(group, "keys") and {"data", "indices", "indptr"} <= set(group):
        # a backed CSR matrix of an .h5ad: a block of rows is one slice of each of its three arrays, read
        # here because anndata 0.12 with SciPy >= 1.17 looks SciPy's version up in package metadata on
        # every row slice (~4 ms a call, ~0.3 s per 100,000 cells read in chunks)
        indptr = np.asarray(group["indptr"][start : stop + 1], dtype=np.int64)
        a, b = int(indptr[0]), int(indptr[-1])
        return sparse.csr_matrix((np.asarray(group["data"][a:b]), np.asarray(group["indices"][a:b]), indptr - a),
                                 shape=(stop - start, X.shape[1]))
    return X[start:stop]
