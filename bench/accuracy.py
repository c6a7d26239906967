#!/usr/bin/env python
"""Accuracy benchmark: schash beside CellTypist, kNN-on-PCA, SingleR and Seurat.

Usage
-----
    python bench/accuracy.py DATA_DIR [--out bench/results] [--methods ...] [--datasets NAME ...]
                             [--quick] [--no-novelty] [--no-single-type] [--report-only]

``DATA_DIR`` holds labelled ``.h5ad`` files with ``obs['cell_type']`` and, optionally,
``obs['batch']`` and ``uns['X_kind']`` (``counts`` or a log-normalised kind); see
``/work/shared/data/README.md`` for the set this was written for.  Nothing is copied.
``--datasets`` takes file stems (``pbmc_dropseq_indrops_scAnnotate`` ...).

Tasks
-----
* Classification: leave-one-batch-out (each batch in turn is the query, the rest the
  reference; "cross-batch") where the data has two or more batches, otherwise a stratified
  random 50/50 split ("random split").  Query cells of types absent from the reference are
  predicted but not scored (``n_dropped`` / ``dropped_types`` in the CSV).  For every task,
  the gap of each schash variant's macro F1 to the best peer's on that task.
* Fine labels: a file with ``obs['cell_type_fine']`` as well is benchmarked a second time on
  those labels (dataset ``stem:cell_type_fine``; mouse cortex: 48 subclasses, a third of them
  with fewer than 10 reference cells).
* Calls independent of the rest of the query (cross-batch folds; ``schash`` and
  ``schash-batchscale``): the fold's model annotates each query type alone (types with >= 5
  scored cells) and a skewed query (the most frequent type's cells plus a random 10 % of
  others); labels are compared with the same cells' labels in the full-query prediction.
* Unknown types across batches (datasets with >= 2 batches; the first fold and the fold
  with the largest query batch): each reference type with >= 10 cells in both reference and
  query is left out of the reference in turn; AUROC of schash ``1 - confidence`` and
  ``1 - typicality`` and CellTypist ``1 - max probability`` for the left-out cells, and the
  fractions of left-out / known-type cells schash leaves ``Unassigned`` (schash trained with
  each seed of ``--seeds``; the targets are judged on the mean over seeds).
* Fine-grained guard (full runs only; ``--no-guard`` skips it; reads nothing from ``DATA_DIR``): the same left-out-type
  tasks within one study whose reference has close subtypes — scanpy's bundled
  ``pbmc68k_reduced`` (ten sorted-population labels, T-cell subsets among them), a stratified
  60/40 split with the test suite's simulated technology shift on the query
  (``tests/test_transfer.py``).  Not part of the targets: reported beside them, because
  scorers that weigh how ambiguous a call is (between-type margins, a classifier's
  probability, a centrality in the hidden layer) rank the cross-batch tasks better and this
  one worse.

Methods
-------
schash configurations (``SCHASH_CONFIGS``; one model per distinct set of training
arguments, shared by the anchor and k-NN calls): ``schash`` (defaults: transform="log",
scale="reference", augment=0.8, min_cells_per_type=1, rare_type_cells=10; nearest type
prototype, put to the rare types' contest),
``schash-anchor`` (the same model, nearest anchor), ``schash-knn`` (the same model, k-NN vote
among reference codes, k=15), ``schash-noaug`` (augment=0),
``schash-batchscale`` (scale="batch": each reference batch and the query standardised on
themselves), ``schash-min10`` (min_cells_per_type=10), ``schash-rank`` (transform="rank"),
``schash-norare`` (rare_type_cells=0: no rare types' contest; the defaults' network).
Every schash call gets ``batch_key="batch"`` where the reference has >= 2 batches, seed 0
(the defaults also with seeds 1 to N-1 for their spread, ``--seeds N``).
Peers: ``celltypist`` (logistic regression, ``use_SGD=False``), ``knn-pca`` (HVG from the
reference, reference-scaled, PCA 50, k=15), ``singler`` and ``seurat`` (through
``Rscript bench/r_methods.R``; skipped with a note when R or the package is missing).

Peers get log-normalised data (``normalize_total(1e4)`` + ``log1p`` where ``X`` is counts,
``X`` as shipped otherwise); schash gets ``X`` as is (it detects counts).  CellTypist,
which insists on log1p of counts per 10k, gets log-normalised data mapped back to a
linear scale (``expm1``, or ``2**x - 1`` where values exceed ln(10^4)), renormalised to 10^4
and log1p-transformed.

Outputs ``OUT/accuracy.md`` (report), ``OUT/accuracy.csv``, ``OUT/single_type.csv``,
``OUT/novelty.csv``, ``OUT/seeds.csv`` (raw rows) and ``OUT/accuracy_meta.json`` (for ``--report-only``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
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
# name -> (schash.train keyword arguments, model.predict keyword arguments)
SCHASH_CONFIGS = {
    "schash": ({}, {}),
    "schash-anchor": ({}, {"method": "anchor"}),
    "schash-knn": ({}, {"method": "knn", "k": 15}),
    "schash-noaug": ({"augment": 0}, {"method": "anchor"}),
    "schash-batchscale": ({"scale": "batch"}, {"method": "anchor"}),
    "schash-min10": ({"min_cells_per_type": 10}, {"method": "anchor"}),
    "schash-rank": ({"transform": "rank"}, {"method": "anchor"}),
    "schash-norare": ({"rare_type_cells": 0}, {}),
}
SCHASH_TEXT = {
    "schash": 'defaults (transform="log", scale="reference": the query standardised with the reference\'s '
              "statistics, augment=0.8: 80 % of training cells get a technology-like perturbation each epoch, "
              "min_cells_per_type=1, rare_type_cells=10), the nearest type prototype in the network's last "
              'hidden layer (method="auto": "prototype"), put to the rare types\' contest (types of < 10 training '
              "cells scored by rank correlation, as SingleR scores cells)",
    "schash-anchor": "the same model as `schash`, nearest anchor by Hamming distance (the default before "
                     "prototypes)",
    "schash-knn": "the same model as `schash`, k-NN vote among the reference cells' codes (k=15)",
    "schash-noaug": "defaults with augment=0 (no augmentation)",
    "schash-batchscale": 'defaults with scale="batch" (the old default: each reference batch and the query '
                         "standardised on their own statistics)",
    "schash-min10": "defaults with min_cells_per_type=10 (the old default: types with < 10 reference cells dropped)",
    "schash-rank": 'defaults with transform="rank" (per-cell ranks of expressed genes)',
    "schash-norare": "defaults with rare_type_cells=0 (no rare types' contest: the prototype call alone; the same "
                     "network as `schash`, which the contest does not change)",
}
VARIANTS = [m for m in SCHASH_CONFIGS if m not in ("schash", "schash-anchor", "schash-knn")]
SINGLE_TYPE_VARIANTS = ("schash", "schash-batchscale")
PEERS = ["celltypist", "knn-pca", "singler", "seurat"]
ALL_METHODS = ["schash", "schash-anchor", "schash-knn", "schash-variants", *PEERS]
SEED = 0
MIN_SINGLE_TYPE = 5  # query types with at least this many scored cells are annotated alone
MIN_LEFT_OUT = 10  # a type is left out when it has at least this many cells in reference and query
TARGETS = {"unassigned_left_out": 0.5, "unassigned_known": 0.05, "auroc": 0.9}


def schash_methods(methods) -> list[str]:
    """The schash configurations that --methods asks for, in SCHASH_CONFIGS order."""
    want = {m for m in methods if m in SCHASH_CONFIGS}
    if "schash-variants" in methods:
        want |= set(VARIANTS)
    return [m for m in SCHASH_CONFIGS if m in want]


def task_kind(fold: str) -> str:
    return "cross-batch" if str(fold).startswith("query=") else "random split"


# ----------------------------------------------------------------------------- data


def read_dataset(path, label: str = "cell_type"):
    """A shared dataset with ``obs["cell_type"]`` (from ``obs[label]``) and ``obs["batch"]`` (where
    present) as strings."""
    import anndata as ad

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = ad.read_h5ad(path)
    adata.obs["cell_type"] = adata.obs[label].astype(str)
    if "batch" in adata.obs:
        adata.obs["batch"] = adata.obs["batch"].astype(str)
    return adata


def label_columns(path) -> list[str]:
    """``cell_type``, and ``cell_type_fine`` where the file has finer labels too (a task of its own,
    named ``stem:cell_type_fine``: many close types, several with few reference cells)."""
    import h5py

    with h5py.File(path, "r") as f:
        return ["cell_type"] + (["cell_type_fine"] if "cell_type_fine" in f.get("obs", {}) else [])


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
    """[(name, ref_idx, query_idx)] for every classification task on one dataset."""
    from sklearn.model_selection import train_test_split

    if "batch" in adata.obs and adata.obs["batch"].nunique() >= 2:
        b = adata.obs["batch"].astype(str).to_numpy()
        return [(f"query={name}", np.flatnonzero(b != name), np.flatnonzero(b == name)) for name in sorted(set(b))]
    idx = np.arange(adata.n_obs)
    y = adata.obs["cell_type"].astype(str).to_numpy()
    ref, qry = train_test_split(idx, test_size=0.5, stratify=y, random_state=SEED)
    return [("random 50/50", np.sort(ref), np.sort(qry))]


def has_batches(adata) -> bool:
    return "batch" in adata.obs and adata.obs["batch"].nunique() >= 2


# ----------------------------------------------------------------------------- metrics


def scores(y_true, y_pred):
    from sklearn.metrics import accuracy_score, f1_score

    types = sorted(set(y_true))
    per = f1_score(y_true, y_pred, labels=types, average=None, zero_division=0)
    return {"accuracy": accuracy_score(y_true, y_pred), "macro_f1": float(np.mean(per)),
            "median_f1": float(np.median(per))}


def auroc(is_novel, score_novel):
    from sklearn.metrics import roc_auc_score

    s = np.asarray(score_novel, dtype=float)
    if np.isnan(s).any() or len(set(is_novel)) < 2:
        return np.nan
    return float(roc_auc_score(is_novel, s))


def call_auroc(y_true, labels, score) -> float:
    """AUROC of a method's per-cell score for telling its correct calls from its wrong ones (NaN where
    every call is right, or every call wrong)."""
    return auroc(np.asarray(labels, dtype=str) == np.asarray(y_true, dtype=str), score)


def err_text(e: Exception) -> str:
    return f"error: {type(e).__name__}: {str(e)[:150]}"


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


def train_schash(ref, train_kw: dict, warn_log: Counter, seed: int = SEED):
    """One schash model on ``ref`` (batch-aware where it has >= 2 batches); returns (model, fit_s)."""
    import schash

    q = Quiet()
    with q:
        t0 = time.perf_counter()
        model = schash.train(ref, cell_type_key="cell_type", batch_key="batch" if has_batches(ref) else None,
                             seed=seed, progress=False, **train_kw)
        fit = time.perf_counter() - t0
    warn_log.update(q.warnings)
    return model, fit


def effective_train_kw(ref, train_kw: dict) -> dict:
    """``train_kw`` without ``min_cells_per_type`` where every reference type has that many cells with
    expression, and without ``rare_type_cells=0`` where every type has at least the default 10.

    schash then trains on the same cells as with the default (1) and has no rare types either way, and
    with the same seed gives the same model, so the configuration shares the defaults' model instead of
    training it again.
    """
    kw = dict(train_kw)
    usable = np.asarray(ref.X.sum(axis=1)).reshape(-1) > 0
    counts = pd.Series(ref.obs["cell_type"].astype(str).to_numpy()[usable]).value_counts()
    for key, least in (("min_cells_per_type", kw.get("min_cells_per_type")),
                       ("rare_type_cells", max(kw.get("rare_type_cells") or 0, 10))):
        if key in kw and len(counts) and counts.min() >= least:
            kw.pop(key)
    return kw


def predict_schash(model, qry, predict_kw: dict, warn_log: Counter):
    """(prediction DataFrame, predict_s)."""
    q = Quiet()
    with q:
        t0 = time.perf_counter()
        pred = model.predict(qry, **predict_kw)
        dt = time.perf_counter() - t0
    warn_log.update(q.warnings)
    return pred, dt


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
                            capture_output=True, text=True, check=False)
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
                                text=True, timeout=timeout, check=False)
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


def classification_task(ds, fold, adata, peer, ref_idx, q_idx, methods, r_status, warn_log, single_type=True,
                        seeds=()):
    """Rows of accuracy.csv for one fold, of single_type.csv (cross-batch folds only) and of seeds.csv (the
    defaults trained with seed 0 and each of ``seeds``)."""
    ref, qry = adata[ref_idx].copy(), adata[q_idx].copy()
    ref_log, qry_log = peer[ref_idx].copy(), peer[q_idx].copy()
    y_ref = ref.obs["cell_type"].astype(str).to_numpy()
    y_q = qry.obs["cell_type"].astype(str).to_numpy()
    scored = np.isin(y_q, np.unique(y_ref))
    dropped = sorted(set(y_q[~scored]))
    kind = task_kind(fold)
    base = {"dataset": ds, "fold": fold, "kind": kind, "n_ref": len(ref_idx), "n_query": len(q_idx),
            "n_scored": int(scored.sum()), "n_dropped": int((~scored).sum()), "dropped_types": ";".join(dropped)}
    rows, st_rows, seed_rows = [], [], []

    def add_seed(seed, model, pred):
        row = dict(base, seed=seed, **scores(y_q[scored], pred["label"].astype(str).to_numpy()[scored]))
        other = predict_schash(model, qry, {"method": "anchor"}, warn_log)[0]["label"].astype(str).to_numpy()
        row["macro_f1_anchor"] = scores(y_q[scored], other[scored])["macro_f1"]  # the same model's other call
        alone = dataclasses.replace(model, rare=None)  # the same network without the rare types' contest
        plain = predict_schash(alone, qry, {}, warn_log)[0]["label"].astype(str).to_numpy()
        row["macro_f1_norare"] = scores(y_q[scored], plain[scored])["macro_f1"]
        row["unassigned_frac"] = float((pred["pruned_label"].astype(str).to_numpy()[scored] == "Unassigned").mean())
        labels = pred["label"].astype(str).to_numpy()[scored]
        row["call_auroc"] = call_auroc(y_q[scored], labels, pred["confidence"].to_numpy()[scored])
        # the same model's confidence without its clarity factor (schash._novelty.confidence_factor)
        unclear = dataclasses.replace(model, novelty=dataclasses.replace(model.novelty, clarity_calibration=None))
        conf = predict_schash(unclear, qry, {}, warn_log)[0]["confidence"].to_numpy()[scored]
        row["call_auroc_unclear"] = call_auroc(y_q[scored], labels, conf)
        seed_rows.append(row)

    def add(method, labels=None, fit=np.nan, pred_s=np.nan, unassigned=np.nan, error="", score=None):
        row = dict(base, method=method, fit_s=fit, predict_s=pred_s, unassigned_frac=unassigned, error=error)
        if labels is not None:
            row.update(scores(y_q[scored], np.asarray(labels, dtype=str)[scored]))
        if labels is not None and score is not None:  # the method's own per-cell score
            row["call_auroc"] = call_auroc(y_q[scored], np.asarray(labels, dtype=str)[scored],
                                           np.asarray(score, dtype=float)[scored])
        rows.append(row)
        shown = error or f"macroF1={row.get('macro_f1', np.nan):.3f} acc={row.get('accuracy', np.nan):.3f}"
        print(f"  {ds:34s} {fold:22s} {method:18s} {shown}  fit={fit:.1f}s pred={pred_s:.2f}s", flush=True)

    # schash: one model per distinct set of (effective) training arguments
    groups: dict[tuple, list[str]] = {}
    for name in schash_methods(methods):
        groups.setdefault(tuple(sorted(effective_train_kw(ref, SCHASH_CONFIGS[name][0]).items())), []).append(name)
    for key, names in groups.items():
        try:
            model, fit = train_schash(ref, dict(key), warn_log)
        except Exception as e:  # noqa: BLE001 - a benchmark records and goes on
            for name in names:
                add(name, error=err_text(e))
            continue
        for name in names:
            try:
                pred, pred_s = predict_schash(model, qry, SCHASH_CONFIGS[name][1], warn_log)
            except Exception as e:  # noqa: BLE001
                add(name, error=err_text(e))
                continue
            unas = float((pred["pruned_label"].astype(str).to_numpy()[scored] == "Unassigned").mean())
            add(name, pred["label"].astype(str).to_numpy(), fit, pred_s, unas, score=pred["confidence"].to_numpy())
            if name == "schash" and seeds:
                add_seed(SEED, model, pred)
            if single_type and kind == "cross-batch" and name in SINGLE_TYPE_VARIANTS:
                try:
                    st_rows += single_type_rows(base, name, model, qry, pred, scored, warn_log)
                except Exception as e:  # noqa: BLE001
                    st_rows.append({"dataset": ds, "fold": fold, "variant": name, "error": err_text(e)})
    for seed in seeds if "schash" in methods else ():
        try:
            model, _ = train_schash(ref, {}, warn_log, seed=seed)
            add_seed(seed, model, predict_schash(model, qry, {}, warn_log)[0])
        except Exception as e:  # noqa: BLE001
            seed_rows.append(dict(base, seed=seed, error=err_text(e)))
    f1s = [r["macro_f1"] for r in seed_rows if "macro_f1" in r]
    if f1s:  # (none when every seed's training failed)
        print(f"  {ds:34s} {fold:22s} schash seeds {SEED}-{max(seeds)}: macroF1 mean {np.mean(f1s):.3f} "
              f"({min(f1s):.3f}-{max(f1s):.3f})", flush=True)
    if "celltypist" in methods:
        try:
            labels, maxprob, fit, pred_s, w = run_celltypist(ref, qry)
            warn_log.update({f"[celltypist] {k}": v for k, v in w.items()})
            add("celltypist", labels, fit, pred_s, score=maxprob)
        except Exception as e:  # noqa: BLE001
            add("celltypist", error=err_text(e))
    if "knn-pca" in methods:
        try:
            labels, votes, fit, pred_s, _w = run_knn_pca(ref_log, qry_log)
            add("knn-pca", labels, fit, pred_s, score=votes)
        except Exception as e:  # noqa: BLE001
            add("knn-pca", error=err_text(e))
    r_methods = [m for m in ("singler", "seurat") if m in methods]
    for m in r_methods:
        if r_status.get(m):
            add(m, error=r_status[m])
    todo = [m for m in r_methods if not r_status.get(m)]
    if todo:
        try:
            res = run_r(ref_log, qry_log, todo)
        except Exception as e:  # noqa: BLE001
            res = {m: err_text(e) for m in todo}
        for m in todo:
            if isinstance(res[m], str):
                add(m, error=res[m])
            else:
                labels, score, fit, pred_s = res[m]
                add(m, labels, fit, pred_s, score=score)
    return rows, st_rows, seed_rows


def single_type_rows(base, variant, model, qry, full_pred, scored, warn_log):
    """Annotate each query type alone and a skewed query with the fold's model; compare with the full query."""
    y_q = qry.obs["cell_type"].astype(str).to_numpy()
    full = full_pred["label"].astype(str).to_numpy()
    full_pruned = full_pred["pruned_label"].astype(str).to_numpy()
    counts = pd.Series(y_q[scored]).value_counts()
    subsets = [("single type", t, np.flatnonzero(scored & (y_q == t))) for t in counts.index
               if counts[t] >= MIN_SINGLE_TYPE]
    if len(counts) >= 2:
        major = counts.index[0]
        maj_idx = np.flatnonzero(scored & (y_q == major))
        others = np.flatnonzero(scored & (y_q != major))
        n_other = min(len(others), max(1, round(len(maj_idx) / 9)))  # 10 % of the skewed query
        pick = np.random.default_rng(SEED).choice(others, size=n_other, replace=False)
        subsets.append(("skewed", f"{major} 90%", np.sort(np.concatenate([maj_idx, pick]))))
    rows = []
    for query, subset, idx in subsets:
        pred, _ = predict_schash(model, qry[idx].copy(), SCHASH_CONFIGS[variant][1], warn_log)
        lab = pred["label"].astype(str).to_numpy()
        pruned = pred["pruned_label"].astype(str).to_numpy()
        acc_alone, acc_full = float((lab == y_q[idx]).mean()), float((full[idx] == y_q[idx]).mean())
        rows.append({"dataset": base["dataset"], "fold": base["fold"], "variant": variant, "query": query,
                     "subset": subset, "n_cells": len(idx), "agreement": float((lab == full[idx]).mean()),
                     "pruned_agreement": float((pruned == full_pruned[idx]).mean()),
                     "acc_alone": acc_alone, "acc_in_full": acc_full, "acc_diff": acc_alone - acc_full, "error": ""})
    return rows


