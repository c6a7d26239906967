"""The model file: one safetensors file, tensors plus JSON metadata.

safetensors holds only raw arrays and a JSON header, so loading a model never
runs code from the file (unlike pickle-based ``torch.load``).  The header's
``__metadata__`` carries ``{"schash": <json>}`` with the format name and version,
the package version, genes, cell types, preprocessing and training parameters.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ._errors import ModelFileError

FORMAT = "schash-model"
FORMAT_VERSION = 1
_MAX_HEADER = 100 * 1024 * 1024


def save_model(model, path, *, overwrite: bool = False) -> None:
    from safetensors.numpy import save_file

    from . import __version__

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    tensors = {f"net.{k}": v.detach().cpu().numpy() for k, v in model.module.state_dict().items()}
    tensors.update(
        {
            "anchors": model.anchors.astype(np.float32),
            "ref_mean": model.pre.ref_mean.astype(np.float32),
            "ref_std": model.pre.ref_std.astype(np.float32),
            "ref_codes": np.ascontiguousarray(model.ref_codes, dtype=np.uint8),
            "ref_labels": model.ref_labels.astype(np.int32),
            **{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in model.novelty.to_tensors().items()},
        }
    )
    if model.ref_batches is not None:
        tensors["ref_batches"] = model.ref_batches.astype(np.int32)
    for key, values in model.ref_meta.items():
        tensors[f"ref_meta.{key}"] = np.asarray(values.codes, dtype=np.int32)
    if getattr(model, "ref_map", None) is not None:  # the reference's 2-D embedding (schash._refmap)
        tensors.update(model.ref_map.to_tensors())
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "schash_version": __version__,
        "cell_types": list(model.cell_types),
        "batch_categories": model.batch_categories,
        "ref_meta_categories": {k: [str(c) for c in v.categories] for k, v in model.ref_meta.items()},
        "threshold": int(model.threshold),
        "module": model.module.config,
        "preprocessing": model.pre.to_meta(),
        "novelty_k": model.novelty.k,
        "params": model.params,
        "history": model.history,
        "ref_map": model.ref_map.meta() if getattr(model, "ref_map", None) is not None else None,
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"schash": json.dumps(meta)})
    os.replace(tmp, path)


def _read_header(path: Path) -> dict:
    """Parse the safetensors header by hand first, so a foreign file gets a clear message."""
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ModelFileError(f"{path} is not a schash model file: it is only {size} bytes long")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER, size - 8):
            kind = {b"\x80": "; it looks like a pickle, which schash never loads", b"PK": "; it looks like a "
                    "zip/torch.save archive, which schash never unpickles", b"\x89H": "; it looks like an HDF5 "
                    "file (.h5ad?)"}.get(head[:2] if head[:1] != b"\x80" else head[:1], "")
            raise ModelFileError(
                f"{path} is not a schash model file{kind}. Models are written by model.save() or `schash train`"
            )
        try:
            header = json.loads(fh.read(n))
        except ValueError as err:
            raise ModelFileError(f"{path} is not a schash model file: unreadable header ({err})") from None
    meta = header.get("__metadata__", {}) if isinstance(header, dict) else {}
    if "schash" not in meta:
        raise ModelFileError(f"{path} is a safetensors file but not a schash model (no schash metadata)")
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise ModelFileError(f"{path} is truncated: {size} bytes, the header promises {8 + n + end}")
    return json.loads(meta["schash"])


def load_model(path):
    """Load a model saved by :meth:`SchashModel.save` (either language)."""
    from safetensors.numpy import load_file

    from ._model import SchashModel
    from ._module import HashMLP
    from ._novelty import NoveltyScorer
    from ._preprocess import Preprocessor

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    meta = _read_header(path)
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a schash model file (format {meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has model format version {meta.get('format_version')} (written by schash "
            f"{meta.get('schash_version')}); this schash reads version {FORMAT_VERSION}. "
            "Retrain the model, or install the schash version that wrote it"
        )
    try:
        t = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types
        raise ModelFileError(f"{path} is damaged: {err}") from None
    cfg = meta["module"]
    module = HashMLP(cfg["n_genes"], cfg["n_bits"], tuple(cfg["hidden"]), cfg["dropout"])
    state = {k[4:]: torch.from_numpy(v) for k, v in t.items() if k.startswith("net.")}
    module.load_state_dict(state)
    module.eval()
    pre = Preprocessor.from_meta(meta["preprocessing"], t["ref_mean"], t["ref_std"])
    return SchashModel(
        module=module,
        pre=pre,
        cell_types=list(meta["cell_types"]),
        anchors=t["anchors"],
        threshold=int(meta["threshold"]),
        novelty=NoveltyScorer.from_tensors(t, k=int(meta["novelty_k"])),
        ref_codes=t["ref_codes"],
        ref_labels=t["ref_labels"].astype(np.int64),
        params=meta["params"],
        history=meta["history"],
        ref_batches=t["ref_batches"].astype(np.int64) if "ref_batches" in t else None,
        batch_categories=meta.get("batch_categories"),
        ref_meta={k: pd.Categorical.from_codes(t[f"ref_meta.{k}"].astype(np.int64), cats)
                  for k, cats in meta.get("ref_meta_categories", {}).items()},
        ref_map=_ref_map(t, meta.get("ref_map")),
    )


def _ref_map(t, meta):
    from ._refmap import ReferenceMap

    return ReferenceMap.from_tensors(t, meta) if meta else None
