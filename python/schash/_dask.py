"""Dask input and distributed encoding: the one encoder's chunks as Dask tasks.

:class:`DaskSource` is what :class:`schash._data.Source` returns for Dask input (an AnnData
whose ``X`` or layer is a Dask array, a Dask array with ``genes=``, an AnnData stored as
``.zarr``).  :func:`run` is what :meth:`schash._encode.Encoder.run` does with it, so every
public entry point (``predict``, ``encode``, ``annotate``, ``train``'s reference database,
the command line) gains it through the one encoder:

- the first pass stays on the calling process where it is small: the kind of values (from
  :meth:`Source.sample`'s rows across the whole input), the genes matched, the groups; under
  ``scale="batch"`` each chunk's per-group column sums are computed on the workers and added
  up in chunk order by one reduction task, as the one-machine pass adds them;
- the model and the statistics are scattered once to every worker (with a
  ``distributed`` client; with none, Dask's local threads share them);
- each chunk of ``chunk_size`` rows is one task that reads its rows and computes features,
  scaled rows and :meth:`Encoder.block` with the same functions as the one-machine pass,
  so results are identical (codes bit for bit, typicality, labels, distances, confidence);
- tasks run a window at a time and come back in order, so that :func:`tables` can hand
  each chunk's calls to a writer (``--parquet``/``--csv``) without ever holding them all.

Dask is imported only here, and only when Dask input or a scheduler is used; without the
``dask`` extra that gives an :class:`~schash.InputError` naming it.
"""

from __future__ import annotations

import os
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse

from . import _args
from ._data import Expr, Source, _as_matrix, extract, is_anndata, is_zarr_path
from ._encode import Encoded, assemble, chunk_features, input_facts
from ._errors import InputError
from ._scaled import Scaled, column_sums
from ._values import check_finite_nonnegative

EXTRA = "pip install 'schash-annotate[dask]'"
CHUNK_ROWS = 8192  # rows per Dask block of a file opened here: the encoder's default chunk_size


