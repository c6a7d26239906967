"""Shared fixtures: small generated count data and scanpy's bundled real PBMC data."""

from __future__ import annotations

import contextlib
import json
import os
import struct

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

# the environment as the test session began: embedding R (the rpy2 tests) adds R's library folders
# to LD_LIBRARY_PATH, which processes started later (Dask workers) must not inherit
_START_ENV = {k: os.environ.get(k) for k in ("LD_LIBRARY_PATH", "R_HOME")}


def _set_environment(values: dict) -> None:
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@contextlib.contextmanager
def environment_as_at_start():
    """Start child processes with the environment variables the session began with."""
    now = {k: os.environ.get(k) for k in _START_ENV}
    try:
        _set_environment(_START_ENV)
        yield
    finally:
        _set_environment(now)


def split_model_file(raw: bytes):
    """A saved model's bytes as (schash metadata dict, tensors dict)."""
    from safetensors.numpy import load as st_load

    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    return json.loads(header["__metadata__"]["schash"]), st_load(raw)


def join_model_file(meta, tensors) -> bytes:
    """Bytes of a model file from its metadata (a dict, or JSON text as it is) and tensors."""
    from safetensors.numpy import save as st_save

    return st_save(tensors, metadata={"schash": meta if isinstance(meta, str) else json.dumps(meta)})


def edited_model_file(raw: bytes, edit) -> bytes:
    """A saved model's bytes after ``edit(meta, tensors)`` changed its metadata or tensors in place."""
    meta, tensors = split_model_file(raw)
    edit(meta, tensors)
    return join_model_file(meta, tensors)


def make_counts(n_cells=600, n_genes=300, n_types=4, n_batches=2, seed=0, markers=15, batch_shift=0.5):
    """Negative-binomial counts with type-specific marker genes and a multiplicative batch effect."""
    rng = np.random.default_rng(seed)
    types = rng.integers(0, n_types, n_cells)
    batches = rng.integers(0, n_batches, n_cells)
    base = rng.gamma(1.0, 0.5, n_genes)
    mu = np.tile(base, (n_cells, 1))
    for t in range(n_types):
        genes = np.arange(t * markers, (t + 1) * markers) % n_genes
        mu[np.ix_(types == t, genes)] *= 8.0
    batch_effect = np.exp(rng.normal(0, batch_shift, (n_batches, n_genes)))
    mu *= batch_effect[batches]
    mu *= rng.lognormal(0, 0.3, (n_cells, 1))  # library size
    counts = rng.negative_binomial(2, 2 / (2 + mu)).astype(np.float32)
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical([f"type_{t}" for t in types]),
         "batch": pd.Categorical([f"b{b}" for b in batches])},
        index=[f"c{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"g{i}" for i in range(n_genes)])
    return ad.AnnData(X=sparse.csr_matrix(counts), obs=obs, var=var)


@pytest.fixture(scope="session")
def synth():
    return make_counts()


@pytest.fixture(scope="session")
def synth_model(synth):
    import schash

    return schash.train(synth, cell_type_key="cell_type", batch_key="batch", max_epochs=15, progress=False)


@pytest.fixture(scope="session")
def pbmc68k():
    """scanpy's bundled pbmc68k_reduced: 700 real PBMCs, log-normalised values of 765 genes in .raw."""
    sc = pytest.importorskip("scanpy")
    full = sc.datasets.pbmc68k_reduced()
    adata = full.raw.to_adata()
    adata.obs = full.obs.copy()
    return adata
