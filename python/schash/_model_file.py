"""A :class:`~schash.SchashModel` as its file holds it — tensors (name -> array) and JSON metadata —
and back.  Writing and reading the file itself (atomically, validated first) is :mod:`schash._io`'s."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._levels import Hierarchy
from ._module import HashMLP
from ._novelty import NoveltyScorer
from ._preprocess import Preprocessor
from ._rare import RareTypes
from ._refmap import ReferenceMap

# the default of train(novelty_alpha=): chosen on the 31 cross-batch left-out-type tasks of bench/accuracy.py
# (seeds 0-4) where as many full-reference query cells are Unassigned as with the previous typicality at 0.02
NOVELTY_ALPHA = 0.018
LEGACY_NOVELTY_ALPHA = 0.02  # for model files that lack the parameter (saved before it was kept)


def state(model) -> tuple[dict, dict]:
    """The model as the file holds it: tensors (name -> array) and JSON metadata."""
    tensors = {f"net.{k}": v.detach().cpu().numpy() for k, v in model.module.state_dict().items()}
    tensors.update(
        anchors=model.anchors.astype(np.float32),
        ref_mean=model.pre.ref_mean.astype(np.float32),
        ref_std=model.pre.ref_std.astype(np.float32),
        ref_codes=np.ascontiguousarray(model.ref_codes, dtype=np.uint8),
        ref_labels=model.ref_labels.astype(np.int32),
        **{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in model.novelty.to_tensors().items()},
    )
    if model.ref_batches is not None:
        tensors["ref_batches"] = model.ref_batches.astype(np.int32)
    for key, values in model.ref_meta.items():
        tensors[f"ref_meta.{key}"] = np.asarray(values.codes, dtype=np.int32)
    if model.ref_map is not None:
        tensors.update(model.ref_map.to_tensors())
    if model.prototypes is not None:
        tensors["prototypes"] = np.ascontiguousarray(model.prototypes, dtype=np.float32)
    if model.rare is not None:
        tensors.update(model.rare.to_tensors())
    meta = {
        "cell_types": list(model.cell_types),
        "batch_categories": model.batch_categories,
        "ref_meta_categories": {k: [str(c) for c in v.categories] for k, v in model.ref_meta.items()},
        "threshold": int(model.threshold),
        "module": model.module.config,
        "preprocessing": model.pre.to_meta(),
        "novelty_k": model.novelty.k,
        "novelty_metric": model.novelty.metric,
        "novelty_tail": model.novelty.tail,
        "params": {**model.params, "novelty_alpha": float(model.novelty_alpha)},
        "history": model.history,
        "ref_map": model.ref_map.meta() if model.ref_map is not None else None,
        "levels": model.levels.to_meta() if model.levels is not None else None,
    }
    return tensors, meta


def from_state(cls, t: dict, meta: dict):
    """A ``cls`` (:class:`~schash.SchashModel`) from what :func:`state` gave."""
    import torch

    cfg = meta["module"]
    module = HashMLP(cfg["n_genes"], cfg["n_bits"], tuple(cfg["hidden"]), cfg["dropout"])
    module.load_state_dict({k[4:]: torch.from_numpy(v) for k, v in t.items() if k.startswith("net.")})
    module.eval()
    return cls(
        module=module,
        pre=Preprocessor.from_meta(meta["preprocessing"], t["ref_mean"], t["ref_std"]),
        cell_types=list(meta["cell_types"]),
        anchors=t["anchors"],
        threshold=int(meta["threshold"]),
        novelty=NoveltyScorer.from_tensors(t, k=int(meta["novelty_k"]),
                                           metric=meta.get("novelty_metric", "euclidean"),
                                           tail=float(meta.get("novelty_tail", 0.0))),  # 0: saved before the tail
        novelty_alpha=float(meta["params"].get("novelty_alpha", LEGACY_NOVELTY_ALPHA)),
        ref_codes=t["ref_codes"],
        ref_labels=t["ref_labels"].astype(np.int64),
        params=meta["params"],
        history=meta.get("history", {}),
        ref_batches=t["ref_batches"].astype(np.int64) if "ref_batches" in t else None,
        batch_categories=meta.get("batch_categories"),
        ref_meta={k: pd.Categorical.from_codes(t[f"ref_meta.{k}"].astype(np.int64), cats)
                  for k, cats in meta.get("ref_meta_categories", {}).items()},
        ref_map=ReferenceMap.from_tensors(t, meta["ref_map"]) if meta.get("ref_map") else None,
        levels=Hierarchy.from_meta(meta["levels"]) if meta.get("levels") else None,
        prototypes=t.get("prototypes"),  # absent from files saved before method="prototype"
        rare=RareTypes.from_tensors(t, cfg["n_genes"]),  # absent without rare types, and from older files
    )
