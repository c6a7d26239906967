"""Check a model file's metadata and tensors against each other before building a model from them.

A file that was edited or damaged must not load into a model that predicts wrong or
crashes later: every shape must agree with the metadata (genes, cell types, anchors,
bits, reference database, batches, network layers, novelty tensors), every index must
be in range and every number finite.  Sizes are only ever taken from the tensors (which
are bounded by the file's size) after the metadata has been compared with them, so a
header promising ``n_genes = 1e9`` cannot make schash allocate memory for it.
Any inconsistency raises :class:`ModelFileError` naming it.
"""

from __future__ import annotations

import math

import numpy as np

from ._errors import ModelFileError
from ._levels import meta_problem

KINDS = ("counts", "log", "normalised")
TRANSFORMS = ("log", "rank")
SCALES = ("batch", "reference")
_PRE_NUMBERS = {"target_sum": (0, False), "clip": (0, False), "std_floor": (0, True)}
_NOVELTY = ("novelty.components", "novelty.center", "novelty.bank", "novelty.calibration")
_CLARITY = ("novelty.clarity_coef", "novelty.clarity_intercept", "novelty.clarity_calibration")


class _Checker:
    def __init__(self, path):
        self.path = path

    def fail(self, what: str):
        raise ModelFileError(f"{self.path} is damaged or was edited: {what}. Re-save or retrain the model")

    def is_int(self, name, v, lo=None, hi=None) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo) or (hi is not None and v > hi):
            self.fail(f"{name} must be a whole number in [{lo}, {hi}], not {_short(v)}")
        return v

    def is_number(self, name, v, lo=None, hi=None, *, lo_open=False) -> float:
        ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
        if ok and lo is not None:
            ok = v > lo if lo_open else v >= lo
        if ok and hi is not None:
            ok = v <= hi
        if not ok:
            self.fail(f"{name} must be a finite number{f' above {lo}' if lo_open else ''}, not {_short(v)}")
        return float(v)

    def strings(self, name, v, min_len=0) -> list[str]:
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
            self.fail(f"{name} must be a list of strings")
        if len(set(v)) != len(v):
            self.fail(f"{name} holds duplicates")
        if len(v) < min_len:
            self.fail(f"{name} has {len(v)} entries; at least {min_len} are needed")
        return v

    def dict_(self, name, v) -> dict:
        if not isinstance(v, dict):
            self.fail(f"{name} must be a JSON object, not {type(v).__name__}")
        return v

    def tensor(self, t, name, shape, dtype) -> np.ndarray:
        if name not in t:
            self.fail(f"the tensor {name!r} is missing")
        a = t[name]
        want = tuple(shape)
        if a.ndim != len(want) or any(w is not None and s != w for s, w in zip(a.shape, want, strict=True)):
            shown = tuple("*" if w is None else w for w in want)
            self.fail(f"tensor {name!r} has shape {a.shape}, the metadata implies {shown}")
        if a.dtype != np.dtype(dtype):
            self.fail(f"tensor {name!r} has dtype {a.dtype}, expected {np.dtype(dtype)}")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            self.fail(f"tensor {name!r} holds NaN or infinite values")
        return a

    def codes_in_range(self, name, a, n):
        if a.size and (a.min() < 0 or a.max() >= n):
            self.fail(f"tensor {name!r} holds values outside [0, {n}) (there are {n} categories)")


