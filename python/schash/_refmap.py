"""A reference map: the reference's 2-D embedding (UMAP, t-SNE, ...), onto which query cells are placed.

Like scanpy's ``ingest``, a query cell is put at the mean position of its ``k`` nearest
reference cells; the neighbours are found in the PCA of the reference's standardised
features that the typicality scorer already uses (:mod:`schash._novelty`), not by Hamming
distance: trained codes collapse onto a few values per type, so code neighbours would stack
every query cell of a code on one point.  The map keeps at most ``max_cells`` reference
cells (a random sample): their PCA coordinates and their 2-D positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._errors import InputError


@dataclass
class ReferenceMap:
    basis: str  # the embedding's name, e.g. "X_umap" (Python) or "umap" (Seurat)
    bank: np.ndarray  # n × n_comps: PCA coordinates of the kept reference cells
    coords: np.ndarray  # n × 2: their positions on the map
    k: int = 10

    def place(self, projected: np.ndarray) -> np.ndarray:
        """Positions (cells × 2) for query cells given their PCA coordinates (``Encoded.projected``)."""
        from sklearn.neighbors import NearestNeighbors

        k = min(self.k, len(self.bank))
        n_comps = self.bank.shape[1]
        _, idx = NearestNeighbors(n_neighbors=k).fit(self.bank).kneighbors(projected[:, :n_comps])
        return self.coords[idx].mean(axis=1)

    def to_tensors(self) -> dict[str, np.ndarray]:
        return {"ref_map.bank": self.bank.astype(np.float32), "ref_map.coords": self.coords.astype(np.float32)}

    def meta(self) -> dict:
        return {"basis": self.basis, "k": int(self.k)}

    @classmethod
    def from_tensors(cls, t: dict, meta: dict) -> ReferenceMap:
        return cls(str(meta["basis"]), t["ref_map.bank"], t["ref_map.coords"], int(meta.get("k", 10)))


def coords_of(data, basis: str) -> np.ndarray:
    """``data.obsm[basis]``, or an error naming the embeddings it has."""
    obsm = getattr(data, "obsm", None)
    if obsm is None or basis not in obsm:
        have = list(obsm.keys()) if obsm is not None else []
        raise InputError(f"no obsm[{basis!r}] in the reference; it has {have}. Pass coords= for a matrix")
    return np.asarray(obsm[basis])


def check_coords(coords, n_cells: int | None = None) -> np.ndarray:
    """2-D positions (the first two columns), one row per cell."""
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] < 2:
        raise InputError(f"the reference map needs 2-D coordinates (cells × 2), got shape {coords.shape}")
    if n_cells is not None and coords.shape[0] != n_cells:
        raise InputError(f"{coords.shape[0]} map positions for {n_cells} reference cells")
    return coords[:, :2]


def build(enc, coords, *, basis: str, max_cells: int = 20000, k: int = 10, seed: int = 0) -> ReferenceMap:
    """A :class:`ReferenceMap` from an encoding pass over reference cells (``enc``, with its PCA
    coordinates ``enc.projected``) and their 2-D positions ``coords`` (cells × 2)."""
    coords = check_coords(coords, len(enc.cells))
    ok = np.flatnonzero(np.isfinite(coords).all(axis=1) & ~enc.empty)
    if len(ok) == 0:
        raise InputError("no reference cell has finite map coordinates and expression")
    if len(ok) > max_cells:
        ok = np.sort(np.random.default_rng(seed).choice(ok, max_cells, replace=False))
    n_comps = enc.projected.shape[1] - 1  # the last column is the residual norm
    return ReferenceMap(basis=str(basis), bank=enc.projected[ok, :n_comps].astype(np.float32),
                        coords=coords[ok].astype(np.float32), k=int(k))
