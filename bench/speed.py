#!/usr/bin/env python
"""Speed and memory benchmark: schash beside CellTypist, SingleR and FAISS, at several sizes, in one run.

    python bench/speed.py [--out bench/results] [--work /tmp/schash-speed] [--refs 10000 100000 1000000]
                          [--queries 10000 100000] [--max-per-type 5000] [--quick]

Synthetic references and queries (``bench/synth.py``: 2,000 genes, 20 types, 4 batches;
the query is a new draw with its own batch effects) are streamed to disk first.  Every
measured step runs in its own Python process, so its peak resident memory is its own.

Steps (wall seconds and peak memory of each):

* ``schash train``   ``schash.train(adata, max_cells_per_type=...)`` on the reference read into
  memory before the clock starts (raw counts: schash normalises them inside the clock), then
  every reference cell encoded into the database; saving the model file is not timed.  Trained
  ``--train-runs`` times (seeds 0, 1, 2: early stopping makes the number of epochs vary with the
  seed), the median reported; CellTypist's training is repeated as often.
  CellTypist's ``celltypist train`` is timed the same way, on its training cells in memory
  (already log-normalised), without writing its model.  (``bench/big_database.py`` times the
  command line on a file instead);
* ``schash annotate`` nearest-anchor annotation of an in-memory, log-normalised query
  (from normalised expression to labels: ``model.predict``), beside
* ``celltypist annotate`` on the same AnnData (model trained on the same subsample);
* ``schash annotate (CLI, streamed)`` the command line on the query file, ``--csv`` only:
  reading, normalising and encoding in chunks;
* ``knn search``: the k=15 nearest reference codes of every query cell, exact, by
  schash's search as annotate runs it (distinct codes, then FAISS's binary index over what is
  left, since the bench extra installs faiss), by schash's own search alone (``SCHASH_FAISS=0``:
  what runs without faiss) and by FAISS's ``IndexBinaryFlat`` over every cell (same codes, same k;
  the distances are checked to agree; the median of three searches, FAISS's index built each time);
* ``singler classify`` (R, when installed) at the smallest size.

Writes ``OUT/speed.md``, ``OUT/speed.csv`` and ``OUT/speed_scaling.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable


def _peak_gb() -> float:
    """Peak resident memory of this process (VmHWM; unlike ru_maxrss it is not inherited from the parent)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _load_lognorm(path):
    import anndata as ad
    import scanpy as sc

    a = ad.read_h5ad(path)
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    return a


# ---- steps, each run as `python speed.py _step NAME ARGS...` in a fresh process ----------------
def step_schash_train(ref, model_path, max_per_type, seed=0):
    import anndata as ad

    import schash

    a = ad.read_h5ad(ref)  # in memory before the clock starts, as in the CellTypist step (raw counts here)
    t = time.time()
    m = schash.train(a, cell_type_key="cell_type", batch_key="batch", max_cells_per_type=int(max_per_type) or None,
                     progress=False, seed=int(seed))
    sec = time.time() - t
    m.save(model_path, overwrite=True)  # after the clock, as CellTypist's model.write
    return {"seconds": sec, "n_training_cells": m.params["n_training_cells"],
            "n_reference_cells": m.params["n_reference_cells"], "epochs": len(m.history["epoch"])}


def step_schash_annotate(model_path, query):
    import numpy as np

    import schash

    m = schash.load(model_path)
    q = _load_lognorm(query)
    t = time.time()
    df = m.predict(q)
    sec = time.time() - t
    acc = float(np.mean(df["label"].astype(str).to_numpy() == q.obs["cell_type"].astype(str).to_numpy()))
    return {"seconds": sec, "accuracy": acc}


def step_schash_cli(model_path, query, out_csv):
    from schash._cli import main

    t = time.time()
    rc = main(["annotate", model_path, query, "--csv", out_csv, "--no-progress", "--overwrite"])
    return {"seconds": time.time() - t, "rc": rc}