def require(what: str = "Dask input", module: str = "dask.array") -> None:
    """Raise :class:`InputError` naming the ``dask`` extra when ``module`` cannot be imported."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as err:
        raise InputError(f"{what} needs {module.split('.')[0]}, which is not installed here ({err}); "
                         f"install schash's dask extra: {EXTRA}") from None


# -- input ---------------------------------------------------------------------------------------
def _open(path, layer=None, chunk_size: int = CHUNK_ROWS):
    """The matrix of an ``.h5ad`` or ``.zarr`` AnnData as a Dask array of ``chunk_size``-row blocks; obs; var."""
    require()
    import anndata as ad
    from anndata.experimental import read_elem_lazy

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    if is_zarr_path(path):
        import zarr

        store, close = zarr.open_group(path, mode="r"), lambda: None
    else:
        import h5py

        store = h5py.File(path, "r")
        close = store.close
    try:
        layers = list(store["layers"].keys()) if "layers" in store else []
        if layer is not None and layer not in layers:
            raise InputError(f"layer {layer!r} is not in {path}; its layers are {layers}")
        elem = store["X"] if layer is None else store["layers"][layer]
        obs, var = ad.io.read_elem(store["obs"]), ad.io.read_elem(store["var"])
        X = read_elem_lazy(elem, chunks=(chunk_size, len(var)))  # tasks reopen the file by its path
    finally:
        close()
    return X, obs, var


def read_lazy(path, layer: str | None = None, chunk_size: int = CHUNK_ROWS):
    """An AnnData of an ``.h5ad`` or ``.zarr`` file whose ``X`` (or ``layer``) is a Dask array of
    ``chunk_size``-row blocks; ``obs`` and ``var`` are read into memory.  Workers read their
    blocks from the file themselves, so it must be reachable from them by the same path."""
    import anndata as ad

    X, obs, var = _open(path, layer, chunk_size)
    return ad.AnnData(X=X, obs=obs, var=var) if layer is None else ad.AnnData(obs=obs, var=var, layers={layer: X})


class DaskSource(Source):
    """A :class:`~schash._data.Source` over a Dask array: same interface, rows read by Dask.

    Rows the calling process needs (the sample for kind detection, the training cells, the
    first rows for gene matching) are computed by Dask from the array; :func:`run` sends the
    encoding of every chunk to the workers.
    """

    def encode_on_dask(self, encoder, **kwargs) -> Encoded:
        """What :meth:`schash._encode.Encoder.run` does with this source: :func:`run`."""
        return run(encoder, self, **kwargs)

    def __init__(self, data, genes=None, layer=None):
        require()
        self._opened, self.layer = None, layer
        if is_zarr_path(data):
            if genes is not None:
                raise InputError("genes= is only for plain matrices; an AnnData carries its own var_names")
            X, obs, var = _open(data, layer)
            names, cells = var.index, obs.index
        elif is_anndata(data):
            if genes is not None:
                raise InputError("genes= is only for plain matrices; an AnnData carries its own var_names")
            X = data.X if layer is None else data.layers[layer]
            obs, names, cells = data.obs, data.var_names, data.obs_names
            if not isinstance(obs, pd.DataFrame):  # anndata.experimental.read_lazy: a lazy frame
                obs = obs.to_memory() if hasattr(obs, "to_memory") else pd.DataFrame(obs)
        else:
            if layer is not None:
                raise InputError("layer= is only for AnnData input")
            X, obs, names, cells = data, None, genes, None
        if X.ndim != 2:
            raise InputError(f"expected a 2-d cells × genes matrix, got a Dask array of shape {X.shape}")
        if any(np.isnan(c) for c in X.chunks[0]):
            raise InputError("the Dask array's row blocks have unknown sizes; call X.compute_chunk_sizes() first")
        if names is not None and X.shape[1] != len(names) and X.shape[0] == len(names):
            raise InputError(f"the matrix is {X.shape[0]} × {X.shape[1]} and its rows match the {len(names)} gene "
                             "names: it looks like genes × cells; schash wants cells × genes, so pass its transpose")
        self.adata = data if is_anndata(data) else None
        self.matrix = X.rechunk({1: -1}) if len(X.chunks[1]) > 1 else X  # every block holds whole rows
        probe = extract(self._read([(0, min(2, X.shape[0]))])[0], None if names is None else list(names),
                        check_values=False)  # names checked like any input's
        self.genes, self.obs = probe.genes, obs
        self.cells = pd.Index(cells) if cells is not None else pd.Index([f"cell_{i}" for i in range(X.shape[0])])
        self.n = int(X.shape[0])

    @property
    def backed(self) -> bool:  # values are checked chunk by chunk, as they are read
        return True

    def close(self) -> None:  # nothing held open: tasks open the file themselves
        pass

    def _read(self, ranges) -> list:
        import dask

        return [_as_matrix(x) for x in dask.compute(*[self.matrix[a:b] for a, b in ranges])]

    def chunk(self, start: int, stop: int) -> Expr:
        X = self._read([(start, stop)])[0]
        check_finite_nonnegative(X)
        return Expr(X=X, genes=self.genes, cells=self.cells[start:stop])

    def subset(self, idx: np.ndarray) -> Expr:
        """Rows ``idx`` (sorted) in memory: one task per block that holds some of them."""
        import dask

        idx = np.asarray(idx, dtype=np.int64)
        edges = np.concatenate([[0], np.cumsum(self.matrix.chunks[0])])
        blocks = self.matrix.to_delayed()[:, 0]
        parts = []
        for i, block in enumerate(blocks):
            lo, hi = np.searchsorted(idx, edges[i : i + 2])
            if hi > lo:
                parts.append(dask.delayed(_take)(block, idx[lo:hi] - edges[i]))
        X = dask.compute(*parts)
        X = sparse.vstack(X).tocsr() if sparse.issparse(X[0]) else np.concatenate(X)
        check_finite_nonnegative(X)
        obs = self.obs.iloc[idx] if self.obs is not None else None
        return Expr(X=X, genes=self.genes, cells=self.cells[idx], obs=obs)

    def blocks(self, chunk_size: int) -> list:
        """Delayed row blocks, one per ``self.bounds(chunk_size)``."""
        return list(self.matrix.rechunk({0: chunk_size}).to_delayed()[:, 0])


def _take(block, rows):
    return _as_matrix(block)[rows]


Source.dask_source = DaskSource  # Source(...) of Dask input gives a DaskSource


# -- the first pass ---------------------------------------------------------------------------------
@dataclass
class Plan:
    """What every chunk's task needs besides its rows (scattered once)."""

    pre: object  # schash._preprocess.Preprocessor
    genes: pd.Index
    kind: str
    mean: np.ndarray
    std: np.ndarray
    present: np.ndarray
    n_genes_matched: int
    chunk_size: int
    gene_mapping: dict | None = None  # how the query's genes were matched to the model's


