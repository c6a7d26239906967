"""The model file: one safetensors file, tensors plus JSON metadata.

This module reads and writes dicts of arrays and metadata; what they mean is the
model's business (:mod:`schash._model` turns it into the model and back).

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

from ._atomic import check_output, write_bytes
from ._errors import ModelFileError
from ._validate import check_meta, check_tensors
from ._version import __version__

FORMAT = "schash-model"
FORMAT_VERSION = 1
_MAX_HEADER = 100 * 1024 * 1024


def check_writable(path, *, overwrite: bool = False) -> None:
    """Refuse, before any work, an output that cannot be written (see :func:`schash._atomic.check_output`)."""
    check_output(path, overwrite=overwrite)


def write(path, tensors: dict[str, np.ndarray], meta: dict, *, overwrite: bool = False) -> None:
    """Write ``tensors`` and ``meta`` (JSON-able) as one safetensors file, atomically.

    The format name and version and the package version are added to ``meta``.
    """
    from safetensors.numpy import save

    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "schash_version": __version__, **meta}
    data = save(tensors, metadata={"schash": json.dumps(header)})
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


def read_header(path) -> dict:
    """The schash metadata of a model file (for ``schash info``)."""
    return _parse_header(_read_bytes(path), path)


def read(path) -> tuple[dict, dict[str, np.ndarray]]:
    """The metadata and tensors of a model file, checked against each other.

    The file is read once; a file that is not a consistent schash model raises
    :class:`ModelFileError` naming the problem.
    """
    from safetensors.numpy import load

    data = _read_bytes(path)
    meta = _parse_header(data, path)
    check_meta(meta, path)
    try:
        t = load(data)
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise ModelFileError(f"{path} is damaged: {err}") from None
    del data
    check_tensors(meta, t, path)
    return meta, t