def step_celltypist_train(ref, model_path, max_per_type):
    import anndata as ad
    import celltypist

    import schash._train as api

    backed = ad.read_h5ad(ref, backed="r")
    idx = api._training_cells(backed.obs["cell_type"].astype(str).to_numpy(), int(max_per_type) or None, 0)
    backed.file.close()
    import scanpy as sc

    a = ad.read_h5ad(ref, backed="r")[idx].to_memory()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    t = time.time()
    big = a.n_obs > 50000
    model = celltypist.train(a, labels="cell_type", check_expression=False, n_jobs=2,
                             use_SGD=big, mini_batch=big, feature_selection=False)
    sec = time.time() - t
    model.write(model_path)
    return {"seconds": sec, "n_training_cells": int(a.n_obs)}


def step_celltypist_annotate(model_path, query):
    import celltypist
    import numpy as np

    q = _load_lognorm(query)
    t = time.time()
    pred = celltypist.annotate(q, model=model_path, majority_voting=False)
    sec = time.time() - t
    lab = pred.predicted_labels["predicted_labels"].astype(str).to_numpy()
    return {"seconds": sec, "accuracy": float(np.mean(lab == q.obs["cell_type"].astype(str).to_numpy()))}


# schash's search as annotate runs it (FAISS's index inside where faiss is installed, as here),
# "schash-own": schash's own search alone (SCHASH_FAISS=0: what runs without faiss), and FAISS's flat scan
KNN_METHODS = ("schash", "schash-own", "faiss")


def step_knn(model_path, query, k, which):
    import numpy as np

    if which == "schash-own":
        os.environ["SCHASH_FAISS"] = "0"
    import schash
    from schash import _hamming

    m = schash.load(model_path)
    codes = m.encode(_load_lognorm(query))
    ref = m.ref_codes
    if which == "faiss":
        import faiss

        faiss.omp_set_num_threads(os.cpu_count())
    times = []
    for _ in range(3):  # the median of three: single searches of ~20 ms vary by 4x with the machine's state
        t = time.time()
        if which.startswith("schash"):
            _, d = _hamming.knn_indices(codes, ref, int(k))
        else:
            index = faiss.IndexBinaryFlat(ref.shape[1] * 8)
            index.add(ref)
            d, _ = index.search(codes, int(k))
        times.append(time.time() - t)
    sec = float(np.median(times))
    np.save(os.environ["SCHASH_KNN_OUT"], np.sort(np.asarray(d, dtype=np.int64), axis=1))
    return {"seconds": sec, "distinct_query_codes": int(len(np.unique(codes, axis=0))),
            "distinct_reference_codes": int(len(np.unique(ref, axis=0)))}


def step_singler(ref, query, workdir):
    import numpy as np
    import scipy.io

    os.makedirs(workdir, exist_ok=True)
    r, q = _load_lognorm(ref), _load_lognorm(query)
    scipy.io.mmwrite(f"{workdir}/ref.mtx", r.X.T.tocsc())
    scipy.io.mmwrite(f"{workdir}/query.mtx", q.X.T.tocsc())
    Path(f"{workdir}/genes.txt").write_text("\n".join(r.var_names) + "\n")
    Path(f"{workdir}/ref_labels.txt").write_text("\n".join(r.obs["cell_type"].astype(str)) + "\n")
    subprocess.run(["Rscript", str(HERE / "r_methods.R"), workdir, "singler"], check=True, capture_output=True)
    import pandas as pd

    tm = pd.read_csv(f"{workdir}/singler_time.csv")
    lab = pd.read_csv(f"{workdir}/singler.csv")["label"].astype(str).to_numpy()
    return {"seconds": float(tm["predict_s"][0]), "train_seconds": float(tm["fit_s"][0]),
            "accuracy": float(np.mean(lab == q.obs["cell_type"].astype(str).to_numpy()))}


STEPS = {k[5:]: v for k, v in globals().items() if k.startswith("step_")}


def run_step(name, *args, timeout=3000, env=None):
    """Run one step in a fresh process; returns its JSON result plus peak memory (GB), or an error."""
    t = time.time()
    try:
        p = subprocess.run([PY, __file__, "_step", name, *map(str, args)], capture_output=True, text=True,
                           timeout=timeout, env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout}s"}
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1][:200], "wall": time.time() - t}
    return json.loads(lines[-1])