def plan(pre, src: DaskSource, *, batch_key=None, groups=None, kind=None, species=None, chunk_size: int = 8192,
         min_gene_overlap: float = 0.3, progress: bool = False) -> tuple[Plan, np.ndarray, np.ndarray]:
    """The first pass of :class:`schash._encode.ScaledPass` for Dask input: the plan and each cell's group."""
    f = input_facts(pre, src, batch_key=batch_key, groups=groups, kind=kind, species=species,
                    chunk_size=chunk_size, min_gene_overlap=min_gene_overlap, check_sample=True)
    genes, mapping, kind, groups, n_groups, chunk_size = (f.genes, f.gene_mapping, f.kind, f.groups, f.n_groups,
                                                          f.chunk_size)
    # genes matched (and a short overlap refused or reported) as the one-machine pass does on its first chunk
    first = src.chunk(0, min(src.n, 2))
    first.genes = genes
    _, present, _ = pre.features(first, kind=kind, min_overlap=min_gene_overlap, what="query", report=True)
    G = len(pre.genes)
    s1, s2 = np.zeros((n_groups, G)), np.zeros((n_groups, G))
    p = Plan(pre, genes, kind, s1, s2, present, int(present.sum()), chunk_size, mapping)
    if pre.scale == "batch":  # the per-group statistics of this query: a Dask reduction over the chunks
        import dask

        shared = _share([p])
        sums = [dask.delayed(_block_sums)(*shared, x, groups[a:b], n_groups)
                for x, (a, b) in zip(src.blocks(chunk_size), src.bounds(chunk_size), strict=True)]
        s1, s2 = _compute(dask.delayed(_in_order_sum)(s1, s2, *sums))
    p.mean, p.std = pre.stats_from_sums(s1, s2, np.bincount(groups, minlength=n_groups))
    return p, groups


def _block_sums(p: Plan, X, groups, n_groups):
    return column_sums(_features(p, X), groups, n_groups)


def _in_order_sum(s1, s2, *parts):
    s1, s2 = s1.copy(), s2.copy()
    for c1, c2 in parts:  # chunk after chunk, as ScaledPass adds them: the same float64 sums
        s1 += c1
        s2 += c2
    return s1, s2


def _features(p: Plan, X):
    X = _as_matrix(X)
    check_finite_nonnegative(X)
    return chunk_features(p.pre, Expr(X=X, genes=p.genes, cells=pd.RangeIndex(X.shape[0])), p.kind)


# -- chunk tasks -------------------------------------------------------------------------------------
def _encode_block(encoder, p: Plan, X, groups, keep_projected: bool):
    F = _features(p, X)
    codes, coords, typ, proto, alignment, clarity = encoder.block(Scaled(F, groups, p.mean, p.std, p.present,
                                                                         p.pre.clip))
    return codes, coords if keep_projected else None, typ, proto, alignment, clarity, np.diff(F.indptr) == 0


def _call_block(model, p: Plan, X, groups, cells, method, k, novelty_alpha=None):
    encoder = model.encoder_for(method)
    codes, _, typ, proto, alignment, clarity, empty = _encode_block(encoder, p, X, groups, False)
    return model.call(Encoded(cells, codes, typ, empty, p.n_genes_matched, p.kind, gene_mapping=p.gene_mapping,
                              prototype=proto, contested=encoder.rare is not None and proto is not None,
                              alignment=alignment, clarity=clarity),
                      method=method, k=k, novelty_alpha=novelty_alpha)


