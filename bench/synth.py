"""Realistic synthetic single-cell data of any size, streamed to an .h5ad.

Counts are negative binomial (gamma-Poisson) around gene means drawn from a gamma
distribution, with T cell types each raising its own marker genes, a multiplicative
batch effect per gene, and log-normal library sizes.  Cells are generated and written
a chunk at a time into a CSR matrix in AnnData's on-disk format, so two million cells
never sit in memory at once (only obs, a few bytes per cell).

    python bench/synth.py OUT.h5ad --cells 1000000 --genes 2000 --types 20 --batches 4 --seed 0
"""

from __future__ import annotations

import argparse
import time

import h5py
import numpy as np
import pandas as pd
from anndata.io import write_elem


def type_profiles(n_genes: int, n_types: int, n_markers: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Gene means (genes) and per-type fold changes (types × genes); shared by every file of one seed."""
    base = rng.gamma(0.3, 0.5, n_genes).astype(np.float32)  # most genes low: ~88% zeros
    fold = np.ones((n_types, n_genes), dtype=np.float32)
    for t in range(n_types):
        markers = rng.choice(n_genes, n_markers, replace=False)
        fold[t, markers] = rng.uniform(3, 12, n_markers)
        fold[t, rng.choice(n_genes, n_markers // 2, replace=False)] *= 0.2  # and lowers a few
    return base, fold


def write_synthetic(path, n_cells: int, n_genes: int = 2000, n_types: int = 20, n_batches: int = 4, *,
                    seed: int = 0, data_seed: int | None = None, batch_sd: float = 0.3, dispersion: float = 2.0,
                    chunk: int = 20000, type_weights=None) -> None:
    """Write ``n_cells`` cells; ``seed`` fixes genes and types, ``data_seed`` the cells and batch effects."""
    prof_rng = np.random.default_rng(seed)
    base, fold = type_profiles(n_genes, n_types, 40, prof_rng)
    rng = np.random.default_rng(seed if data_seed is None else data_seed + 10_000)
    batch_fx = np.exp(rng.normal(0, batch_sd, (n_batches, n_genes))).astype(np.float32)
    w = np.asarray(type_weights if type_weights is not None else rng.dirichlet(np.full(n_types, 2.0)))
    types = rng.choice(n_types, n_cells, p=w / w.sum())
    batches = rng.integers(0, n_batches, n_cells)
    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"], f.attrs["encoding-version"] = "anndata", "0.1.0"
        X = f.create_group("X")
        X.attrs["encoding-type"], X.attrs["encoding-version"] = "csr_matrix", "0.1.0"
        X.attrs["shape"] = (n_cells, n_genes)
        data = X.create_dataset("data", (0,), maxshape=(None,), dtype="f4", chunks=(1 << 18,))
        indices = X.create_dataset("indices", (0,), maxshape=(None,), dtype="i4", chunks=(1 << 18,))
        indptr = X.create_dataset("indptr", (n_cells + 1,), dtype="i8")
        indptr[0] = 0
        nnz = 0
        for s in range(0, n_cells, chunk):
            e = min(s + chunk, n_cells)
            lib = rng.lognormal(0, 0.35, (e - s, 1)).astype(np.float32)
            mu = base * fold[types[s:e]] * batch_fx[batches[s:e]] * lib
            lam = mu * rng.gamma(dispersion, 1.0 / dispersion, mu.shape).astype(np.float32)
            counts = rng.poisson(lam).astype(np.float32)
            r, c = np.nonzero(counts)
            new = len(r)
            data.resize((nnz + new,))
            indices.resize((nnz + new,))
            data[nnz:] = counts[r, c]
            indices[nnz:] = c
            indptr[s + 1 : e + 1] = nnz + np.cumsum(np.bincount(r, minlength=e - s))
            nnz += new
        obs = pd.DataFrame(
            {"cell_type": pd.Categorical.from_codes(types, [f"type_{t:02d}" for t in range(n_types)]),
             "batch": pd.Categorical.from_codes(batches, [f"batch_{b}" for b in range(n_batches)])},
            index=pd.Index([f"cell_{i}" for i in range(n_cells)]),
        )
        write_elem(f, "obs", obs)
        write_elem(f, "var", pd.DataFrame(index=pd.Index([f"gene_{g:04d}" for g in range(n_genes)])))
        for key in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            write_elem(f, key, {})


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--cells", type=int, default=10000)
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--types", type=int, default=20)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--seed", type=int, default=0, help="fixes genes and cell-type profiles")
    p.add_argument("--data-seed", type=int, default=None, help="fixes the cells (use another for a query)")
    a = p.parse_args(argv)
    t = time.time()
    write_synthetic(a.out, a.cells, a.genes, a.types, a.batches, seed=a.seed, data_seed=a.data_seed)
    print(f"wrote {a.cells} cells × {a.genes} genes to {a.out} in {time.time() - t:.1f} s")


if __name__ == "__main__":
    main()
