#!/usr/bin/env python
"""Accuracy under a gene-wise batch shift of the query: schash beside CellTypist and kNN-PCA.

    python bench/gene_shift.py ../shared/data [--out bench/results/gene_shift.md] [--sd 0 0.5 1 1.5]

A batch effect that no cell-level noise imitates: every query gene's expression is multiplied by
one factor exp(N(0, sd)), the same for every query cell (counts scaled; log-normalised values
through expm1/log1p).  Reference scaling standardises the query with the reference's statistics,
so such a shift reaches the network unchanged; per-dataset scaling (`scale="batch"`) would remove
most of it but makes each call depend on the rest of the query.  Every classification task of
bench/accuracy.py (leave-one-batch-out, else a stratified 50/50 split; seed 0) is annotated at
each sd with the same shift draw (seed 7); macro F1 over the query's types present in the reference.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import (  # noqa: E402
    is_counts,
    log_normalised,
    read_dataset,
    run_celltypist,
    run_knn_pca,
    scores,
    splits,
    train_schash,
)

VARIANTS = {"schash": {}, "schash-batchscale": {"scale": "batch"}}


def shifted(adata, sd: float, seed: int = 7):
    """``adata`` with each gene scaled by one factor exp(N(0, sd)) for all cells (a copy)."""
    out = adata.copy()
    if sd == 0:
        return out
    factor = np.exp(np.random.default_rng(seed).normal(0.0, sd, adata.n_vars)).astype(np.float32)
    X = sparse.csr_matrix(adata.X, dtype=np.float32, copy=True)
    if is_counts(adata):
        X.data *= factor[X.indices]
    else:
        X.data = np.log1p(np.expm1(X.data) * factor[X.indices])
    out.X = X
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", type=Path)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "gene_shift.md")
    p.add_argument("--sd", type=float, nargs="+", default=[0.0, 0.5, 1.0, 1.5])
    a = p.parse_args(argv)
    files = sorted(a.data.glob("*.h5ad"))
    if not files:
        raise SystemExit(f"no .h5ad files in {a.data} (the shared datasets folder)")
    logging.getLogger("schash").setLevel(logging.ERROR)
    t0, rows, warn_log = time.perf_counter(), [], Counter()
    for f in files:
        adata = read_dataset(f)
        y = adata.obs["cell_type"].to_numpy()
        for fold, ref_idx, q_idx in splits(adata):
            ref = adata[ref_idx].copy()
            scored = np.isin(y[q_idx], np.unique(y[ref_idx]))
            models = {v: train_schash(ref, kw, warn_log)[0] for v, kw in VARIANTS.items()}
            ref_log = log_normalised(ref)
            for sd in a.sd:
                qry = shifted(adata[q_idx], sd)
                labels = {v: m.predict(qry)["label"].astype(str).to_numpy() for v, m in models.items()}
                labels["celltypist"] = run_celltypist(ref, qry)[0]
                labels["knn-pca"] = run_knn_pca(ref_log, log_normalised(qry))[0]
                for method, lab in labels.items():
                    rows.append({"dataset": f.stem, "fold": fold, "sd": sd, "method": method,
                                 **scores(y[q_idx][scored], lab[scored])})
                print(f.stem, fold, sd, {r["method"]: round(r["macro_f1"], 3) for r in rows[-len(labels):]},
                      flush=True)
    df = pd.DataFrame(rows)
    mean = df.pivot_table(index="method", columns="sd", values="macro_f1", aggfunc="mean")
    drop = mean.sub(mean[a.sd[0]], axis=0)
    per_task = df.pivot_table(index=["dataset", "fold", "method"], columns="sd", values="macro_f1")
    sds = " ".join(f"{s:g}" for s in a.sd)
    lines = ["# Accuracy under a gene-wise batch shift of the query", "",
             f"- date: {time.strftime('%Y-%m-%dT%H:%M:%S')}, {os.cpu_count()} cores, wall time "
             f"{time.perf_counter() - t0:.0f} s",
             f"- command: `python bench/gene_shift.py {a.data} --sd {sds}`", "",
             __doc__.split("\n\n", 2)[2].strip(), "",
             f"## Mean macro F1 over {df.groupby(['dataset', 'fold']).ngroups} tasks, by sd", "",
             "| method | " + " | ".join(f"sd {s:g}" for s in a.sd) + " | " +
             " | ".join(f"change at sd {s:g}" for s in a.sd[1:]) + " |",
             "|---|" + "---|" * (2 * len(a.sd) - 1)]
    for method in mean.index:
        lines.append(f"| {method} | " + " | ".join(f"{mean.loc[method, s]:.3f}" for s in a.sd) + " | " +
                     " | ".join(f"{drop.loc[method, s]:+.3f}" for s in a.sd[1:]) + " |")
    lines += ["", "## Macro F1 per task", "",
              "| dataset | fold | method | " + " | ".join(f"sd {s:g}" for s in a.sd) + " |",
              "|---|---|---|" + "---|" * len(a.sd)]
    for (ds, fold, method), r in per_task.iterrows():
        lines.append(f"| {ds} | {fold} | {method} | " + " | ".join(f"{r[s]:.3f}" for s in a.sd) + " |")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