GUARD = "pbmc68k_reduced, simulated shift"


def guard_dataset():
    """(adata, reference rows, query rows) of the fine-grained guard: scanpy's pbmc68k_reduced
    (log-normalised values in ``.raw``, ``bulk_labels`` as ``cell_type``), a stratified 60/40 split,
    the query perturbed by the test suite's simulated technology shift."""
    import anndata as ad
    import scanpy as sc
    from sklearn.model_selection import train_test_split

    sys.path.insert(0, str(HERE.parent / "tests"))
    from test_transfer import _technology_shift  # the shift the tests pin the defaults on

    full = sc.datasets.pbmc68k_reduced()
    a = full.raw.to_adata()
    a.obs = full.obs[["bulk_labels"]].rename(columns={"bulk_labels": "cell_type"}).astype(str)
    y = a.obs["cell_type"].to_numpy()
    ref, qry = train_test_split(np.arange(a.n_obs), test_size=0.4, stratify=y, random_state=SEED)
    joined = ad.concat([a[np.sort(ref)].copy(), _technology_shift(a[np.sort(qry)].copy())])
    joined.uns["X_kind"] = "log-normalised"
    return joined, np.arange(len(ref)), np.arange(len(ref), joined.n_obs)


def novelty_folds(folds):
    """The first fold and the fold with the largest query batch (once if the same)."""
    first = folds[0]
    largest = max(folds, key=lambda f: len(f[2]))
    return [first] if largest[0] == first[0] else [first, largest]


