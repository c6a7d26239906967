#!/usr/bin/env python
"""Accuracy benchmark: schash beside CellTypist, kNN-on-PCA, SingleR and Seurat.

Usage
-----
    python bench/accuracy.py DATA_DIR [--out bench/results] [--methods ...] [--quick]

``DATA_DIR`` holds labelled ``.h5ad`` files with ``obs['cell_type']`` and, optionally,
``obs['batch']`` and ``uns['X_kind']`` (``counts`` or a log-normalised kind); see
``/work/shared/data/README.md`` for the set this was written for.  Nothing is copied.

Tasks
-----
* Leave-one-batch-out (each batch in turn is the query, the rest the reference) where
  the data has two or more batches, otherwise a stratified random 50/50 split.
  Query cells of types absent from the reference are predicted but not scored
  (``n_dropped`` / ``dropped_types`` in the CSV).
* Unknown-type detection: on datasets with >= 3 types, on the first fold, each of
  the two largest reference types in turn is removed from the reference; AUROC of
  each method's confidence for separating the query cells of that type (positives,
  expected low confidence) from the known-type query cells.

Methods
-------
``schash`` (defaults: transform=log, scale=batch, nearest anchor), ``schash-knn``
(same model, k-NN vote among reference codes), schash variants ``schash-<transform>-<scale>``
(+ ``-knn``), ``celltypist`` (logistic regression, ``use_SGD=False``), ``knn-pca``
(HVG from the reference, reference-scaled, PCA 50, k=15), ``singler`` and ``seurat``
(through ``Rscript bench/r_methods.R``; skipped with a note when R or the package is missing).

Peers get log-normalised data (``normalize_total(1e4)`` + ``log1p`` where ``X`` is counts,
``X`` as shipped otherwise); schash gets ``X`` as is (it detects counts).  CellTypist,
which insists on log1p of counts per 10k, gets log-normalised data mapped back to a
linear scale (``expm1``, or ``2**x - 1`` where values exceed ln(10^4)), renormalised to 10^4
and log1p-transformed.

Outputs ``OUT/accuracy.md`` (tables) and ``OUT/accuracy.csv`` / ``OUT/novelty.csv`` (raw rows).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import io as spio
from scipy import sparse

HERE = Path(__file__).resolve().parent
R_SCRIPT = HERE / "r_methods.R"
QUICK_DATASETS = ("pancreas_xin_scClassify", "cellbench_3cl_celseq2_dropseq")
SCHASH_VARIANTS = [("log", "batch"), ("log", "reference"), ("rank", "batch"), ("rank", "reference")]
PEERS = ["celltypist", "knn-pca", "singler", "seurat"]
ALL_METHODS = ["schash", "schash-knn", "schash-variants", *PEERS]
SEED = 0


def variant_name(transform, scale, method="anchor"):
    base = "schash" if (transform, scale) == ("log", "batch") else f"schash-{transform}-{'ref' if scale == 'reference' else 'batch'}"
    return base + ("-knn" if method == "knn" else "")


# ----------------------------------------------------------------------------- data


def is_counts(adata) -> bool:
    return str(adata.uns.get("X_kind", "")).lower().startswith("count")


def log_normalised(adata):
    """Peers' input: log1p of counts per 10k where X is counts, else X as shipped (float32 CSR)."""
    import scanpy as sc

    a = adata.copy()
    a.X = sparse.csr_matrix(a.X, dtype=np.float32)
    if is_counts(adata):
        sc.pp.normalize_total(a, target_sum=1e4)
        sc.pp.log1p(a)
    return a


