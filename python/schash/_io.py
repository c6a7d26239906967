"""The model file: one safetensors file, tensors plus JSON metadata.

safetensors holds only raw arrays and a JSON header, so loading a model never
runs code from the file (unlike pickle-based ``torch.load``).  The header's
``__metadata__`` carries ``{"schash": <json>}`` with the format name and version,
the package version, genes, cell types, preprocessing and training parameters.

Saving writes a temporary file next to the target and renames it into place
(:mod:`schash._atomic`), so a reader sees the old model or the new one, never a mix.
Loading reads the file's bytes once and parses header and tensors from those bytes,
then checks them against each other (:mod:`schash._validate`).
"""

from __future__ import annotations

import json
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
    from safetensors.numpy import save

    from . import __version__
    from ._atomic import check_output, write_bytes

    check_output(path, overwrite=overwrite)  # before the work of serialising
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
        "novelty_metric": model.novelty.metric,
        "params": model.params,
        "history": model.history,
        "ref_map": model.ref_map.meta() if getattr(model, "ref_map", None) is not None else None,
    }
    data = save(tensors, metadata={"schash": json.dumps(meta)})
    write_bytes(path, data, overwrite=overwrite)


def _read_bytes(path) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    with open(path, "rb") as fh:
        return fh.read()


def _parse_header(data: bytes, path) -> dict:
    """The schash metadata from the bytes of a file; a foreign or damaged file gets a clear message."""
    size = len(data)
    if size < 8:
        raise ModelFileError(f"{path} is not a schash model file: it is only {size} bytes long")
    head = data[:8]
    (n,) = struct.unpack("<Q", head)
    if n > min(_MAX_HEADER, size - 8):
        kind = {b"\x80": "; it looks like a pickle, which schash never loads", b"PK": "; it looks like a "
                "zip/torch.save archive, which schash never unpickles", b"\x89H": "; it looks like an HDF5 "
                "file (.h5ad?)"}.get(head[:2] if head[:1] != b"\x80" else head[:1], "")
        raise ModelFileError(
            f"{path} is not a schash model file{kind}. Models are written by model.save() or `schash train`"
        )
    try:
        header = json.loads(data[8 : 8 + n])
    except (ValueError, RecursionError) as err:
        raise ModelFileError(f"{path} is not a schash model file: unreadable header ({err})") from None
    meta = header.get("__metadata__", {}) if isinstance(header, dict) else {}
    if not isinstance(meta, dict) or "schash" not in meta:
        raise ModelFileError(f"{path} is a safetensors file but not a schash model (no schash metadata)")
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        raise ModelFileError(f"{path} is damaged: a tensor entry of its header is malformed") from None
    if 8 + n + end > size:
        raise ModelFileError(f"{path} is truncated: {size} bytes, the header promises {8 + n + end}")
    try:
        out = json.loads(meta["schash"])
    except (TypeError, ValueError, RecursionError) as err:
        raise ModelFileError(f"{path} is damaged: its schash metadata is not readable JSON ({err})") from None
    if not isinstance(out, dict):
        raise ModelFileError(f"{path} is damaged: its schash metadata is not a JSON object")
    if out.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a schash model file (format {_short(out.get('format'))})")
    if out.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has model format version {_short(out.get('format_version'))} (written by schash "
            f"{_short(out.get('schash_version'))}); this schash reads version {FORMAT_VERSION}. "
            "Retrain the model, or install the schash version that wrote it"
        )
    return out


def _short(v) -> str:
    s = str(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _read_header(path) -> dict:
    """The schash metadata of a model file (for ``schash info``)."""
    return _parse_header(_read_bytes(path), path)


def load_model(path):
    """Load a model saved by :meth:`SchashModel.save` (either language).

    The file is read once; a file that is not a consistent schash model raises
    :class:`ModelFileError` naming the problem.
    """
    from safetensors.numpy import load

    from ._validate import check_meta, check_tensors

    data = _read_bytes(path)
    meta = _parse_header(data, path)
    check_meta(meta, path)
    try:
        t = load(data)
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise ModelFileError(f"{path} is damaged: {err}") from None
    del data
    check_tensors(meta, t, path)
    try:
        return _build(meta, t)
    except Exception as err:  # noqa: BLE001 - every check passed; still never let a bad file crash otherwise
        raise ModelFileError(f"{path} could not be loaded ({type(err).__name__}: {err})") from None


def _build(meta: dict, t: dict):
    from ._model import SchashModel
    from ._module import HashMLP
    from ._novelty import NoveltyScorer
    from ._preprocess import Preprocessor

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
        novelty=NoveltyScorer.from_tensors(t, k=int(meta["novelty_k"]),
                                           metric=meta.get("novelty_metric", "euclidean")),
        ref_codes=t["ref_codes"],
        ref_labels=t["ref_labels"].astype(np.int64),
        params=meta["params"],
        history=meta.get("history", {}),
        ref_batches=t["ref_batches"].astype(np.int64) if "ref_batches" in t else None,
        batch_categories=meta.get("batch_categories"),
        ref_meta={k: pd.Categorical.from_codes(t[f"ref_meta.{k}"].astype(np.int64), cats)
                  for k, cats in meta.get("ref_meta_categories", {}).items()},
        ref_map=_ref_map(t, meta.get("ref_map")),
    )


def _ref_map(t, meta):
    from ._refmap import ReferenceMap

    return ReferenceMap.from_tensors(t, meta) if meta else None