NOVELTY_COLUMNS = ("schash_confidence", "schash_typicality", "schash_unassigned_left_out", "schash_unassigned_known",
                   "schash_confidence_unclear")
NOVELTY_ALPHAS = (0.005, 0.01, 0.03, 0.05, 0.1)  # annotation-time novelty_alpha values beside the model's own


def calls_by_alpha(model, qry, novel, warn_log) -> tuple[pd.DataFrame, dict]:
    """From one encoding of ``qry``: the default calls (``model.predict(qry)``'s) and the left-out and
    known-type fractions ``Unassigned`` at each of :data:`NOVELTY_ALPHAS` (``predict(novelty_alpha=)``'s
    calls: only the pruning changes)."""
    q, out = Quiet(), {}
    with q:
        enc = model.encoded(qry)
        pred = model.call(enc)
        for a in NOVELTY_ALPHAS:
            un = model.call(enc, novelty_alpha=a)["pruned_label"].astype(str).to_numpy() == "Unassigned"
            out[a] = (float(un[novel == 1].mean()), float(un[novel == 0].mean()))
    warn_log.update(q.warnings)
    return pred, out


def novelty_tasks(ds, adata, fold, ref_idx, q_idx, methods, warn_log, seeds=(SEED,)):
    """Leave each reference type with >= MIN_LEFT_OUT cells in reference and query out in turn; schash's
    defaults are trained with each of ``seeds`` (columns ``<name>_s<seed>``, and their mean as ``<name>``)."""
    y = adata.obs["cell_type"].astype(str).to_numpy()
    ref_types = pd.Series(y[ref_idx]).value_counts()
    q_idx = q_idx[np.isin(y[q_idx], ref_types.index)]  # only one kind of novelty: the left-out type
    q_types = pd.Series(y[q_idx]).value_counts()
    if len(ref_types) - 1 < 2:
        return []
    cands = [t for t in ref_types.index if ref_types[t] >= MIN_LEFT_OUT and q_types.get(t, 0) >= MIN_LEFT_OUT]
    qry = adata[q_idx].copy()
    rows = []
    for t in cands:
        r_idx = ref_idx[y[ref_idx] != t]
        ref = adata[r_idx].copy()
        novel = (y[q_idx] == t).astype(int)
        row = {"dataset": ds, "fold": fold, "left_out": t, "n_ref": len(r_idx), "n_left_out": int(novel.sum()),
               "n_known": int((1 - novel).sum())}
        for seed in seeds if "schash" in methods else ():
            try:
                model, fit = train_schash(ref, {}, warn_log, seed=seed)
                pred, by_alpha = calls_by_alpha(model, qry, novel, warn_log)
                un = pred["pruned_label"].astype(str).to_numpy() == "Unassigned"
                # the same model's confidence without its clarity factor (schash._novelty.confidence_factor)
                unclear = dataclasses.replace(model, novelty=dataclasses.replace(model.novelty, clarity_calibration=None))
                conf = predict_schash(unclear, qry, {}, warn_log)[0]["confidence"].to_numpy()
                values = (auroc(novel, 1 - pred["confidence"].to_numpy()), auroc(novel, 1 - pred["typicality"].to_numpy()),
                          float(un[novel == 1].mean()), float(un[novel == 0].mean()), auroc(novel, 1 - conf))
                row.update({f"{c}_s{seed}": v for c, v in zip(NOVELTY_COLUMNS, values, strict=True)})
                for a, (lo, kn) in by_alpha.items():
                    row[f"schash_unassigned_left_out_alpha{a}_s{seed}"] = lo
                    row[f"schash_unassigned_known_alpha{a}_s{seed}"] = kn
                if seed == SEED:
                    row["schash_fit_s"] = fit
            except Exception as e:  # noqa: BLE001
                row["schash_error"] = (row.get("schash_error", "") + f" seed {seed}: {err_text(e)}").strip()
        for c in NOVELTY_COLUMNS + tuple(f"schash_unassigned_{w}_alpha{a}" for a in NOVELTY_ALPHAS
                                         for w in ("left_out", "known")):
            got = [row[f"{c}_s{seed}"] for seed in seeds if f"{c}_s{seed}" in row]
            if got:
                row[c] = float(np.mean(got))
        if "celltypist" in methods:
            try:
                _, maxprob, *_ = run_celltypist(ref, qry)
                row["celltypist_maxprob"] = auroc(novel, 1 - maxprob)
            except Exception as e:  # noqa: BLE001
                row["celltypist_error"] = err_text(e)
        print(f"  novelty {ds:34s} {fold:18s} left out {t!r}: " + ", ".join(
            f"{k}={v:.3f}" for k, v in row.items() if isinstance(v, float) and "_alpha" not in k), flush=True)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- report