def celltypist_input(adata):
    """log1p of (pseudo)counts per 10k, which CellTypist checks for."""
    import scanpy as sc

    a = adata.copy()
    X = sparse.csr_matrix(a.X, dtype=np.float64)
    if not is_counts(adata):
        X = X.copy()
        # natural log (log1p) data stay under ln(1e4)+eps ~ 9.22 for 10k-normalised cells;
        # larger maxima (scClassify's data reach 17-18) are read as log2(x + 1)
        X.data = np.expm1(X.data) if X.data.max(initial=0) <= 9.22 else np.exp2(X.data) - 1.0
    a.X = X.astype(np.float32)
    keep = np.asarray(a.X.sum(axis=1)).ravel() > 0
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    return a, keep


def splits(adata):
    """(name, ref_idx, query_idx) for every task on one dataset."""
    from sklearn.model_selection import train_test_split

    if "batch" in adata.obs and adata.obs["batch"].nunique() >= 2:
        b = adata.obs["batch"].astype(str).to_numpy()
        for name in sorted(set(b)):
            yield f"query={name}", np.flatnonzero(b != name), np.flatnonzero(b == name)
    else:
        idx = np.arange(adata.n_obs)
        y = adata.obs["cell_type"].astype(str).to_numpy()
        ref, qry = train_test_split(idx, test_size=0.5, stratify=y, random_state=SEED)
        yield "random 50/50", np.sort(ref), np.sort(qry)


# ----------------------------------------------------------------------------- metrics


def scores(y_true, y_pred):
    from sklearn.metrics import accuracy_score, f1_score

    types = sorted(set(y_true))
    per = f1_score(y_true, y_pred, labels=types, average=None, zero_division=0)
    return dict(accuracy=accuracy_score(y_true, y_pred), macro_f1=float(np.mean(per)), median_f1=float(np.median(per)))


def auroc(is_novel, score_novel):
    from sklearn.metrics import roc_auc_score

    s = np.asarray(score_novel, dtype=float)
    if np.isnan(s).any() or len(set(is_novel)) < 2:
        return np.nan
    return float(roc_auc_score(is_novel, s))


# ----------------------------------------------------------------------------- methods


class Quiet(contextlib.ContextDecorator):
    """Silence stdout/stderr chatter and collect warnings (message -> count)."""

    def __init__(self):
        self.warnings = Counter()

    def __enter__(self):
        self._out = contextlib.redirect_stdout(io.StringIO())
        self._err = contextlib.redirect_stderr(io.StringIO())
        self._out.__enter__()
        self._err.__enter__()
        self._w = warnings.catch_warnings(record=True)
        self._rec = self._w.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        for w in self._rec:
            self.warnings[f"{w.category.__name__}: {str(w.message)[:160]}"] += 1
        self._w.__exit__(*exc)
        self._err.__exit__(*exc)
        self._out.__exit__(*exc)
        return False


def run_schash(ref, qry, transform, scale, with_batch):
    """Train one schash model; return {method name: (pred DataFrame, fit_s, predict_s)} and warnings."""
    import schash

    q = Quiet()
    with q:
        t0 = time.perf_counter()
        model = schash.train(ref, cell_type_key="cell_type", batch_key="batch" if with_batch else None,
                             n_top_genes=2000, transform=transform, scale=scale, seed=SEED, progress=False)
        fit = time.perf_counter() - t0
        out = {}
        for method in ("anchor", "knn"):
            t0 = time.perf_counter()
            pred = model.predict(qry, method=method, k=15)
            out[variant_name(transform, scale, method)] = (pred, fit, time.perf_counter() - t0)
    return out, q.warnings


def run_celltypist(ref, qry):
    import celltypist

    logging.getLogger("celltypist.logger").setLevel(logging.WARNING)  # it logs every step at INFO to stderr
    q = Quiet()
    with q:
        r, rkeep = celltypist_input(ref)
        r = r[rkeep].copy()
        qa, _ = celltypist_input(qry)
        t0 = time.perf_counter()
        model = celltypist.train(r, labels=r.obs["cell_type"].astype(str).to_numpy(), feature_selection=False,
                                 use_SGD=False, check_expression=False, n_jobs=1)
        fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = celltypist.annotate(qa, model=model, majority_voting=False)
        pred_s = time.perf_counter() - t0
    labels = res.predicted_labels["predicted_labels"].astype(str).to_numpy()
    maxprob = res.probability_matrix.max(axis=1).to_numpy()
    return labels, maxprob, fit, pred_s, q.warnings


