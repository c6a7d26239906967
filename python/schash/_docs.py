"""Parameter documentation shared by the methods that read data, written once.

A docstring holding ``{inputs}`` gets :data:`INPUTS` in its place (indented to match).
"""

from __future__ import annotations

INPUTS = """\
data
    What to read: an AnnData (``X``, or ``layer=``), in memory or backed; the path of an
    ``.h5ad`` file (read backed, a chunk at a time); a cells × genes DataFrame; or a cells ×
    genes NumPy / SciPy sparse matrix with ``genes=``; with the ``dask`` extra, an AnnData
    whose ``X`` (or layer) is a Dask array or the path of a ``.zarr`` AnnData, encoded a chunk
    per Dask task (on the cluster of an active ``distributed`` client) with the same results.
    Raw counts, normalised or log-normalised values (detected from rows across the whole input).
genes
    Gene names of the columns of a plain matrix.
layer
    The AnnData layer to use instead of ``X``.
batch_key
    An ``obs`` column: under ``scale="batch"`` each of its groups is standardised on its
    own; a model with the default ``scale="reference"`` scales every cell alike.
species
    ``"human"`` or ``"mouse"``: the species of the input when it is not the reference's; its
    genes are then mapped to the model's by one-to-one orthologues (Ensembl 105).  Without it,
    genes named otherwise than the model's (Ensembl IDs vs symbols, version suffixes, case)
    are mapped automatically wherever names alone miss model genes.
chunk_size
    Cells read and encoded at a time; bounds the memory a call needs.
progress
    Show progress bars (``None``: only when stderr is an interactive terminal)."""


def inputs(fn):
    """Put the shared parameter documentation where ``fn``'s docstring says ``{inputs}``."""
    doc = fn.__doc__ or ""
    for line in doc.splitlines():
        if line.strip() == "{inputs}":
            indent = line[: len(line) - len(line.lstrip())]
            text = "\n".join(indent + row if row else row for row in INPUTS.splitlines())
            fn.__doc__ = doc.replace(line, text)
            break
    return fn