def run(encoder, src: DaskSource, *, keep_projected: bool = False, progress: bool = False, **kwargs) -> Encoded:
    """:meth:`schash._encode.Encoder.run` for Dask input: every chunk encoded by a Dask task."""
    p, groups = plan(encoder.pre, src, progress=progress, **kwargs)
    bounds = src.bounds(p.chunk_size)
    tasks = _tasks(_encode_block, [encoder, p], src, p.chunk_size,
                   [(groups[a:b], keep_projected) for a, b in bounds])
    parts, empty = [], np.zeros(src.n, dtype=bool)
    for (a, b), (*part, emp) in zip(bounds, _in_order(tasks, progress, "schash encode"), strict=True):
        parts.append(tuple(part))
        empty[a:b] = emp
    return assemble(src.cells, parts, empty, p.n_genes_matched, p.kind, keep_projected, p.gene_mapping,
                    contested=encoder.rare is not None)


def tables(model, src: DaskSource, *, method="auto", k: int = 15, batch_key=None, species=None,
           chunk_size: int = 8192, min_gene_overlap: float = 0.3, progress: bool = False,
           novelty_alpha: float | None = None):
    """``(plan, iterator)``: the per-cell table of :meth:`SchashModel.call` for each chunk, in order,
    computed on the workers; at most a window of chunks is held at a time."""
    _args.call(len(model.ref_labels), method=method, k=k, chunk_size=chunk_size, novelty_alpha=novelty_alpha)
    progress = _args.progress(progress)
    p, groups = plan(model.pre, src, batch_key=batch_key, species=species, chunk_size=chunk_size,
                     min_gene_overlap=min_gene_overlap, progress=progress)
    tasks = _tasks(_call_block, [model, p], src, p.chunk_size,
                   [(groups[a:b], src.cells[a:b], method, k, novelty_alpha) for a, b in src.bounds(p.chunk_size)])
    return p, _in_order(tasks, progress, "schash annotate")


# -- scheduling ---------------------------------------------------------------------------------------
def _client():
    """The active ``distributed`` client, or ``None`` (Dask's local threads then run the tasks)."""
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:
        return None


def _share(objs: list) -> list:
    """``objs`` sent once to every worker (futures), or as they are without a cluster."""
    client = _client()
    return objs if client is None else client.scatter(objs, broadcast=True, hash=False)


def _tasks(fn, shared: list, src: DaskSource, chunk_size: int, per_block: list) -> list:
    import dask

    shared = _share(shared)
    return [dask.delayed(fn)(shared[0], shared[1], x, *extra)
            for x, extra in zip(src.blocks(chunk_size), per_block, strict=True)]


def _compute(task):
    client = _client()
    if client is None:
        import dask

        return dask.compute(task)[0]
    return client.compute(task).result()


def _in_order(tasks: list, progress: bool, desc: str):
    """Results of ``tasks`` in order, with at most a window of them computed ahead."""
    from tqdm.auto import tqdm

    client = _client()
    with tqdm(total=len(tasks), desc=desc, disable=not progress, unit="chunk") as bar:
        if client is None:
            import dask

            window = 2 * (os.cpu_count() or 1)
            for s in range(0, len(tasks), window):
                for res in dask.compute(*tasks[s : s + window]):
                    bar.update()
                    yield res
            return
        window = max(4, 2 * sum(client.nthreads().values()))
        pending = deque()
        for task in tasks:
            pending.append(client.compute(task))
            if len(pending) >= window:
                bar.update()
                yield pending.popleft().result()
        while pending:
            bar.update()
            yield pending.popleft().result()


@contextmanager
def scheduler(spec: str | None):
    """A ``distributed`` client for ``--scheduler``: ``local`` or ``local:N`` starts a cluster of N
    one-thread worker processes on this machine (N: the number of cores), anything else is the
    address of a running scheduler.  ``None``: no client (Dask's local threads, for ``.zarr`` input)."""
    if spec is None:
        yield None
        return
    require("--scheduler", "distributed")
    import logging

    from distributed import Client, LocalCluster

    cluster = None
    if spec == "local" or spec.startswith("local:"):
        n = spec[6:] or str(os.cpu_count() or 1)
        if not n.isdigit() or int(n) < 1:
            raise InputError(f"--scheduler local:N needs a whole number of workers N >= 1, got {spec!r}")
        cluster = LocalCluster(n_workers=int(n), threads_per_worker=1, processes=True, dashboard_address=":0",
                               silence_logs=logging.ERROR)
        client = Client(cluster)
    else:
        try:
            client = Client(spec, timeout="30s")
        except (OSError, TimeoutError, ValueError) as err:
            raise OSError(f"could not reach the Dask scheduler at {spec!r} ({err})") from None
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