def novelty_table(nov: pd.DataFrame) -> tuple[pd.DataFrame, list[int]]:
    """The report's table of left-out-type tasks (formatted) and the seeds schash's columns average."""
    cols = [c for c in ("dataset", "fold", "left_out", "n_ref", "n_left_out", "n_known", "schash_confidence",
                        "schash_typicality", "celltypist_maxprob", "schash_unassigned_left_out",
                        "schash_unassigned_known") if c in nov]
    nt = nov[cols].copy()
    nov_seeds = sorted({int(c.rsplit("_s", 1)[1]) for c in nov.columns
                        if c.startswith("schash_confidence_s") and c.rsplit("_s", 1)[1].isdigit()
                        and nov[c].notna().any()})
    for c in cols:
        if c in ("schash_confidence", "schash_typicality", "celltypist_maxprob", "schash_unassigned_left_out",
                 "schash_unassigned_known"):
            nt[c] = [fmt(v) for v in nt[c]]
    nt = nt.rename(columns={"schash_confidence": "AUROC schash 1−confidence",
                            "schash_typicality": "AUROC schash 1−typicality",
                            "celltypist_maxprob": "AUROC celltypist 1−maxprob",
                            "schash_unassigned_left_out": "Unassigned left-out",
                            "schash_unassigned_known": "Unassigned known"})
    errc = [c for c in nov.columns if c.endswith("_error")]
    if errc:
        nt["note"] = nov[errc].fillna("").astype(str).agg(" ".join, axis=1).str.strip().str.slice(0, 120)
    return nt, nov_seeds