def run_knn_pca(ref_log, qry_log, k=15, n_pcs=50, n_top_genes=2000):
    import scanpy as sc
    from sklearn.decomposition import PCA
    from sklearn.neighbors import KNeighborsClassifier

    q = Quiet()
    with q:
        t0 = time.perf_counter()
        r = ref_log.copy()
        if r.n_vars > n_top_genes:
            sc.pp.highly_variable_genes(r, n_top_genes=n_top_genes, flavor="seurat")
            genes = r.var_names[r.var["highly_variable"].to_numpy()]
        else:
            genes = r.var_names
        R = np.asarray(ref_log[:, genes].X.toarray(), dtype=np.float32)
        mu, sd = R.mean(0), R.std(0)
        sd[sd == 0] = 1.0
        R = np.clip((R - mu) / sd, -10, 10)
        pca = PCA(n_components=min(n_pcs, R.shape[0] - 1, R.shape[1] - 1), random_state=SEED).fit(R)
        clf = KNeighborsClassifier(n_neighbors=min(k, R.shape[0])).fit(pca.transform(R),
                                                                          ref_log.obs["cell_type"].astype(str).to_numpy())
        fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        Q = np.clip((np.asarray(qry_log[:, genes].X.toarray(), dtype=np.float32) - mu) / sd, -10, 10)
        proba = clf.predict_proba(pca.transform(Q))
        labels = clf.classes_[proba.argmax(1)]
        pred_s = time.perf_counter() - t0
    return labels, proba.max(1), fit, pred_s, q.warnings


def r_available():
    """{method: None if usable else a reason}."""
    out = {}
    if shutil.which("Rscript") is None:
        return {"singler": "skipped: Rscript not found", "seurat": "skipped: Rscript not found"}
    for m, pkg in (("singler", "SingleR"), ("seurat", "Seurat")):
        rc = subprocess.run(["Rscript", "-e", f"suppressPackageStartupMessages(library({pkg}))"],
                            capture_output=True, text=True)
        out[m] = None if rc.returncode == 0 else f"skipped: R package {pkg} not installed"
    return out


