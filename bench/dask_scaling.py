#!/usr/bin/env python
"""Dask scaling: a large query stored as ``.zarr`` annotated on 1 and 2 local Dask workers, beside one process.

    python bench/dask_scaling.py [--cells 1000000] [--small 200000] [--no-threads] [--work /tmp/schash-dask]
                                 [--out bench/results]

Data from ``bench/synth.py`` (2,000 genes, 20 types, 4 batches): a reference of 50,000 cells
(the model trains on at most 2,500 per type) and a query of ``--cells`` cells, streamed to
``.h5ad`` and copied to ``.zarr`` a slice at a time.  Every step runs in its own process, so
the peak memory it reports is its own:

* ``one process, in memory``: the query read whole (``read_h5ad``), then ``model.predict``
  (torch on every core; no Dask);
* ``Dask, local threads``: ``schash annotate MODEL q.zarr --parquet OUT`` without a cluster
  (Dask's threads in one process);
* ``Dask, N workers``: a ``LocalCluster(n_workers=N, threads_per_worker=1, processes=True)``
  is started and every worker imports schash (timed apart, as "cluster start"), then ``schash annotate MODEL q.zarr
  --scheduler ADDRESS --parquet OUT``; peak memory of the calling process and of each worker
  (``VmHWM`` read on the workers after the run).  Also at ``--small`` cells with 2 workers, to
  show that a worker's peak follows the chunk size, not the number of cells.

Every Dask run's Parquet table is checked against the in-memory calls (labels, pruned labels,
distances, typicality, confidence: equal, not close).  Writes the "Dask" section of
``OUT/speed.md`` (kept when bench/speed.py rewrites the rest) and ``OUT/dask_scaling.csv``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable
SECTION = "## Dask"


def _peak_gb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2
    return float("nan")


def h5ad_to_zarr(src, dst, step: int = 1 << 24) -> None:
    """Copy an .h5ad with a CSR ``X`` to a .zarr AnnData, ``step`` stored values at a time."""
    import anndata as ad
    import h5py
    import zarr

    with h5py.File(src, "r") as f:
        X = f["X"]
        nnz = X["data"].shape[0]
        g = zarr.open_group(dst, mode="w", zarr_format=2)
        g.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        gx = g.create_group("X")
        gx.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                         "shape": [int(s) for s in X.attrs["shape"]]})
        gx.create_array("indptr", data=X["indptr"][:], chunks=(1 << 20,))
        for name, dtype in (("data", "float32"), ("indices", "int32")):
            out = gx.create_array(name, shape=(nnz,), dtype=dtype, chunks=(1 << 20,))
            for s in range(0, nnz, step):
                out[s : s + step] = X[name][s : s + step]
        for key in ("obs", "var"):
            ad.io.write_elem(g, key, ad.io.read_elem(f[key]))
        for key in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            ad.io.write_elem(g, key, {})


def _warm() -> None:
    import schash  # noqa: F401


# ---- steps, each run as `python dask_scaling.py _step NAME ARGS...` in a fresh process ------------
def step_train(ref, model_path):
    import schash

    t = time.time()
    m = schash.train(ref, cell_type_key="cell_type", batch_key="batch", max_cells_per_type=2500, progress=False)
    m.save(model_path, overwrite=True)
    return {"seconds": time.time() - t}


def step_memory(model_path, h5ad, out):
    import anndata as ad

    import schash

    m = schash.load(model_path)
    t = time.time()
    q = ad.read_h5ad(h5ad)
    load = time.time() - t
    t = time.time()
    df = m.predict(q, progress=False)
    sec = time.time() - t
    df.to_parquet(out)
    return {"seconds": sec, "read_seconds": load}


def step_threads(model_path, zarr_path, out):
    from schash._cli import main

    t = time.time()
    rc = main(["annotate", model_path, zarr_path, "--parquet", out, "--no-progress", "--overwrite"])
    return {"seconds": time.time() - t, "rc": rc}


def step_cluster(model_path, zarr_path, out, n_workers):
    import logging

    from distributed import Client, LocalCluster

    from schash._cli import main

    t = time.time()
    cluster = LocalCluster(n_workers=int(n_workers), threads_per_worker=1, processes=True, dashboard_address=":0",
                           silence_logs=logging.ERROR)
    client = Client(cluster)
    client.run(_warm)  # each worker imports schash (torch) once: part of starting the cluster, not of the run
    startup = time.time() - t
    t = time.time()
    rc = main(["annotate", model_path, zarr_path, "--scheduler", cluster.scheduler_address, "--parquet", out,
               "--no-progress", "--overwrite"])
    sec = time.time() - t
    peaks = sorted(client.run(_peak_gb).values())
    client.close()
    cluster.close()
    return {"seconds": sec, "startup_seconds": startup, "rc": rc, "worker_peak_gb": peaks}


STEPS = {k[5:]: v for k, v in globals().items() if k.startswith("step_")}


def run_step(name, *args, timeout=1800):
    p = subprocess.run([PY, __file__, "_step", name, *map(str, args)], capture_output=True, text=True,
                       timeout=timeout)
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return json.loads(lines[-1])


def same_calls(a, b) -> bool:
    import pandas as pd

    x, y = pd.read_parquet(a), pd.read_parquet(b).rename(columns=lambda c: c.removeprefix("schash_"))
    cols = ["label", "pruned_label", "distance", "delta_next", "typicality", "confidence"]
    return bool(x.index.equals(y.index) and all(
        (x[c].astype(str) == y[c].astype(str)).all() if x[c].dtype == "category" else x[c].equals(y[c])
        for c in cols))


def main(argv=None):
    ap = argparse.ArgumentParser(description="schash on Dask: scaling with local workers")
    ap.add_argument("--cells", type=int, default=1_000_000)
    ap.add_argument("--small", type=int, default=200_000, help="a smaller query, 2 workers only (0: none)")
    ap.add_argument("--no-threads", action="store_true", help="leave out the run on Dask's local threads")
    ap.add_argument("--work", default="/tmp/schash-dask")
    ap.add_argument("--out", default=str(HERE / "results"))
    a = ap.parse_args(argv)
    work, out = Path(a.work), Path(a.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(HERE))
    from synth import write_synthetic

    ref, model = work / "ref_50000.h5ad", work / "model.schash"
    if not ref.exists():
        write_synthetic(ref, 50_000, data_seed=1)
    rows = []

    def record(n, setup, res):
        row = {"n_query": n, "setup": setup, **res}
        rows.append(row)
        print(json.dumps(row), flush=True)

    if not model.exists():
        print(json.dumps({"train": run_step("train", ref, model)}), flush=True)
    for n in [a.cells] + ([a.small] if a.small else []):
        h5ad, zarr_path = work / f"query_{n}.h5ad", work / f"query_{n}.zarr"
        if not h5ad.exists():
            t = time.time()
            write_synthetic(h5ad, n, data_seed=2)
            print(f"wrote {h5ad} in {time.time() - t:.0f} s", flush=True)
        if not zarr_path.exists():
            h5ad_to_zarr(h5ad, zarr_path)
        mem = work / f"memory_{n}.parquet"
        if n == a.cells:
            record(n, "one process, in memory (no Dask)", run_step("memory", model, h5ad, mem))
            if not a.no_threads:
                record(n, "Dask, local threads (no cluster)", run_step("threads", model, zarr_path, work / "t.parquet"))
                rows[-1]["identical"] = same_calls(mem, work / "t.parquet")
        for w in ([1, 2] if n == a.cells else [2]):
            calls = work / f"workers{w}_{n}.parquet"
            record(n, f"Dask, {w} local worker{'s' if w > 1 else ''}", run_step("cluster", model, zarr_path, calls, w))
            if n == a.cells:
                rows[-1]["identical"] = same_calls(mem, calls)
    write_report(rows, out, a)


def write_report(rows, out, args):
    import pandas as pd

    pd.DataFrame(rows).to_csv(out / "dask_scaling.csv", index=False)
    lines = [SECTION, "",
             f"`bench/dask_scaling.py`, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores (shared with other jobs), "
             "one machine: a synthetic query (bench/synth.py, 2,000 genes) stored as `.zarr`, annotated by "
             "`schash annotate MODEL q.zarr --parquet OUT` (chunks of 8,192 cells; written a chunk at a time) on "
             "local Dask workers of one thread each, beside `model.predict` on the query read whole into one "
             "process.  Seconds exclude starting the cluster (its workers importing schash and torch included); "
             "peak GB is the resident peak of the calling "
             "process and of each worker process.  *identical*: the calls (labels, pruned labels, distances, "
             "typicality, confidence) equal the in-memory ones exactly.", "",
             "| query cells | setup | seconds | cells/s | calling process peak GB | worker peak GB | "
             "cluster start s | identical |",
             "|---:|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        sec = r.get("seconds")
        workers = ", ".join(f"{g:.2f}" for g in r.get("worker_peak_gb", [])) or "–"
        note = r.get("error", "")
        ident = {True: "yes", False: "**no**"}.get(r.get("identical"), "–")
        secs, rate = ("", "") if sec is None else (f"{sec:.1f}", f"{r['n_query'] / sec:,.0f}")
        start = f"{r['startup_seconds']:.1f}" if "startup_seconds" in r else "–"
        lines.append(f"| {r['n_query']:,} | {r['setup']} | {secs} | {rate} | {r.get('peak_gb', float('nan')):.2f} | "
                     f"{workers} | {start} | {ident} {note} |")
    md = out / "speed.md"
    text = md.read_text() if md.exists() else "# schash speed benchmark\n"
    if SECTION in text:
        text = text[: text.index(SECTION)].rstrip() + "\n"
    md.write_text(text + "\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_step":
        res = STEPS[sys.argv[2]](*sys.argv[3:])
        res["peak_gb"] = _peak_gb()
        print(json.dumps(res))
    else:
        main()