def alpha_table(nov: pd.DataFrame) -> list[str]:
    """The report's lines on annotation-time ``novelty_alpha``: mean Unassigned fractions at each value."""
    have = [a for a in NOVELTY_ALPHAS if f"schash_unassigned_left_out_alpha{a}" in nov]
    if not have:
        return []
    from schash._model_file import NOVELTY_ALPHA

    alphas = sorted(set(have) | {None}, key=lambda a: NOVELTY_ALPHA if a is None else a)
    rows = []
    for a in alphas:
        sfx = "" if a is None else f"_alpha{a}"
        rows.append({"novelty_alpha": f"{NOVELTY_ALPHA:g} (the default)" if a is None else f"{a:g}",
                     "Unassigned left-out": fmt(np.nanmean(nov[f"schash_unassigned_left_out{sfx}"].astype(float))),
                     "Unassigned known": fmt(np.nanmean(nov[f"schash_unassigned_known{sfx}"].astype(float)))})
    return ["### Unassigned by `novelty_alpha`\n",
            ("The same models and queries annotated with other `novelty_alpha` values "
             "(`predict(novelty_alpha=)`, R's `schash_annotate(..., novelty_alpha =)`, the CLI's "
             "`--novelty-alpha`; only `pruned_label` changes): mean over the tasks above and the seeds.\n"),
            md_table(pd.DataFrame(rows)), ""]


def fmt(x, nd=3, sign=False):
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return ""
    return f"{x:+.{nd}f}" if sign else f"{x:.{nd}f}"


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
        rec = {"dataset": ds, "method": m, "folds": len(g), "ok": len(ok), "note": "; ".join(errs)}
        for c in ("macro_f1", "accuracy", "median_f1", "fit_s", "predict_s", "unassigned_frac"):
            rec[c] = ok[c].mean() if len(ok) and c in ok else np.nan
        out.append(rec)
    return pd.DataFrame(out)


def gaps(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, schash method): best peer on that task and the gap in macro F1."""
    out = []
    ok = rows[rows["error"].fillna("") == ""]
    for (ds, fold), g in ok.groupby(["dataset", "fold"], sort=False):
        f1 = dict(zip(g["method"], g["macro_f1"].astype(float)))
        peers = {m: v for m, v in f1.items() if m in PEERS and not np.isnan(v)}
        if not peers:
            continue
        best = max(peers, key=peers.get)
        for m in SCHASH_CONFIGS:
            if m in f1 and not np.isnan(f1[m]):
                out.append({"dataset": ds, "fold": fold, "kind": task_kind(fold), "best_peer": best,
                            "best_peer_f1": peers[best], "method": m, "f1": f1[m], "gap": f1[m] - peers[best]})
    return pd.DataFrame(out)


def gap_summary(gp: pd.DataFrame) -> pd.DataFrame:
    out = []
    for scope, sub in (("cross-batch", gp[gp["kind"] == "cross-batch"]), ("all", gp)):
        for m in [m for m in SCHASH_CONFIGS if m in set(sub["method"])]:
            g = sub[sub["method"] == m]
            w = g.loc[g["gap"].idxmin()]
            out.append({"tasks": scope, "configuration": m,
                        ">= best peer − 0.02": f"{int((g['gap'] >= -0.02 - 1e-9).sum())} / {len(g)}",
                        ">= best peer": f"{int((g['gap'] >= -1e-9).sum())} / {len(g)}",
                        "mean gap": fmt(g["gap"].mean(), sign=True),
                        "worst gap (task)": f"{fmt(w['gap'], sign=True)} ({w['dataset']} {w['fold']})"})
    return pd.DataFrame(out)


def single_type_summary(st: pd.DataFrame):
    """Per (dataset, fold, variant): cell-weighted single-type and skewed figures; and means per variant."""
    st = st[st["error"].fillna("") == ""] if "error" in st else st
    per = []
    for (ds, fold, var), g in st.groupby(["dataset", "fold", "variant"], sort=False):
        rec = {"dataset": ds, "fold": fold, "variant": var}
        s = g[g["query"] == "single type"]
        if len(s):
            w = s["n_cells"].to_numpy(dtype=float)
            worst = s.loc[s["agreement"].idxmin()]
            rec.update(types=len(s), cells=int(w.sum()),
                       agreement=np.average(s["agreement"], weights=w),
                       acc_alone=np.average(s["acc_alone"], weights=w),
                       acc_in_full=np.average(s["acc_in_full"], weights=w),
                       lowest=f"{fmt(worst['agreement'])} ({worst['subset']})")
            rec["acc_diff"] = rec["acc_alone"] - rec["acc_in_full"]
        k = g[g["query"] == "skewed"]
        if len(k):
            k = k.iloc[0]
            rec.update(skew_subset=k["subset"], skew_cells=int(k["n_cells"]), skew_agreement=k["agreement"],
                       skew_acc_alone=k["acc_alone"], skew_acc_in_full=k["acc_in_full"], skew_acc_diff=k["acc_diff"])
        per.append(rec)
    per = pd.DataFrame(per)
    num = [c for c in ("agreement", "acc_alone", "acc_in_full", "acc_diff", "skew_agreement", "skew_acc_alone",
                       "skew_acc_in_full", "skew_acc_diff") if c in per]
    means = per.groupby("variant", sort=False)[num].mean() if len(per) else pd.DataFrame()
    return per, means


def call_section(rows: pd.DataFrame, seeds: pd.DataFrame | None) -> list[str]:
    """How well each method's per-cell score tells its correct calls from its wrong ones, per cross-batch task."""
    if "call_auroc" not in rows:
        return []
    cb = rows[(rows["kind"] == "cross-batch") & rows["method"].isin(["schash", *PEERS])]
    piv = cb.pivot_table(index=["dataset", "fold"], columns="method", values="call_auroc", sort=False)
    if seeds is not None and "call_auroc" in seeds:
        by = seeds[seeds["kind"] == "cross-batch"].groupby(["dataset", "fold"], sort=False)
        piv["schash, mean of seeds"] = by["call_auroc"].mean().reindex(piv.index)
        if "call_auroc_unclear" in seeds:
            piv["the same without clarity"] = by["call_auroc_unclear"].mean().reindex(piv.index)
    piv = piv.dropna(how="all")
    if not len(piv):
        return []
    cols = [c for c in ["schash", "schash, mean of seeds", "the same without clarity", *PEERS] if c in piv]
    tab = pd.DataFrame({"dataset": [i[0] for i in piv.index], "fold": [i[1] for i in piv.index],
                        **{c: [fmt(v) for v in piv[c]] for c in cols}})
    both = piv[cols].dropna()  # tasks where every method has wrong and right calls
    mean = "; ".join(f"{c} {fmt(both[c].mean())}" for c in cols)
    return ["### Does the score flag the wrong calls?\n",
            ("Cross-batch tasks: AUROC of each method's own per-cell score for telling its correct calls from its "
             "wrong ones among the scored query cells (schash: `confidence`, seed 0 and the mean over its seeds, "
             "and that mean for the same models' confidence without its clarity factor; "
             "CellTypist: maximum probability; kNN-PCA: the winning vote share; SingleR: the top score; Seurat: "
             "`prediction.score.max`). Empty where a method made no wrong call.\n"), md_table(tab), "",
            f"Means over the {len(both)} tasks where every method made right and wrong calls: {mean}.", ""]