def run_r(ref_log, qry_log, methods, timeout=600):
    """{method: (labels, score, fit_s, predict_s) or 'error: ...'} via Rscript r_methods.R."""
    with tempfile.TemporaryDirectory(prefix="schash_bench_") as wd:
        wd = Path(wd)
        spio.mmwrite(wd / "ref.mtx", sparse.csr_matrix(ref_log.X).T.tocoo())
        spio.mmwrite(wd / "query.mtx", sparse.csr_matrix(qry_log.X).T.tocoo())
        (wd / "genes.txt").write_text("\n".join(map(str, ref_log.var_names)) + "\n")
        (wd / "ref_labels.txt").write_text("\n".join(ref_log.obs["cell_type"].astype(str)) + "\n")
        out = {}
        try:
            rc = subprocess.run(["Rscript", str(R_SCRIPT), str(wd), ",".join(methods)], capture_output=True,
                                text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {m: f"error: Rscript timed out after {timeout}s" for m in methods}
        for m in methods:
            if (wd / f"{m}.csv").exists():
                pred = pd.read_csv(wd / f"{m}.csv", keep_default_na=False)
                t = pd.read_csv(wd / f"{m}_time.csv")
                out[m] = (pred["label"].astype(str).to_numpy(), pred["score"].to_numpy(dtype=float),
                          float(t["fit_s"].iloc[0]), float(t["predict_s"].iloc[0]))
            elif (wd / f"{m}_error.txt").exists():
                out[m] = "error: " + (wd / f"{m}_error.txt").read_text().strip()[:200]
            else:
                tail = (rc.stderr or "").strip().splitlines()[-1:] or ["no output"]
                out[m] = f"error: Rscript exit {rc.returncode}: {tail[0][:200]}"
        return out


# ----------------------------------------------------------------------------- tasks


def classification_task(ds, fold, adata, peer, ref_idx, q_idx, methods, r_status, warn_log):
    ref, qry = adata[ref_idx].copy(), adata[q_idx].copy()
    ref_log, qry_log = peer[ref_idx].copy(), peer[q_idx].copy()
    y_ref = ref.obs["cell_type"].astype(str).to_numpy()
    y_q = qry.obs["cell_type"].astype(str).to_numpy()
    scored = np.isin(y_q, np.unique(y_ref))
    dropped = sorted(set(y_q[~scored]))
    with_batch = "batch" in ref.obs and ref.obs["batch"].nunique() >= 2
    base = dict(dataset=ds, fold=fold, n_ref=len(ref_idx), n_query=len(q_idx), n_scored=int(scored.sum()),
                n_dropped=int((~scored).sum()), dropped_types=";".join(dropped))
    rows = []

    def add(method, labels=None, fit=np.nan, pred_s=np.nan, unassigned=np.nan, error=""):
        row = dict(base, method=method, fit_s=fit, predict_s=pred_s, unassigned_frac=unassigned, error=error)
        if labels is not None:
            row.update(scores(y_q[scored], np.asarray(labels, dtype=str)[scored]))
        rows.append(row)
        shown = error or f"macroF1={row.get('macro_f1', np.nan):.3f} acc={row.get('accuracy', np.nan):.3f}"
        print(f"  {ds:34s} {fold:22s} {method:22s} {shown}  fit={fit:.1f}s pred={pred_s:.2f}s", flush=True)

    variants = []
    if "schash" in methods or "schash-knn" in methods:
        variants.append(("log", "batch"))
    if "schash-variants" in methods:
        variants += [v for v in SCHASH_VARIANTS if v != ("log", "batch")]
    for transform, scale in variants:
        try:
            res, w = run_schash(ref, qry, transform, scale, with_batch)
            warn_log.update(w)
            for name, (pred, fit, pred_s) in res.items():
                if name == "schash-knn" and "schash-knn" not in methods:
                    continue
                if name == "schash" and "schash" not in methods:
                    continue
                unas = float((pred["pruned_label"].astype(str).to_numpy()[scored] == "Unassigned").mean())
                add(name, pred["label"].astype(str).to_numpy(), fit, pred_s, unas)
        except Exception as e:  # noqa: BLE001 - a benchmark records and goes on
            for m in ("anchor", "knn"):
                add(variant_name(transform, scale, m), error=f"error: {type(e).__name__}: {str(e)[:150]}")
    if "celltypist" in methods:
        try:
            labels, _, fit, pred_s, w = run_celltypist(ref, qry)
            warn_log.update({f"[celltypist] {k}": v for k, v in w.items()})
            add("celltypist", labels, fit, pred_s)
        except Exception as e:  # noqa: BLE001
            add("celltypist", error=f"error: {type(e).__name__}: {str(e)[:150]}")
    if "knn-pca" in methods:
        try:
            labels, _, fit, pred_s, _w = run_knn_pca(ref_log, qry_log)
            add("knn-pca", labels, fit, pred_s)
        except Exception as e:  # noqa: BLE001
            add("knn-pca", error=f"error: {type(e).__name__}: {str(e)[:150]}")
    r_methods = [m for m in ("singler", "seurat") if m in methods]
    for m in r_methods:
        if r_status.get(m):
            add(m, error=r_status[m])
    todo = [m for m in r_methods if not r_status.get(m)]
    if todo:
        try:
            res = run_r(ref_log, qry_log, todo)
        except Exception as e:  # noqa: BLE001
            res = {m: f"error: {type(e).__name__}: {str(e)[:150]}" for m in todo}
        for m in todo:
            if isinstance(res[m], str):
                add(m, error=res[m])
            else:
                labels, _, fit, pred_s = res[m]
                add(m, labels, fit, pred_s)
    return rows


def novelty_scores(prefix, pred, novel):
    """AUROC of confidence and typicality, and the Unassigned fractions, of one schash prediction."""
    un = pred["pruned_label"].astype(str).to_numpy() == "Unassigned"
    return {f"{prefix}_confidence": auroc(novel, -pred["confidence"].to_numpy()),
            f"{prefix}_typicality": auroc(novel, -pred["typicality"].to_numpy()),
            f"{prefix}_unassigned_left_out": float(un[novel == 1].mean()),
            f"{prefix}_unassigned_known": float(un[novel == 0].mean())}


def novelty_tasks(ds, adata, peer, ref_idx, q_idx, methods, warn_log, n_left_out=2):
    """Leave each of the largest reference types out in turn; AUROC of confidences for the left-out cells."""
    y = adata.obs["cell_type"].astype(str).to_numpy()
    ref_types = pd.Series(y[ref_idx]).value_counts()
    if len(ref_types) < 3:
        return []
    q_idx = q_idx[np.isin(y[q_idx], ref_types.index)]  # only one kind of novelty: the left-out type
    cands = [t for t in ref_types.index if (y[q_idx] == t).sum() >= 5][:n_left_out]
    rows = []
    for t in cands:
        r_idx = ref_idx[y[ref_idx] != t]
        ref, qry = adata[r_idx].copy(), adata[q_idx].copy()
        novel = (y[q_idx] == t).astype(int)
        with_batch = "batch" in ref.obs and ref.obs["batch"].nunique() >= 2
        row = dict(dataset=ds, left_out=t, n_left_out=int(novel.sum()), n_known=int((1 - novel).sum()))
        if "schash" in methods:
            try:
                res, w = run_schash(ref, qry, "log", "batch", with_batch)
                warn_log.update(w)
                pa, pk = res["schash"][0], res["schash-knn"][0]
                row.update(novelty_scores("schash", pa, novel))
                row["schash_distance"] = auroc(novel, pa["distance"].to_numpy())
                row["schash-knn_confidence"] = auroc(novel, -pk["confidence"].to_numpy())
            except Exception as e:  # noqa: BLE001
                row["schash_error"] = f"error: {type(e).__name__}: {str(e)[:150]}"
        if "schash-variants" in methods:  # scale="reference": the query is not standardised on its own
            try:
                res, w = run_schash(ref, qry, "log", "reference", with_batch)
                warn_log.update(w)
                row.update(novelty_scores("schash-log-ref", res["schash-log-ref"][0], novel))
            except Exception as e:  # noqa: BLE001
                row["schash-log-ref_error"] = f"error: {type(e).__name__}: {str(e)[:150]}"
        if "celltypist" in methods:
            try:
                _, maxprob, *_ = run_celltypist(ref, qry)
                row["celltypist_maxprob"] = auroc(novel, -maxprob)
            except Exception as e:  # noqa: BLE001
                row["celltypist_error"] = f"error: {type(e).__name__}: {str(e)[:150]}"
        if "knn-pca" in methods:
            try:
                _, frac, *_ = run_knn_pca(peer[r_idx].copy(), peer[q_idx].copy())
                row["knn-pca_maxfrac"] = auroc(novel, -frac)
            except Exception as e:  # noqa: BLE001
                row["knn-pca_error"] = f"error: {type(e).__name__}: {str(e)[:150]}"
        print(f"  novelty {ds:34s} left out {t!r}: " + ", ".join(
            f"{k}={v:.3f}" for k, v in row.items() if isinstance(v, float)), flush=True)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- report


def fmt(x, nd=3):
    return "" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{nd}f}"


