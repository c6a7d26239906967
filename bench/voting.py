#!/usr/bin/env python
"""Does majority voting over clusters help schash on cross-batch transfer?

Usage
-----
    python bench/voting.py DATA_DIR [--out bench/results] [--datasets NAME ...]

``DATA_DIR`` holds the labelled ``.h5ad`` files described in ``/work/shared/data/README.md``
(nothing is copied). Only datasets with >= 2 batches are used.

Tasks
-----
Leave-one-batch-out, the folds ``bench/accuracy.py`` uses for its unknown-type tasks: the
first batch (alphabetically) and the largest batch as query, the rest as reference.
``schash.train(ref, cell_type_key="cell_type", batch_key="batch", seed=0)``, then
``model.predict(query)``. Query cells of types absent from the reference are predicted and
take part in the clusters and votes but are not scored (as in ``accuracy.py``).

Calls compared (``Unassigned`` counts as wrong everywhere; macro F1 over the query's scored types):

* ``per-cell``: ``pruned_label``, the baseline;
* ``vote codes``: ``majority_vote(pruned_label, over_cluster(codes))``, Leiden on the ±1
  codes at CellTypist's over-clustering resolution (5 below 5k cells);
* ``vote expr r1``: the vote over Leiden clusters of the query's expression at resolution 1
  (log-normalised: ``normalize_total(1e4)`` + ``log1p`` where X is counts, X as shipped
  otherwise; 2000 HVG where there are more genes; PCA 50; 15 neighbours): the clusters a
  user already has;
* ``vote expr over``: the same expression graph at CellTypist's over-clustering resolution
  (CellTypist's own ``majority_voting`` setting);
* ``label``: the unpruned nearest-anchor label per cell, for reference only (voting turns
  ``Unassigned`` cells into named ones; this shows how much of a gain un-pruning alone gives).

Outputs ``OUT/voting.md`` and ``OUT/voting.csv``.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from accuracy import (
    Quiet,
    fmt,
    has_batches,
    log_normalised,
    md_table,
    novelty_folds,
    scores,
    splits,
)

SEED = 0
UNASSIGNED = "Unassigned"
VOTES = ["vote codes", "vote expr r1", "vote expr over"]
CALLS = ["per-cell", *VOTES, "label"]


def expression_clusters(qry_log, resolutions, seed=SEED, n_top_genes=2000):
    """{resolution: Leiden cluster ids} from one PCA + kNN graph of the query's log-normalised expression."""
    import scanpy as sc

    a = qry_log.copy()
    with Quiet():
        if a.n_vars > n_top_genes:
            sc.pp.highly_variable_genes(a, n_top_genes=n_top_genes, flavor="seurat")
            a = a[:, a.var["highly_variable"].to_numpy()].copy()
        sc.pp.pca(a, n_comps=min(50, a.n_obs - 1, a.n_vars - 1), random_state=seed)
        sc.pp.neighbors(a, n_neighbors=15, random_state=seed)
        out = {}
        for r in resolutions:
            sc.tl.leiden(a, resolution=r, random_state=seed, flavor="igraph", n_iterations=2, directed=False,
                         key_added="cl")
            out[r] = a.obs["cl"].astype(str).to_numpy()
    return out


def task(ds, fold, adata, peer, ref_idx, q_idx):
    import schash
    from schash import _hamming
    from schash._voting import default_resolution, majority_vote, over_cluster

    ref, qry = adata[ref_idx].copy(), adata[q_idx].copy()
    y_q = qry.obs["cell_type"].astype(str).to_numpy()
    scored = np.isin(y_q, np.unique(ref.obs["cell_type"].astype(str)))
    base = {"dataset": ds, "fold": fold, "n_ref": len(ref_idx), "n_query": len(q_idx), "n_scored": int(scored.sum())}
    t0 = time.perf_counter()
    with Quiet():
        model = schash.train(ref, cell_type_key="cell_type", batch_key="batch", seed=SEED, progress=False)
        pred = model.predict(qry, progress=False)
        codes = _hamming.unpack(model.encode(qry, progress=False), model.n_bits)
    train_s = time.perf_counter() - t0
    pruned = pred["pruned_label"].astype(str)
    calls, n_clusters, cluster_s = {"per-cell": pruned.to_numpy(), "label": pred["label"].astype(str).to_numpy()}, {}, {}

    t0 = time.perf_counter()
    cl = over_cluster(codes, seed=SEED)
    cluster_s["vote codes"] = time.perf_counter() - t0
    groups = {"vote codes": cl}
    over_res = default_resolution(qry.n_obs)
    t0 = time.perf_counter()
    expr = expression_clusters(peer[q_idx], (1.0, over_res))
    cluster_s["vote expr r1"] = cluster_s["vote expr over"] = (time.perf_counter() - t0) / 2
    groups["vote expr r1"], groups["vote expr over"] = expr[1.0], expr[over_res]
    for name, g in groups.items():
        calls[name] = majority_vote(pruned, g)["majority_label"].astype(str).to_numpy()
        n_clusters[name] = len(set(g))
    n_codes = len(_hamming.distinct(model.encode(qry, progress=False))[2])

    rows = []
    for name in CALLS:
        y = calls[name]
        row = dict(base, call=name, n_clusters=n_clusters.get(name, np.nan), n_distinct_codes=n_codes,
                   unassigned_frac=float((y[scored] == UNASSIGNED).mean()), train_s=train_s,
                   cluster_s=cluster_s.get(name, np.nan), **scores(y_q[scored], y[scored]))
        rows.append(row)
        print(f"  {ds:34s} {fold:22s} {name:15s} macroF1={row['macro_f1']:.3f} acc={row['accuracy']:.3f} "
              f"unassigned={row['unassigned_frac']:.3f} clusters={row['n_clusters']}", flush=True)
    return rows