def _short(v) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def check_meta(meta, path) -> None:
    """The metadata alone: types, ranges and the fields every other check relies on."""
    c = _Checker(path)
    c.dict_("the metadata", meta)
    for key in ("cell_types", "threshold", "module", "preprocessing", "novelty_k", "params"):
        if key not in meta:
            c.fail(f"the metadata has no {key!r} field")
    if "Unassigned" in c.strings("cell_types", meta["cell_types"], min_len=2):
        c.fail("'Unassigned' is listed as a cell type; it is reserved for unassigned cells")
    mod = c.dict_("module", meta["module"])
    missing = {"n_genes", "n_bits", "hidden", "dropout"} - set(mod)
    if missing:
        c.fail(f"module lacks the fields {sorted(missing)}")
    c.is_int("module.n_genes", mod["n_genes"], 1)
    n_bits = c.is_int("module.n_bits", mod["n_bits"], 8)
    if n_bits % 8:
        c.fail(f"module.n_bits is {n_bits}, not a multiple of 8")
    if not isinstance(mod["hidden"], list) or len(mod["hidden"]) > 64:
        c.fail("module.hidden must be a list of layer widths")
    for w in mod["hidden"]:
        c.is_int("a hidden layer width", w, 1)
    c.is_number("module.dropout", mod["dropout"], 0, 1)
    c.is_int("threshold", meta["threshold"], 0, n_bits)
    c.is_int("novelty_k", meta["novelty_k"], 1)
    if meta.get("novelty_metric", "euclidean") not in ("cosine", "euclidean"):
        c.fail(f"novelty_metric must be 'cosine' or 'euclidean', not {str(meta.get('novelty_metric'))[:40]!r}")
    if "novelty_tail" in meta:  # absent from models saved before the tail
        c.is_number("novelty_tail", meta["novelty_tail"], 0, 1)
    pre = c.dict_("preprocessing", meta["preprocessing"])
    if "genes" not in pre:  # fields this check does not know are left to Preprocessor.from_meta
        c.fail("preprocessing has no 'genes' field")
    genes = c.strings("preprocessing.genes", pre["genes"], min_len=1)
    if len(genes) != mod["n_genes"]:
        c.fail(f"module.n_genes is {mod['n_genes']} but the model lists {len(genes)} genes")
    for key in ("gene_ids", "gene_symbols"):  # optional: absent from models saved before they were kept
        if key in pre:
            v = pre[key]
            if not isinstance(v, list) or len(v) != len(genes) or not all(x is None or isinstance(x, str) for x in v):
                c.fail(f"preprocessing.{key} must list a name or null for each of the {len(genes)} genes")
    if pre.get("species") not in (None, "human", "mouse"):
        c.fail(f"preprocessing.species is {_short(pre['species'])}, not 'human', 'mouse' or absent")
    for key, allowed in (("transform", TRANSFORMS), ("scale", SCALES), ("input_kind", KINDS)):
        if key in pre and pre[key] not in allowed:
            c.fail(f"preprocessing.{key} is {_short(pre[key])}, not one of {allowed}")
    for key, (lo, closed) in _PRE_NUMBERS.items():
        if key in pre:
            c.is_number(f"preprocessing.{key}", pre[key], lo, lo_open=not closed)
    if "min_cells_own_scaling" in pre:
        c.is_int("preprocessing.min_cells_own_scaling", pre["min_cells_own_scaling"], 0)
    params = c.dict_("params", meta["params"])
    if "novelty_alpha" in params:
        c.is_number("params.novelty_alpha", params["novelty_alpha"], 0, 1)
    history = c.dict_("history", meta.get("history", {}))
    if "best_val_macro_f1" in history:
        c.is_number("history.best_val_macro_f1", history["best_val_macro_f1"])
    if not isinstance(history.get("epoch", []), list):
        c.fail("history.epoch must be a list")
    if meta.get("batch_categories") is not None:
        c.strings("batch_categories", meta["batch_categories"], min_len=1)
    cats = c.dict_("ref_meta_categories", meta.get("ref_meta_categories", {}))
    for key, values in cats.items():
        c.strings(f"ref_meta_categories[{key!r}]", values)
    if meta.get("levels") is not None:  # label levels (schash._levels); older files have none
        problem = meta_problem(meta["levels"], meta["cell_types"])
        if problem:
            c.fail(problem)