def md_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(str(v) for v in r.to_numpy()) + " |")
    return "\n".join(lines)


def aggregate(rows: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (ds, m), g in rows.groupby(["dataset", "method"], sort=False):
        ok = g[g["error"].fillna("") == ""]
        errs = sorted(set(g["error"].fillna("")) - {""})
        rec = dict(dataset=ds, method=m, folds=len(g), ok=len(ok), note="; ".join(errs))
        for c in ("macro_f1", "accuracy", "median_f1", "fit_s", "predict_s", "unassigned_frac"):
            rec[c] = ok[c].mean() if len(ok) and c in ok else np.nan
        out.append(rec)
    return pd.DataFrame(out)


def versions():
    pk = {}
    for name in ("schash-annotate", "torch", "scanpy", "anndata", "scikit-learn", "celltypist", "faiss-cpu", "numpy"):
        try:
            pk[name] = version(name)
        except PackageNotFoundError:
            pk[name] = "not installed"
    if shutil.which("Rscript"):
        rc = subprocess.run(["Rscript", "-e", 'cat(R.version$major, ".", R.version$minor, sep=""); for (p in c("SingleR", "Seurat")) '
                             'cat("", p, tryCatch(as.character(packageVersion(p)), error=function(e) "absent"))'],
                            capture_output=True, text=True)
        pk["R"] = rc.stdout.strip()
    return pk


def write_report(out: Path, rows: pd.DataFrame, nov: pd.DataFrame, meta: dict, warn_log: Counter, notes: list[str]):
    agg = aggregate(rows)
    lines = ["# schash accuracy benchmark\n",
             f"- date: {meta['date']}",
             f"- command: `{meta['command']}`",
             f"- machine: {meta['machine']}",
             f"- wall time: {meta['wall_s']:.0f} s",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
             "",
             "Tasks: leave-one-batch-out where a dataset has >= 2 batches, else a stratified random 50/50 split "
             "(seed 0). Query cells of types missing from the reference are predicted but not scored. "
             "Scores use each method's unpruned label; `unassigned` is the fraction of scored query cells schash's "
             "`pruned_label` leaves Unassigned. Macro F1 and median F1 are over the query's scored types. "
             "Times are per fold in seconds (R methods: inside R, excluding R start-up; Seurat's fit includes "
             "finding transfer anchors, which needs the query). All values are means over folds.",
             ""]
    if notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]

    # 1. per dataset x method
    t = agg.copy()
    t1 = pd.DataFrame({
        "dataset": t["dataset"], "method": t["method"], "folds": t["folds"],
        "macro F1": [fmt(v) for v in t["macro_f1"]], "accuracy": [fmt(v) for v in t["accuracy"]],
        "median F1": [fmt(v) for v in t["median_f1"]], "fit s": [fmt(v, 1) for v in t["fit_s"]],
        "predict s": [fmt(v, 2) for v in t["predict_s"]], "unassigned": [fmt(v) for v in t["unassigned_frac"]],
        "note": t["note"].str.slice(0, 120)})
    lines += ["## 1. Accuracy per dataset and method\n", md_table(t1), ""]

    drops = rows.drop_duplicates(["dataset", "fold"])
    drops = drops[drops["n_dropped"] > 0]
    if len(drops):
        lines += ["Query cells not scored (type absent from the reference): " + "; ".join(
            f"{r.dataset} {r.fold}: {r.n_dropped} ({r.dropped_types})" for r in drops.itertuples()), ""]

    # 2. ratios
    peer_rows, var_rows = [], []
    sch = [m for m in agg["method"].unique() if m.startswith("schash")]
    for ds, g in agg.groupby("dataset", sort=False):
        f1 = dict(zip(g["method"], g["macro_f1"]))
        peers = {m: v for m, v in f1.items() if m in PEERS and not np.isnan(v)}
        best_peer = max(peers, key=peers.get) if peers else None
        svals = {m: v for m, v in f1.items() if m in sch and not np.isnan(v)}
        best_s = max(svals, key=svals.get) if svals else None
        tied = [m for m in svals if svals[m] >= svals[best_s] - 1e-9] if svals else []
        bp = peers.get(best_peer, np.nan)
        peer_rows.append({
            "dataset": ds, "schash": fmt(f1.get("schash", np.nan)), "schash-knn": fmt(f1.get("schash-knn", np.nan)),
            "best peer": f"{best_peer} {fmt(bp)}" if best_peer else "",
            "schash / best peer": fmt(f1.get("schash", np.nan) / bp if bp else np.nan),
            "schash-knn / best peer": fmt(f1.get("schash-knn", np.nan) / bp if bp else np.nan),
            "best schash variant": f"{best_s} {fmt(svals.get(best_s, np.nan))}" if best_s else "",
            "best variant / best peer": fmt(svals[best_s] / bp if best_s and bp else np.nan)})
        var_rows.append({"dataset": ds, **{m: fmt(f1.get(m, np.nan)) for m in sch},
                         "best": "all tied" if len(tied) == len(svals) else ", ".join(tied), "_tied": tied})
    lines += ["## 2. schash against the best peer (macro F1 ratio)\n",
              "Peers: " + ", ".join(PEERS) + ".\n", md_table(pd.DataFrame(peer_rows)), ""]
    if var_rows and len(sch) > 2:
        vt = pd.DataFrame(var_rows)
        wins = Counter(m for tied in vt.pop("_tied") for m in tied)
        mean_f1 = agg[agg["method"].isin(sch)].groupby("method")["macro_f1"].mean()
        lines += ["### schash variants (macro F1; transform × scale, anchor vs knn)\n", md_table(vt), "",
                  "Datasets where a variant is best or tied for best: " + ", ".join(f"{k} {v}" for k, v in wins.most_common()) + ".  "
                  "Mean macro F1 over datasets: " + ", ".join(f"{k} {v:.3f}" for k, v in
                                                              mean_f1.sort_values(ascending=False).items()) + ".", ""]

    # 3. novelty
    if len(nov):
        cols = [c for c in ("dataset", "left_out", "n_left_out", "n_known", "schash_confidence", "schash-knn_confidence",
                            "schash_typicality", "schash_distance", "celltypist_maxprob", "knn-pca_maxfrac",
                            "schash_unassigned_left_out", "schash_unassigned_known", "schash-log-ref_confidence",
                            "schash-log-ref_typicality", "schash-log-ref_unassigned_left_out",
                            "schash-log-ref_unassigned_known") if c in nov]
        nt = nov[cols].copy()
        for c in cols[4:]:
            nt[c] = [fmt(v) for v in nt[c]]
        errc = [c for c in nov.columns if c.endswith("_error")]
        if errc:
            nt["note"] = nov[errc].fillna("").agg(" ".join, axis=1).str.strip().str.slice(0, 120)
        lines += ["## 3. Unknown-type detection (AUROC, left-out type = positive, low score = novel)\n",
                  "First fold of each dataset; each of the two largest reference types is removed from the "
                  "reference in turn; query cells of other types missing from the reference are left out. "
                  "AUROC of: schash `confidence` (anchor / knn), `typicality`, anchor `distance` (high = novel); "
                  "CellTypist max probability; kNN-PCA max class fraction. `*_unassigned_*`: fraction of "
                  "left-out / known-type query cells schash's `pruned_label` marks Unassigned. `schash-log-ref_*`: the "
                  "same with `scale=\"reference\"` (the query standardised with the reference's statistics).\n",
                  md_table(nt), ""]
        means = {c: np.nanmean(nov[c].to_numpy(dtype=float)) for c in cols[4:]}
        lines += ["Means: " + ", ".join(f"{k} {v:.3f}" for k, v in means.items()), ""]

    if warn_log:
        lines += ["## Warnings raised during the run (count)\n"] + [
            f"- {n}× {msg}" for msg, n in warn_log.most_common(25)] + [""]
    text = "\n".join(lines)
    (out / "accuracy.md").write_text(text)
    return text