def write_report(out: Path, rows: pd.DataFrame, meta: dict, skipped: list[str]) -> str:
    lines = ["# Majority voting over clusters: cross-batch transfer", "",
             f"- date: {meta['date']}", f"- command: `{meta['command']}`", f"- machine: {meta['machine']}",
             f"- wall time: {meta['wall_s']:.0f} s", ""]
    lines += [(HERE / "voting.py").read_text().split('"""')[1].split("Tasks\n-----\n")[1].split("Outputs")[0].strip(),
              ""]
    if skipped:
        lines += ["Skipped: " + "; ".join(skipped), ""]
    lines += ["## Per task", "",
              ("Macro F1 / accuracy of each call; `Δ F1`, `Δ acc`: the call minus the per-cell `pruned_label`; "
               "`clusters`: number of clusters voted over; `codes`: distinct hash codes in the query; `Unassigned`: "
               "fraction of scored cells left Unassigned."), ""]
    tab = []
    for (ds, fold), g in rows.groupby(["dataset", "fold"], sort=False):
        by = g.set_index("call")
        base_f1 = by.loc["per-cell", "macro_f1"]
        for c in CALLS:
            r = by.loc[c]
            tab.append({"dataset": ds, "fold": fold, "query cells (scored)": f"{r.n_query} ({r.n_scored})",
                        "call": c, "macro F1": fmt(r.macro_f1), "Δ F1": "" if c == "per-cell" else fmt(
                            r.macro_f1 - base_f1, sign=True), "accuracy": fmt(r.accuracy),
                        "Δ acc": "" if c == "per-cell" else fmt(r.accuracy - by.loc["per-cell", "accuracy"],
                                                                 sign=True),
                        "Unassigned": fmt(r.unassigned_frac),
                        "clusters": "" if pd.isna(r.n_clusters) else int(r.n_clusters),
                        "codes": int(r.n_distinct_codes)})
    lines += [md_table(pd.DataFrame(tab)), ""]

    lines += ["## Summary", "", ("Over tasks: change of macro F1 and accuracy against the per-cell `pruned_label` "
                                 "(helps / hurts: change above +0.005 / below −0.005)."), ""]
    summ, closing = [], []
    for c in [*VOTES, "label"]:
        d = []
        for _, g in rows.groupby(["dataset", "fold"], sort=False):
            by = g.set_index("call")
            d.append((by.loc[c, "macro_f1"] - by.loc["per-cell", "macro_f1"],
                      by.loc[c, "accuracy"] - by.loc["per-cell", "accuracy"]))
        d = np.array(d)
        helps, hurts = int((d[:, 0] > 0.005).sum()), int((d[:, 0] < -0.005).sum())
        summ.append({"call": c, "tasks": len(d), "F1 helps": helps, "F1 hurts": hurts,
                     "mean Δ F1": fmt(d[:, 0].mean(), sign=True), "min Δ F1": fmt(d[:, 0].min(), sign=True),
                     "max Δ F1": fmt(d[:, 0].max(), sign=True), "mean Δ acc": fmt(d[:, 1].mean(), sign=True)})
        if c in VOTES:
            closing.append(f"`{c}` helps on {helps} and hurts on {hurts} of {len(d)} tasks (mean Δ macro F1 "
                           f"{d[:, 0].mean():+.3f}, mean Δ accuracy {d[:, 1].mean():+.3f})")
    lines += [md_table(pd.DataFrame(summ)), "", "Voting against per-cell `pruned_label`: " + "; ".join(closing) + ".",
              ""]
    text = "\n".join(lines)
    (out / "voting.md").write_text(text)
    return text


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--datasets", nargs="+", metavar="NAME", help="only these datasets (file stems)")
    args = ap.parse_args(argv)
    if not args.data_dir.is_dir():
        sys.exit(f"data directory {args.data_dir} not found: pass the folder with the benchmark .h5ad files")
    import anndata as ad

    logging.getLogger("schash").setLevel(logging.WARNING)
    files = sorted(args.data_dir.glob("*.h5ad"))
    if args.datasets:
        files = [f for f in files if f.stem in args.datasets]
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    rows, skipped = [], []
    for f in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adata = ad.read_h5ad(f)
        if not has_batches(adata):
            skipped.append(f"{f.stem} (no batches)")
            continue
        adata.obs["cell_type"] = adata.obs["cell_type"].astype(str)
        adata.obs["batch"] = adata.obs["batch"].astype(str)
        peer = log_normalised(adata)
        print(f"{f.stem}: {adata.n_obs} cells × {adata.n_vars} genes", flush=True)
        for fold, r_idx, q_idx in novelty_folds(splits(adata)):
            rows += task(f.stem, fold, adata, peer, r_idx, q_idx)
        pd.DataFrame(rows).to_csv(args.out / "voting.csv", index=False)
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": "python bench/voting.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": f"{platform.platform()}, {os.cpu_count()} CPUs (nproc), Python {platform.python_version()}",
            "wall_s": time.perf_counter() - t_start}
    print(write_report(args.out, pd.DataFrame(rows), meta, skipped))


if __name__ == "__main__":
    main()