def check_tensors(meta, t: dict, path) -> None:
    """Every tensor against the metadata and the other tensors (call :func:`check_meta` first)."""
    import torch

    from ._module import HashMLP

    c = _Checker(path)
    mod, n_types = meta["module"], len(meta["cell_types"])
    n_genes, n_bits = mod["n_genes"], mod["n_bits"]
    try:
        with torch.device("meta"):  # the expected layer shapes, without allocating the layers
            shapes = {f"net.{k}": tuple(v.shape) for k, v in
                      HashMLP(n_genes, n_bits, tuple(mod["hidden"]), mod["dropout"]).state_dict().items()}
    except Exception as err:  # noqa: BLE001 - any failure here means the layer description is unusable
        c.fail(f"the network description {mod} is unusable ({err})")
    have_net = {k for k in t if k.startswith("net.")}
    if have_net != set(shapes):
        c.fail(f"the network tensors {sorted(have_net ^ set(shapes))[:5]} do not match the layers {mod['hidden']}")
    for name, shape in shapes.items():
        c.tensor(t, name, shape, np.float32)
    anchors = c.tensor(t, "anchors", (n_types, n_bits), np.float32)
    if not np.isin(anchors, (-1.0, 1.0)).all():
        c.fail("the anchors hold values other than -1 and +1")
    if len(np.unique(anchors, axis=0)) != n_types:
        c.fail("two cell types have the same anchor")
    c.tensor(t, "ref_mean", (n_genes,), np.float32)
    std = c.tensor(t, "ref_std", (n_genes,), np.float32)
    if (std <= 0).any():
        c.fail("ref_std holds values that are not positive")
    codes = c.tensor(t, "ref_codes", (None, n_bits // 8), np.uint8)
    n_ref = codes.shape[0]
    if n_ref < 1:
        c.fail("the reference database is empty")
    c.codes_in_range("ref_labels", c.tensor(t, "ref_labels", (n_ref,), np.int32), n_types)
    cats = meta.get("batch_categories")
    if ("ref_batches" in t) != (cats is not None):
        c.fail("reference batches and batch_categories must be both present or both absent")
    if cats is not None:
        c.codes_in_range("ref_batches", c.tensor(t, "ref_batches", (n_ref,), np.int32), len(cats))
    meta_cats = meta.get("ref_meta_categories", {})
    have_meta = {k[len("ref_meta."):] for k in t if k.startswith("ref_meta.")}
    if have_meta != set(meta_cats):
        c.fail(f"reference columns {sorted(have_meta ^ set(meta_cats))[:5]} are in the tensors or the metadata only")
    for key, values in meta_cats.items():
        c.codes_in_range(f"ref_meta.{key}", c.tensor(t, f"ref_meta.{key}", (n_ref,), np.int32), len(values))
    comps = c.tensor(t, "novelty.components", (None, n_genes), np.float32)
    if comps.shape[0] < 1:
        c.fail("the novelty scorer has no components")
    c.tensor(t, "novelty.center", (n_genes,), np.float32)
    bank = c.tensor(t, "novelty.bank", (None, comps.shape[0] + 1), np.float32)
    if bank.shape[0] < 1:
        c.fail("the novelty scorer's reference bank is empty")
    if "novelty.joint_calibration" in t and "novelty.margin_calibration" not in t:
        c.fail("the novelty scorer's joint calibration needs its margin calibration")
    for name in ("novelty.calibration", "novelty.margin_calibration", "novelty.joint_calibration",
                 "novelty.prototype_calibration"):
        if name == "novelty.calibration" or name in t:
            cal = c.tensor(t, name, (None,), np.float32)
            if cal.size < 1 or (np.diff(cal) < 0).any():
                c.fail(f"tensor {name!r} must be a non-empty sorted list")
    if "novelty.prototype_calibration" in t and ("prototypes" not in t or
                                                 np.abs(t["novelty.prototype_calibration"]).max() > 1.0 + 1e-5):
        c.fail("tensor 'novelty.prototype_calibration' holds cosines with the type prototypes: it needs the "
               "'prototypes' tensor and values in [-1, 1]")
    _clarity(c, t, bank.shape[1], meta.get("novelty_metric", "euclidean"))
    joint = t.get("novelty.joint_calibration")
    if joint is not None and joint.shape != t["novelty.margin_calibration"].shape:
        c.fail("the novelty scorer's joint and margin calibrations must hold one value per calibration cell")
    known = set(shapes) | {"anchors", "ref_mean", "ref_std", "ref_codes", "ref_labels", "ref_batches",
                           "novelty.margin_calibration", "novelty.joint_calibration",
                           "novelty.prototype_calibration", *_NOVELTY, *_CLARITY}
    known |= {f"ref_meta.{k}" for k in meta_cats}
    ref_map = meta.get("ref_map")
    if ref_map is not None:  # the reference's 2-D embedding (schash._refmap)
        ref_map = c.dict_("ref_map", ref_map)
        if not isinstance(ref_map.get("basis"), str):
            c.fail("ref_map.basis must be the embedding's name")
        c.is_int("ref_map.k", ref_map.get("k", 10), 1)
        map_bank = c.tensor(t, "ref_map.bank", (None, None), np.float32)
        if not 1 <= map_bank.shape[1] <= comps.shape[0] or map_bank.shape[0] < 1:
            c.fail("tensor 'ref_map.bank' must hold the PCA coordinates of at least one reference cell")
        c.tensor(t, "ref_map.coords", (map_bank.shape[0], 2), np.float32)
        known |= {"ref_map.bank", "ref_map.coords"}
    if "prototypes" in t:  # each type's unit mean hidden layer (method="prototype"); older files lack it
        c.tensor(t, "prototypes", (n_types, mod["hidden"][-1] if mod["hidden"] else None), np.float32)
        known.add("prototypes")
    if any(k.startswith("rare.") for k in t):  # the rare types' contest (schash._rare); absent without rare types
        known |= _check_rare(c, t, n_types, n_genes)
    unknown = sorted(k for k in set(t) - known if not k.startswith("novelty."))  # the scorer picks its own
    for name in sorted(k for k in set(t) - known if k.startswith("novelty.")):
        if t[name].dtype.kind == "f" and not np.isfinite(t[name]).all():
            c.fail(f"tensor {name!r} holds NaN or infinite values")
    if unknown:
        c.fail(f"unexpected tensors {unknown[:5]}")


_RARE = ("rare.types", "rare.markers_from", "rare.markers_to", "rare.data", "rare.indices", "rare.indptr",
         "rare.labels")


def _check_rare(c: _Checker, t: dict, n_types: int, n_genes: int) -> set:
    """The rare types' contest: which types, their markers and the stored reference cells."""
    rare = c.tensor(t, "rare.types", (None,), np.int32)
    c.codes_in_range("rare.types", rare, n_types)
    if rare.size < 1 or len(np.unique(rare)) != rare.size:
        c.fail("tensor 'rare.types' must name at least one type, each once")
    for name in ("rare.markers_from", "rare.markers_to"):
        m = c.tensor(t, name, (rare.size, n_types, None), np.int32)
        if m.size and (m.min() < -1 or m.max() >= n_genes):
            c.fail(f"tensor {name!r} holds gene indices outside [0, {n_genes}) (-1 pads)")
    data = c.tensor(t, "rare.data", (None,), np.float32)
    if (data < 0).any():
        c.fail("tensor 'rare.data' holds negative expression values")
    indices = c.tensor(t, "rare.indices", (data.size,), np.int32)
    c.codes_in_range("rare.indices", indices, n_genes)
    indptr = c.tensor(t, "rare.indptr", (None,), np.int64)
    if indptr.size < 2 or indptr[0] != 0 or indptr[-1] != data.size or (np.diff(indptr) < 0).any():
        c.fail("tensors 'rare.indptr', 'rare.indices' and 'rare.data' are not one sparse matrix")
    labels = c.tensor(t, "rare.labels", (indptr.size - 1,), np.int32)
    c.codes_in_range("rare.labels", labels, n_types)
    if len(np.unique(labels)) != n_types:
        c.fail("tensor 'rare.labels' must hold stored cells of every type")
    return set(_RARE)


def _clarity(c, t, n_features: int, metric: str) -> None:
    """The expression view's type classifier (schash._clarity): all three tensors or none, at least two
    classes over the bank's features (as unit vectors: the cosine bank), and its calibration's largest
    probabilities sorted in [0, 1]."""
    have = [name for name in _CLARITY if name in t]
    if not have:
        return
    if len(have) < len(_CLARITY):
        c.fail(f"the clarity classifier needs the tensors {list(_CLARITY)}; this file has only {have}")
    if metric != "cosine":
        c.fail("the clarity classifier reads the cosine bank's unit vectors; this file's bank is not one")
    coef = c.tensor(t, "novelty.clarity_coef", (None, n_features), np.float32)
    c.tensor(t, "novelty.clarity_intercept", (coef.shape[0],), np.float32)
    cal = c.tensor(t, "novelty.clarity_calibration", (None,), np.float32)
    if coef.shape[0] < 2 or cal.size < 1 or (np.diff(cal) < 0).any() or cal[0] < 0 or cal[-1] > 1.0 + 1e-6:
        c.fail("the clarity classifier needs at least two classes and a non-empty sorted calibration of "
               "probabilities in [0, 1]")