def seed_section(seeds: pd.DataFrame, gp: pd.DataFrame) -> list[str]:
    """The defaults' macro F1 over several training seeds, per task, against the task's best peer."""
    sd = seeds[seeds["error"].fillna("") == ""] if "error" in seeds else seeds
    peer = gp[gp["method"] == "schash"].set_index(["dataset", "fold"])
    tab, gaps_mean, within, proto_gaps, plain_gaps = [], [], {}, [], []
    for (ds, fold), g in sd.groupby(["dataset", "fold"], sort=False):
        if (ds, fold) not in peer.index:
            continue
        p = peer.loc[(ds, fold)]
        f1 = g["macro_f1"].astype(float)
        gap = f1.mean() - p["best_peer_f1"]
        proto = g["macro_f1_anchor"].astype(float) if "macro_f1_anchor" in g else None
        plain = g["macro_f1_norare"].astype(float) if "macro_f1_norare" in g else None
        if p["kind"] == "cross-batch":
            gaps_mean.append(gap)
            if proto is not None:
                proto_gaps.append(proto.mean() - p["best_peer_f1"])
            if plain is not None:
                plain_gaps.append(plain.mean() - p["best_peer_f1"])
            for seed, v in zip(g["seed"], f1, strict=True):
                within.setdefault(seed, []).append(v - p["best_peer_f1"] >= -0.02 - 1e-9)
        tab.append({"dataset": ds, "fold": fold, "kind": p["kind"], "best peer": p["best_peer"],
                    "peer F1": fmt(p["best_peer_f1"]), "schash F1, seeds": " / ".join(fmt(v) for v in f1),
                    "mean": fmt(f1.mean()), "min–max": f"{fmt(f1.min())}–{fmt(f1.max())}",
                    "gap of the mean": fmt(gap, sign=True),
                    **({"anchor call: mean": fmt(proto.mean()), "its gap": fmt(proto.mean() - p["best_peer_f1"], sign=True)}
                       if proto is not None else {}),
                    **({"no rare contest: mean": fmt(plain.mean()),
                        "no rare contest: gap": fmt(plain.mean() - p["best_peer_f1"], sign=True)} if plain is not None else {})})
    if not tab:
        return []
    g = np.array(gaps_mean)
    per_seed = [int(np.sum(v)) for v in within.values()]
    seeds_used = sorted(sd["seed"].unique())
    summary = ("No cross-batch task in this run (every dataset has one batch)." if not len(g) else
               f"Cross-batch tasks: the mean over seeds is within 0.02 of the best peer on "
               f"{int((g >= -0.02 - 1e-9).sum())} of {len(g)} and at or above it on {int((g >= -1e-9).sum())}; "
               f"mean gap {fmt(g.mean(), sign=True)}. Single seeds: within 0.02 on {min(per_seed)}–{max(per_seed)} "
               f"of {len(g)}.")
    if len(proto_gaps) == len(g) and len(g):
        pg = np.array(proto_gaps)
        summary += (f" The same models' nearest-anchor call (`method=\"anchor\"`): within 0.02 on "
                    f"{int((pg >= -0.02 - 1e-9).sum())} of {len(pg)}, at or above on {int((pg >= -1e-9).sum())}; "
                    f"mean gap {fmt(pg.mean(), sign=True)}.")
    if len(plain_gaps) == len(g) and len(g):
        pg = np.array(plain_gaps)
        summary += (f" The same models without the rare types' contest (`rare_type_cells=0`): within 0.02 on "
                    f"{int((pg >= -0.02 - 1e-9).sum())} of {len(pg)}, at or above on {int((pg >= -1e-9).sum())}; "
                    f"mean gap {fmt(pg.mean(), sign=True)}.")
    return ["### The defaults over training seeds\n",
            (f"The defaults (`schash`) trained with seeds {', '.join(str(s) for s in seeds_used)} on every task; the "
             "peers are deterministic. Small folds move with the seed, so the mean is the fairer comparison.\n"),
            md_table(pd.DataFrame(tab)), "", summary, ""]