def median_run(runs: list[dict], what: str) -> dict:
    """One row from repeated training runs: the median seconds, the largest peak memory, and every
    run's seconds (and epochs) in the note."""
    ok = [r for r in runs if "seconds" in r]
    if not ok:
        return runs[0]
    row = dict(ok[0], seconds=statistics.median(r["seconds"] for r in ok),
               peak_gb=max(r.get("peak_gb", float("nan")) for r in ok))
    if len(ok) > 1:
        shown = " / ".join(f"{r['seconds']:.2f}" for r in ok)
        epochs = " / ".join(str(r["epochs"]) for r in ok if "epochs" in r)
        row["note"] = f"median of {len(ok)} {what} ({shown} s" + (f"; {epochs} epochs" if epochs else "") + ")"
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description="schash speed benchmark")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--work", default="/tmp/schash-speed")
    ap.add_argument("--refs", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--queries", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--max-per-type", type=int, default=5000)
    ap.add_argument("--celltypist-max-ref", type=int, default=100_000,
                    help="train CellTypist only up to this reference size (its training is the slow part)")
    ap.add_argument("--train-runs", type=int, default=3,
                    help="train each model this many times (schash with seeds 0, 1, ...; its early stopping makes "
                         "the number of epochs vary with the seed) and report the median time")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    a = ap.parse_args(argv)
    if a.quick:
        a.refs, a.queries, a.max_per_type = [3000], [2000], 500
    work, out = Path(a.work), Path(a.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(HERE))
    from synth import write_synthetic

    files = {}
    for n in a.refs:
        files[("ref", n)] = work / f"ref_{n}.h5ad"
        if not files[("ref", n)].exists():
            write_synthetic(files[("ref", n)], n, data_seed=1)
    for n in a.queries:
        files[("query", n)] = work / f"query_{n}.h5ad"
        if not files[("query", n)].exists():
            write_synthetic(files[("query", n)], n, data_seed=2)
    rows = []

    def record(step, method, n_ref, n_query, res):
        row = {"step": step, "method": method, "n_ref": n_ref, "n_query": n_query, **res}
        rows.append(row)
        print(json.dumps(row), flush=True)
        with open(out / "speed.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")

    (out / "speed.jsonl").unlink(missing_ok=True)
    for n in a.refs:
        ref = files[("ref", n)]
        model = work / f"schash_{n}.schash"
        # seed 0's model is the one annotated below; the other seeds' files are only timed
        record("train", "schash", n, 0, median_run(
            [run_step("schash_train", ref, model if s == 0 else work / f"schash_{n}_seed{s}.schash", a.max_per_type, s)
             for s in range(a.train_runs)], "seeds"))
        ct_model = work / f"celltypist_{n}.pkl"
        if n <= a.celltypist_max_ref:
            record("train", "celltypist", n, 0, median_run(
                [run_step("celltypist_train", ref, ct_model, a.max_per_type) for _ in range(a.train_runs)], "runs"))
        for m in a.queries:
            q = files[("query", m)]
            record("annotate", "schash", n, m, run_step("schash_annotate", model, q))
            if n <= a.celltypist_max_ref:
                record("annotate", "celltypist", n, m, run_step("celltypist_annotate", ct_model, q))
            record("annotate (CLI, streamed)", "schash", n, m, run_step("schash_cli", model, q, work / "calls.csv"))
            dists = {}
            for which in KNN_METHODS:
                npy = work / f"knn_{which}.npy"
                npy.unlink(missing_ok=True)
                record("knn search k=15", which, n, m,
                       run_step("knn", model, q, 15, which, env={"SCHASH_KNN_OUT": str(npy)}))
                dists[which] = npy
            import numpy as np

            if all(p.exists() for p in dists.values()):
                for row in rows[-len(KNN_METHODS):]:
                    row["exact_match"] = bool(np.array_equal(np.load(dists[row["method"]]), np.load(dists["faiss"])))
    (out / "speed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))  # with exact_match
    smallest, q0 = min(a.refs), min(a.queries)
    record("annotate", "singler", smallest, q0, run_step("singler", files[("ref", smallest)], files[("query", q0)],
                                                          work / "singler"))
    write_report(rows, out, a)


def write_report(rows, out, args):
    import pandas as pd

    df = pd.DataFrame(rows)
    df.to_csv(out / "speed.csv", index=False)
    lines = ["# schash speed benchmark", "",
             f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores; synthetic data (bench/synth.py), 2,000 genes, "
             f"20 types, 4 batches; schash and CellTypist train on at most {args.max_per_type} cells per type, "
             "timed on data in memory without writing the model file (schash from raw counts, CellTypist from "
             "log-normalised values; schash also encodes every reference cell into its database).", "",
             "| step | method | reference cells | query cells | seconds | cells/s | peak GB | accuracy | note |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        sec = r.get("seconds")
        n = r["n_query"] or r["n_ref"]
        note = r.get("error", "") or r.get("note", "")
        if "exact_match" in r:
            note = "same distances as FAISS" if r["exact_match"] else "distances differ from FAISS"
        lines.append(
            f"| {r['step']} | {r['method']} | {r['n_ref']:,} | {r['n_query']:,} | "
            f"{'' if sec is None else f'{sec:.3f}' if sec < 0.1 else f'{sec:.2f}'} | {'' if sec is None else f'{n / sec:,.0f}'} | "
            f"{r.get('peak_gb', float('nan')):.2f} | {r.get('accuracy', '') if r.get('accuracy') is None else round(r['accuracy'], 3) if 'accuracy' in r else ''} | {note} |")
    lines += ["", "## Ratios (schash time / peer time; below 1 means schash is faster)", "",
              "| step | reference cells | query cells | peer | ratio |", "|---|---:|---:|---|---:|"]
    for (step, nr, nq), g in df.groupby(["step", "n_ref", "n_query"]):
        if "schash" not in set(g["method"]) or "seconds" not in g:
            continue
        for mine in [m for m in g["method"] if m.startswith("schash")]:  # schash's own kNN search too
            s = g.loc[g.method == mine, "seconds"].iloc[0]
            for _, r in g[~g.method.str.startswith("schash")].iterrows():
                if pd.notna(r.get("seconds")) and pd.notna(s):
                    who = "" if mine == "schash" else f" ({mine} / peer)"
                    lines.append(f"| {step}{who} | {nr:,} | {nq:,} | {r['method']} | {s / r['seconds']:.3f} |")
    lines += ["", "Companion runs: a 10,000,000-cell database from the command line in "
              "[big_database.md](big_database.md) (`bench/big_database.py`), exact kNN on the codes of real "
              "datasets against FAISS in [knn_real.md](knn_real.md) (`bench/knn_real.py`), Dask below."]
    old = (out / "speed.md").read_text() if (out / "speed.md").exists() else ""
    dask = old[old.index("## Dask"):] if "## Dask" in old else ""  # bench/dask_scaling.py's section stays
    (out / "speed.md").write_text("\n".join(lines) + "\n" + ("\n" + dask if dask else ""))
    print("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, step in zip(axes, ["train", "knn search k=15"]):
            sub = df[(df.step == step) & df.get("seconds").notna()]
            if step != "train":
                sub = sub[sub.n_query == max(args.queries)]
            for meth, g in sub.groupby("method"):
                ax.plot(g.n_ref, g.seconds, "o-", label=meth)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("reference cells")
            ax.set_ylabel("seconds")
            ax.set_title(step if step == "train" else f"{step}, {max(args.queries):,} queries")
            ax.legend()
        fig.tight_layout()
        fig.savefig(out / "speed_scaling.png", dpi=110)
    except Exception as err:  # the table is the result; the plot is a convenience
        print("plot failed:", err)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_step":
        res = STEPS[sys.argv[2]](*sys.argv[3:])
        res["peak_gb"] = _peak_gb()
        print(json.dumps(res))
    else:
        main()
