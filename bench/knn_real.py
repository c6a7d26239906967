#!/usr/bin/env python
"""Exact kNN on the codes of real data: schash's search against FAISS's binary index.

    python bench/knn_real.py ../shared/data [--out bench/results/knn_real.md] [--k 15]

The speed benchmark searches codes of synthetic cells; real references collapse onto other
numbers of distinct codes.  For every shared dataset a default model is trained on all its cells
(seed 0) and its reference database (the codes of those cells) is searched with the codes of the
same cells; then all datasets' codes together (each from its own model: 64-bit codes with real
patterns of collapse) and that pool repeated to 100,000 database cells and queries; last, the regime
where schash's own search loses, synthetic codes that hardly collapse.  Both searches
are exact: the table checks that the k distances of every query agree, and gives the time of each,
the median of three runs on this machine (FAISS with every core, schash as it runs in annotate: its
distinct codes, then FAISS's binary index over what is left, faiss being installed here; "schash own"
is schash's own search alone, ``SCHASH_FAISS=0``, what runs where faiss is not installed).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

import schash
from schash import _hamming


def codes_of(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = ad.read_h5ad(path)
        batch_key = "batch" if "batch" in a.obs and a.obs["batch"].nunique() > 1 else None
        m = schash.train(a, cell_type_key="cell_type", batch_key=batch_key, progress=False, seed=0)
    return m.ref_codes


def search(name: str, ref: np.ndarray, query: np.ndarray, k: int) -> dict:
    import faiss

    faiss.omp_set_num_threads(os.cpu_count())
    t_s, t_o, t_f = [], [], []
    for _ in range(3):  # the median of three: searches of a millisecond vary several-fold between runs
        t = time.perf_counter()
        _, d_s = _hamming.knn_indices(query, ref, k)
        t_s.append(time.perf_counter() - t)
        before = os.environ.get("SCHASH_FAISS")
        os.environ["SCHASH_FAISS"] = "0"  # schash's own search alone, as it runs without faiss
        try:
            t = time.perf_counter()
            _, d_o = _hamming.knn_indices(query, ref, k)
            t_o.append(time.perf_counter() - t)
        finally:
            os.environ.pop("SCHASH_FAISS")
            if before is not None:
                os.environ["SCHASH_FAISS"] = before
        t = time.perf_counter()
        index = faiss.IndexBinaryFlat(ref.shape[1] * 8)
        index.add(ref)
        d_f, _ = index.search(query, k)
        t_f.append(time.perf_counter() - t)
    t_s, t_o, t_f = float(np.median(t_s)), float(np.median(t_o)), float(np.median(t_f))
    same = all(np.array_equal(np.sort(d.astype(np.int64), 1), np.sort(d_f.astype(np.int64), 1)) for d in (d_s, d_o))
    row = {"codes": name, "reference cells": len(ref), "distinct reference codes": len(_hamming.distinct(ref)[0]),
           "queries": len(query), "distinct query codes": len(_hamming.distinct(query)[0]),
           "schash s": t_s, "FAISS s": t_f, "ratio": t_s / t_f, "schash own s": t_o, "own ratio": t_o / t_f,
           "same distances": bool(same)}
    print(row, flush=True)
    return row


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", type=Path)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "knn_real.md")
    p.add_argument("--k", type=int, default=15)
    a = p.parse_args(argv)
    files = sorted(a.data.glob("*.h5ad"))
    if not files:
        raise SystemExit(f"no .h5ad files in {a.data} (the shared datasets folder)")
    rows, pool = [], []
    for f in files:
        codes = codes_of(f)
        pool.append(codes)
        rows.append(search(f.stem, codes, codes, a.k))
    allc = np.concatenate(pool)
    rows.append(search("all datasets", allc, allc, a.k))
    rng = np.random.default_rng(0)
    big = allc[rng.integers(0, len(allc), 100_000)]
    rows.append(search("all datasets, resampled to 100,000", big, big[rng.permutation(len(big))], a.k))
    # the regime where schash's own search loses: codes that hardly collapse (not trained codes:
    # random 64-bit centres with 3% of the bits flipped in every cell, nearly every code distinct)
    centres = rng.integers(0, 256, (20, 8), dtype=np.uint8)

    def scattered(n):
        return centres[rng.integers(0, len(centres), n)] ^ np.packbits(rng.random((n, 64)) < 0.03, axis=1)

    for n_ref in (3_000, 12_000):
        rows.append(search(f"near-unique synthetic codes, {n_ref:,} cells", scattered(n_ref), scattered(8_000), a.k))
    df = pd.DataFrame(rows)
    fmt = {"schash s": "{:.4f}", "FAISS s": "{:.4f}", "ratio": "{:.2f}", "schash own s": "{:.4f}", "own ratio": "{:.2f}"}
    for c, f in fmt.items():
        df[c] = df[c].map(f.format)
    lines = ["# Exact kNN on real codes: schash vs FAISS", "",
             f"- date: {time.strftime('%Y-%m-%dT%H:%M:%S')}, {os.cpu_count()} cores, k = {a.k}",
             f"- command: `python bench/knn_real.py {a.data} --k {a.k}`", "",
             __doc__.split("\n\n", 2)[2].strip(), "",
             "| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in df.itertuples(index=False)]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