def write_report(out: Path, rows: pd.DataFrame, st: pd.DataFrame, nov: pd.DataFrame, meta: dict, warn_log: Counter,
                 notes: list[str], seeds: pd.DataFrame | None = None):
    agg = aggregate(rows)
    present = [m for m in SCHASH_CONFIGS if m in set(rows["method"])]
    lines = ["# schash accuracy benchmark\n",
             f"- date: {meta['date']}",
             f"- command: `{meta['command']}`",
             f"- machine: {meta['machine']}",
             f"- wall time: {meta['wall_s']:.0f} s",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
             "",
             ("Tasks: leave-one-batch-out (`cross-batch`) where a dataset has >= 2 batches, else a stratified random "
              "50/50 split (`random split`, seed 0). Query cells of types missing from the reference are predicted but "
              "not scored. Scores use each method's unpruned label; `unassigned` is the fraction of scored query cells "
              "schash's `pruned_label` leaves Unassigned. Macro F1 and median F1 are over the query's scored types. "
              "Times are per fold in seconds (R methods: inside R, excluding R start-up; Seurat's fit includes "
              "finding transfer anchors, which needs the query)."),
             "",
             ("schash configurations (every one trained with seed 0 and `batch_key=\"batch\"` where the reference "
              "has >= 2 batches; configurations with the same training arguments share one model, and so does "
              "`schash-min10` with `schash` on folds where every reference type has >= 10 cells):"),
             ""] + [f"- `{m}`: {SCHASH_TEXT[m]}" for m in present] + [
             "",
             ("Peers: `celltypist` (logistic regression, use_SGD=False), `knn-pca` (2000 HVG of the reference, "
              "reference-scaled, PCA 50, k=15), `singler` and `seurat` (label transfer, PCA 30) in R."),
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
    lines += ["## 1. Accuracy per dataset and method (means over folds)\n", md_table(t1), ""]
    drops = rows.drop_duplicates(["dataset", "fold"])
    drops = drops[drops["n_dropped"] > 0]
    if len(drops):
        lines += ["Query cells not scored (type absent from the reference): " + "; ".join(
            f"{r.dataset} {r.fold}: {r.n_dropped} ({r.dropped_types})" for r in drops.itertuples()), ""]

    # 2. gap to the best peer per task
    gp = gaps(rows)
    if len(gp):
        lines += ["## 2. Gap to the best peer per task\n",
                  "Per task (fold), the best of " + ", ".join(PEERS) + " by macro F1 (a peer that failed on a task "
                  "is ignored there) and each schash configuration's macro F1 minus it (negative: behind).\n"]
        tab = []
        for (ds, fold), g in gp.groupby(["dataset", "fold"], sort=False):
            gm = dict(zip(g["method"], g["gap"]))
            f1 = dict(zip(g["method"], g["f1"]))
            r0 = g.iloc[0]
            rec = {"dataset": ds, "fold": fold, "kind": r0["kind"], "best peer": r0["best_peer"],
                   "peer F1": fmt(r0["best_peer_f1"]), "schash F1": fmt(f1.get("schash", np.nan)),
                   "gap": fmt(gm.get("schash", np.nan), sign=True)}
            for m in present:
                if m != "schash":
                    rec[f"gap {m}"] = fmt(gm.get(m, np.nan), sign=True)
            tab.append(rec)
        lines += [md_table(pd.DataFrame(tab)), "", "### Summary per configuration\n",
                  ("Tasks where the configuration is within 0.02 of the best peer, at or above it, the mean gap and "
                   "the worst gap; cross-batch tasks and all tasks.\n"), md_table(gap_summary(gp)), ""]
        if seeds is not None and len(seeds) and "macro_f1" in seeds:
            lines += seed_section(seeds, gp)
        lines += call_section(rows, seeds)

    # 3. single-type and skewed queries
    if len(st) and "agreement" in st:
        per, means = single_type_summary(st)
        show = pd.DataFrame({
            "dataset": per["dataset"], "fold": per["fold"], "variant": per["variant"],
            "types": per.get("types", ""), "cells": per.get("cells", ""),
            "agreement": [fmt(v) for v in per.get("agreement", [])],
            "lowest (type)": per.get("lowest", ""),
            "acc alone": [fmt(v) for v in per.get("acc_alone", [])],
            "acc in full": [fmt(v) for v in per.get("acc_in_full", [])],
            "diff": [fmt(v, sign=True) for v in per.get("acc_diff", [])],
            "skewed query": per.get("skew_subset", ""), "skewed cells": per.get("skew_cells", ""),
            "skewed agreement": [fmt(v) for v in per.get("skew_agreement", [])],
            "skewed acc alone": [fmt(v) for v in per.get("skew_acc_alone", [])],
            "skewed acc in full": [fmt(v) for v in per.get("skew_acc_in_full", [])],
            "skewed diff": [fmt(v, sign=True) for v in per.get("skew_acc_diff", [])]})
        lines += ["## 3. Calls independent of the rest of the query\n",
                  ("Cross-batch folds. The fold's model annotates (a) each query type alone (types with >= "
                   f"{MIN_SINGLE_TYPE} scored cells) and (b) a skewed query: every cell of the most frequent type plus a "
                   "random (seed 0) subset of the other types' cells making up 10 %. `agreement`: fraction of those "
                   "cells whose label equals their label in the full-query prediction (single types: pooled over the "
                   "types, `lowest`: the type with the lowest agreement); `acc alone` / `acc in full`: accuracy of "
                   "those cells annotated on their own / inside the full query; `diff` = alone − in full. "
                   "Rows per subset: `single_type.csv`.\n"), md_table(show), ""]
        if len(means):
            mt = means.reset_index()
            names = {"agreement": "agreement", "acc_alone": "acc alone", "acc_in_full": "acc in full",
                     "acc_diff": "diff", "skew_agreement": "skewed agreement", "skew_acc_alone": "skewed acc alone",
                     "skew_acc_in_full": "skewed acc in full", "skew_acc_diff": "skewed diff"}
            lines += ["Means over folds (single types: cell-weighted within a fold):", "", md_table(pd.DataFrame(
                {names.get(c, c): (mt[c] if c == "variant" else [fmt(v, sign=c.endswith("diff")) for v in mt[c]])
                 for c in mt.columns})), ""]
    if len(st) and "error" in st and (st["error"].fillna("") != "").any():
        lines += ["Errors: " + "; ".join(f"{r.dataset} {r.fold} {r.variant}: {r.error}"
                                         for r in st[st["error"].fillna("") != ""].itertuples()), ""]

    # 4. unknown types across batches (the fine-grained guard apart: it is not part of the targets)
    guard = nov[nov["dataset"] == GUARD] if len(nov) else nov
    nov = nov[nov["dataset"] != GUARD] if len(nov) else nov
    if len(nov):
        nt, nov_seeds = novelty_table(nov)
        lines += ["## 4. Unknown types across batches\n",
                  ("Datasets with >= 2 batches; the first leave-one-batch-out fold and the fold whose query batch is "
                   f"the largest. Each reference type with >= {MIN_LEFT_OUT} cells in both reference and query is "
                   "removed from the reference in turn (schash defaults and CellTypist trained on the reduced "
                   "reference); the query holds the query cells of the types in the full reference, so the left-out "
                   "type is the only novelty. AUROC of `1 − confidence`, `1 − typicality` (schash) and "
                   "`1 − max probability` (CellTypist) with the left-out cells as positives; `Unassigned`: fraction "
                   "of left-out / known-type query cells schash's `pruned_label` marks Unassigned. schash's columns "
                   f"are means over its training seeds ({', '.join(str(x) for x in nov_seeds) or SEED}; each seed "
                   "in `novelty.csv`).\n"), md_table(nt), ""]
        mean = {c: np.nanmean(nov[c].to_numpy(dtype=float)) if c in nov else np.nan
                for c in ("schash_confidence", "schash_typicality", "celltypist_maxprob", "schash_unassigned_left_out",
                          "schash_unassigned_known", "schash_confidence_unclear")}
        hold = {
            f"mean Unassigned left-out >= {TARGETS['unassigned_left_out']:.2f}":
                mean["schash_unassigned_left_out"] >= TARGETS["unassigned_left_out"],
            f"mean Unassigned known <= {TARGETS['unassigned_known']:.2f}":
                mean["schash_unassigned_known"] <= TARGETS["unassigned_known"],
            f"mean AUROC (1 − confidence) >= {TARGETS['auroc']:.2f}": mean["schash_confidence"] >= TARGETS["auroc"]}
        lines += [f"Summary over {len(nov)} tasks: mean AUROC schash 1−confidence {fmt(mean['schash_confidence'])} "
                  f"(the same models without the clarity factor {fmt(mean['schash_confidence_unclear'])}), "
                  f"1−typicality {fmt(mean['schash_typicality'])}, CellTypist 1−maxprob "
                  f"{fmt(mean['celltypist_maxprob'])}; mean Unassigned left-out {fmt(mean['schash_unassigned_left_out'])}"
                  f" / known {fmt(mean['schash_unassigned_known'])}. Targets: " + "; ".join(
                      f"{k}: {'holds' if v else 'MISSED'}" for k, v in hold.items()) + ".", ""]
        if len(nov_seeds) > 1:
            per = {c: [np.nanmean(nov[f"{c}_s{x}"].to_numpy(dtype=float)) if f"{c}_s{x}" in nov else np.nan
                       for x in nov_seeds] for c in NOVELTY_COLUMNS}
            lines += ["Per seed (" + ", ".join(str(x) for x in nov_seeds) + "): mean AUROC 1−confidence " +
                      " / ".join(fmt(v) for v in per["schash_confidence"]) + "; Unassigned left-out " +
                      " / ".join(fmt(v) for v in per["schash_unassigned_left_out"]) + ", known " +
                      " / ".join(fmt(v) for v in per["schash_unassigned_known"]) + ".", ""]
        lines += alpha_table(nov)
        # the other side of the trade-off: known-type cells Unassigned when every query type is in the reference
        full = rows[(rows["method"] == "schash") & (rows["kind"] == "cross-batch")]["unassigned_frac"].astype(float)
        if len(full):
            text = (f"For comparison, on the {len(full)} full-reference cross-batch tasks of section 1 (every query "
                    f"type known) schash leaves a mean {fmt(full.mean())} of the query cells `Unassigned` "
                    f"(range {fmt(full.min())}–{fmt(full.max())})")
            if seeds is not None and "unassigned_frac" in seeds and "kind" in seeds:
                sx = seeds[seeds["kind"] == "cross-batch"].groupby("seed")["unassigned_frac"].mean()
                if len(sx) > 1:
                    text += (f"; over seeds {', '.join(str(int(x)) for x in sx.index)} "
                             f"{' / '.join(fmt(v) for v in sx)} (mean {fmt(sx.mean())})")
            lines += [text + ": a scorer that catches more left-out cells must be judged on both.", ""]
    if len(guard):
        gt, g_seeds = novelty_table(guard)
        gm = {c: np.nanmean(guard[c].to_numpy(dtype=float)) if c in guard else np.nan for c in NOVELTY_COLUMNS}
        ct = np.nanmean(guard["celltypist_maxprob"].to_numpy(dtype=float)) if "celltypist_maxprob" in guard else np.nan
        lines += ["### Fine-grained guard: one study, close subtypes (not part of the targets)\n",
                  (f"{GUARD}: scanpy's bundled pbmc68k_reduced (ten sorted-population labels, T-cell subsets among "
                   "them), a stratified 60/40 split, the query perturbed by the simulated technology shift of "
                   "`tests/test_transfer.py` (gene-wise capture factors, 20 % of values lost); each type with "
                   f">= {MIN_LEFT_OUT} cells in reference and query left out in turn, as above. Scorers that weigh "
                   "how ambiguous a call is (a classifier's probability, between-type margins, centrality in the "
                   "hidden layer) rank the cross-batch tasks above better and these worse — known cells of close "
                   "subtypes are ambiguous too, a left-out type may be unambiguously like one known type — so a "
                   "change to the scorer is judged on both.\n"), md_table(gt), "",
                  f"Mean over {len(guard)} tasks: AUROC schash 1−confidence {fmt(gm['schash_confidence'])} (without "
                  f"the clarity factor {fmt(gm['schash_confidence_unclear'])}), "
                  f"1−typicality {fmt(gm['schash_typicality'])}, CellTypist 1−maxprob {fmt(ct)}; Unassigned "
                  f"left-out {fmt(gm['schash_unassigned_left_out'])} / known {fmt(gm['schash_unassigned_known'])}"
                  + (" (schash: means over seeds " + ", ".join(str(x) for x in g_seeds) + ")." if g_seeds else "."),
                  ""]

    if warn_log:
        lines += ["## Warnings raised during the run (count)\n"] + [
            f"- {n}× {msg}" for msg, n in warn_log.most_common(25)] + [""]
    text = "\n".join(lines)
    (out / "accuracy.md").write_text(text)
    return text


def versions():
    pk = {}
    for name in ("schash-annotate", "torch", "scanpy", "anndata", "scikit-learn", "celltypist", "faiss-cpu", "numpy"):
        try:
            pk[name] = version(name)
        except PackageNotFoundError:
            pk[name] = "not installed"
    if shutil.which("Rscript"):
        rc = subprocess.run(["Rscript", "-e", ('cat(R.version$major, ".", R.version$minor, sep=""); for (p in c("SingleR", "Seurat")) '
                              'cat("", p, tryCatch(as.character(packageVersion(p)), error=function(e) "absent"))')],
                            capture_output=True, text=True, check=False)
        pk["R"] = rc.stdout.strip()
    return pk


# ----------------------------------------------------------------------------- main


def read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if path.exists() and path.stat().st_size > 1 else pd.DataFrame()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--methods", nargs="+", default=ALL_METHODS, choices=ALL_METHODS)
    ap.add_argument("--datasets", nargs="+", metavar="NAME", help="only these datasets (file stems)")
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK_DATASETS)} (smoke test)")
    ap.add_argument("--no-novelty", action="store_true", help="skip the unknown-type tasks")
    ap.add_argument("--no-single-type", action="store_true", help="skip the single-type and skewed queries")
    ap.add_argument("--no-guard", action="store_true", help="skip the fine-grained guard (pbmc68k_reduced)")
    ap.add_argument("--seeds", type=int, default=5,
                    help="train the defaults with seeds 0..N-1 on every task and report the spread (1: seed 0 only)")
    ap.add_argument("--report-only", action="store_true",
                    help="rebuild OUT/accuracy.md from OUT/accuracy.csv, single_type.csv, novelty.csv and "
                         "accuracy_meta.json")
    args = ap.parse_args(argv)
    if args.report_only:
        meta = json.loads((args.out / "accuracy_meta.json").read_text())
        rows = pd.read_csv(args.out / "accuracy.csv", keep_default_na=False, na_values=[""])
        rows["error"] = rows["error"].fillna("")
        rows["dropped_types"] = rows["dropped_types"].fillna("")
        st = read_csv(args.out / "single_type.csv")
        nov = read_csv(args.out / "novelty.csv")
        sd = read_csv(args.out / "seeds.csv") if (args.out / "seeds.csv").exists() else None
        print(write_report(args.out, rows, st, nov, meta, Counter(meta.pop("warnings", {})), meta.pop("notes", []),
                           sd))
        return
    if not args.data_dir.is_dir():
        sys.exit(f"data directory {args.data_dir} not found: pass the folder with the benchmark .h5ad files")

    logging.getLogger("schash").setLevel(logging.WARNING)
    files = sorted(args.data_dir.glob("*.h5ad"))
    if args.quick:
        files = [f for f in files if f.stem in QUICK_DATASETS]
    if args.datasets:
        missing = sorted(set(args.datasets) - {f.stem for f in files})
        if missing:
            sys.exit(f"no such dataset in {args.data_dir}: {', '.join(missing)}")
        files = [f for f in files if f.stem in args.datasets]
    if not files:
        sys.exit(f"no .h5ad files in {args.data_dir}")
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    r_status = r_available() if {"singler", "seurat"} & set(args.methods) else {}
    notes = [f"{m}: {s}" for m, s in r_status.items() if s]
    warn_log: Counter = Counter()
    rows, st, nov, sd = [], [], [], []

    def save():
        pd.DataFrame(sd).to_csv(args.out / "seeds.csv", index=False)
        pd.DataFrame(rows).to_csv(args.out / "accuracy.csv", index=False)
        pd.DataFrame(st).to_csv(args.out / "single_type.csv", index=False)
        pd.DataFrame(nov).to_csv(args.out / "novelty.csv", index=False)

    for f, label in [(f, label) for f in files for label in label_columns(f)]:
        ds = f.stem if label == "cell_type" else f"{f.stem}:{label}"
        adata = read_dataset(f, label)
        peer = log_normalised(adata)
        print(f"{ds}: {adata.n_obs} cells × {adata.n_vars} genes, X={adata.uns.get('X_kind')}", flush=True)
        folds = splits(adata)
        for fold, r_idx, q_idx in folds:
            r, s, e = classification_task(ds, fold, adata, peer, r_idx, q_idx, args.methods, r_status, warn_log,
                                          single_type=not args.no_single_type,
                                          seeds=tuple(range(SEED + 1, SEED + args.seeds)))
            rows += r
            st += s
            sd += e
        if not args.no_novelty and has_batches(adata):
            for fold, r_idx, q_idx in novelty_folds(folds):
                nov += novelty_tasks(ds, adata, fold, r_idx, q_idx, args.methods, warn_log,
                                     seeds=tuple(range(SEED, SEED + args.seeds)))
        save()
    if not args.no_novelty and not args.no_guard and not args.quick and not args.datasets:
        adata, r_idx, q_idx = guard_dataset()
        print(f"{GUARD}: {adata.n_obs} cells × {adata.n_vars} genes", flush=True)
        nov += novelty_tasks(GUARD, adata, "60/40, query shifted", r_idx, q_idx, args.methods, warn_log,
                             seeds=tuple(range(SEED, SEED + args.seeds)))
    save()
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": "python bench/accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": f"{platform.platform()}, {os.cpu_count()} CPUs (nproc), Python {platform.python_version()}",
            "wall_s": time.perf_counter() - t_start, "versions": versions()}
    (args.out / "accuracy_meta.json").write_text(json.dumps(dict(meta, notes=notes, warnings=dict(warn_log)), indent=1))
    print(write_report(args.out, pd.DataFrame(rows), pd.DataFrame(st), pd.DataFrame(nov), meta, warn_log, notes,
                       pd.DataFrame(sd)))


if __name__ == "__main__":
    main()