# ----------------------------------------------------------------------------- main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--methods", nargs="+", default=ALL_METHODS, choices=ALL_METHODS)
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK_DATASETS)} (smoke test)")
    ap.add_argument("--no-novelty", action="store_true", help="skip the unknown-type detection tasks")
    ap.add_argument("--report-only", action="store_true",
                    help="rebuild OUT/accuracy.md from OUT/accuracy.csv, novelty.csv and accuracy_meta.json")
    args = ap.parse_args(argv)
    if args.report_only:
        meta = json.loads((args.out / "accuracy_meta.json").read_text())
        nov_path = args.out / "novelty.csv"
        nov = pd.read_csv(nov_path) if nov_path.exists() and nov_path.stat().st_size > 1 else pd.DataFrame()
        rows = pd.read_csv(args.out / "accuracy.csv", keep_default_na=False, na_values=[""])
        rows["error"] = rows["error"].fillna("")
        rows["dropped_types"] = rows["dropped_types"].fillna("")
        print(write_report(args.out, rows, nov, meta, Counter(meta.pop("warnings", {})), meta.pop("notes", [])))
        return
    if not args.data_dir.is_dir():
        sys.exit(f"data directory {args.data_dir} not found: pass the folder with the benchmark .h5ad files")
    import anndata as ad

    logging.getLogger("schash").setLevel(logging.WARNING)
    files = sorted(args.data_dir.glob("*.h5ad"))
    if args.quick:
        files = [f for f in files if f.stem in QUICK_DATASETS]
    if not files:
        sys.exit(f"no .h5ad files in {args.data_dir}")
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    r_status = r_available() if {"singler", "seurat"} & set(args.methods) else {}
    notes = [f"{m}: {s}" for m, s in r_status.items() if s]
    warn_log: Counter = Counter()
    rows, nov = [], []
    for f in files:
        ds = f.stem
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adata = ad.read_h5ad(f)
        adata.obs["cell_type"] = adata.obs["cell_type"].astype(str)
        if "batch" in adata.obs:
            adata.obs["batch"] = adata.obs["batch"].astype(str)
        peer = log_normalised(adata)
        print(f"{ds}: {adata.n_obs} cells × {adata.n_vars} genes, X={adata.uns.get('X_kind')}", flush=True)
        first = None
        for fold, r_idx, q_idx in splits(adata):
            first = first or (r_idx, q_idx)
            rows += classification_task(ds, fold, adata, peer, r_idx, q_idx, args.methods, r_status, warn_log)
        if not args.no_novelty:
            nov += novelty_tasks(ds, adata, peer, *first, args.methods, warn_log)
        pd.DataFrame(rows).to_csv(args.out / "accuracy.csv", index=False)
        pd.DataFrame(nov).to_csv(args.out / "novelty.csv", index=False)
    rows_df, nov_df = pd.DataFrame(rows), pd.DataFrame(nov)
    rows_df.to_csv(args.out / "accuracy.csv", index=False)
    nov_df.to_csv(args.out / "novelty.csv", index=False)
    meta = dict(date=datetime.datetime.now().isoformat(timespec="seconds"),
                command="python bench/accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv),
                machine=f"{platform.platform()}, {os.cpu_count()} CPUs (nproc), Python {platform.python_version()}",
                wall_s=time.perf_counter() - t_start, versions=versions())
    (args.out / "accuracy_meta.json").write_text(json.dumps(dict(meta, notes=notes, warnings=dict(warn_log)), indent=1))
    print(write_report(args.out, rows_df, nov_df, meta, warn_log, notes))


if __name__ == "__main__":
    main()
