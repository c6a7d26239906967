"""``annotate``: write a model's calls into an AnnData, scanpy-style, all or nothing.

Everything is computed before anything is written.  ``uns[key_added]["created"]`` records
the obs and obsm keys a run wrote, so the next run under the same ``key_added`` removes
them (no stale columns) and no run overwrites a field that schash did not create.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

from . import _args
from ._data import is_anndata
from ._errors import InputError
from ._result import Annotation, annotation

if TYPE_CHECKING:
    from ._model import SchashModel


def annotate(
    adata,
    model: SchashModel,
    *,
    layer: str | None = None,
    method: Literal["auto", "anchor", "knn", "prototype"] = "auto",
    k: int = 15,
    batch_key: str | None = None,
    species: Literal["human", "mouse"] | None = None,
    novelty_alpha: float | None = None,
    neighbors: int | None = None,
    over_clustering: str | None = None,
    key_added: str = "schash",
    copy: bool = False,
    chunk_size: int = 8192,
    progress: bool | None = None,
):
    """Annotate an AnnData in place (or a copy), scanpy-style.

    Writes
    ------
    ``obs[f"{key_added}_label"]``, ``obs[f"{key_added}_pruned_label"]`` (categorical),
    ``obs[f"{key_added}_distance"]``, ``obs[f"{key_added}_delta_next"]``,
    ``obs[f"{key_added}_typicality"]``, ``obs[f"{key_added}_confidence"]`` (float),
    ``obsm[f"X_{key_added}"]`` (the codes as ±1 float32, cells × n_bits: an embedding for
    ``sc.pp.neighbors(adata, use_rep="X_schash")`` and UMAP, since Euclidean distance on ±1 codes
    is a monotone function of Hamming distance), ``obsm[f"{key_added}_codes"]`` (the same codes
    packed, uint8, n_bits/8 columns: what :meth:`SchashModel.encode` returns),
    ``obsm[f"{key_added}_scores"]`` (cells × types scores in [0, 1]: ``1 - d / n_bits`` for the
    Hamming distance ``d`` to each type's anchor; a DataFrame), with a reference map
    (``model.set_reference_map()``) ``obsm[f"X_{key_added}_umap"]`` (the cells placed on it) and
    ``uns[key_added]`` (the parameters, gene overlap, the detected input kind, how the query's
    genes were matched to the model's — by name, across Ensembl IDs and symbols, version
    suffixes, case or, with ``species="mouse"`` on a human model, one-to-one orthologues —
    in ``uns[key_added]["gene_mapping"]``, and the keys this run created).  With ``neighbors=k``, also the
    composition of the ``k`` nearest reference cells: ``obsm[f"{key_added}_cell_type_composition"]``
    and, when the reference had batches, ``obsm[f"{key_added}_batch_composition"]`` (DataFrames,
    rows sum to 1) and ``obs[f"{key_added}_neighbor_batch"]`` (the majority batch).  With
    ``over_clustering="leiden"`` (an ``obs`` column of clusters), majority voting as CellTypist
    does it: ``obs[f"{key_added}_majority_label"]`` (the most frequent pruned call of the cell's
    cluster; ``Unassigned`` only where it is the strict majority) and
    ``obs[f"{key_added}_majority_share"]`` (its share of the cluster); when ``adata`` has no
    such column, the cells are first over-clustered by their codes (Leiden on the distinct
    codes at CellTypist's resolution, :func:`schash._voting.over_cluster`), written to
    ``obs[f"{key_added}_over_clustering"]``.  Measured on cross-batch tasks in
    ``bench/results/voting.md``: steadier calls on some tasks, rare types outvoted on others.

    Everything is computed before anything is written: an error leaves ``adata`` as it was.
    A new run with the same ``key_added`` replaces every field of the earlier one; a field
    that schash did not create is never overwritten (choose another ``key_added``).
    ``progress=None`` shows bars only when stderr is an interactive terminal.  ``species``:
    ``"mouse"`` for a mouse query on a human model (or the reverse), and ``novelty_alpha`` (the
    typicality below which a call is ``Unassigned``; ``None``: the model's), see :meth:`SchashModel.predict`.

    Returns
    -------
    The annotated copy when ``copy=True``, else ``None``.
    """
    if not is_anndata(adata):
        raise InputError("annotate() takes an AnnData; for a matrix use model.predict(X, genes=...)")
    _args.call(len(model.ref_labels), method=method, k=k, neighbors=neighbors, chunk_size=chunk_size,
               novelty_alpha=novelty_alpha)
    _args.key_added(key_added)
    clusters = None
    if over_clustering is not None:
        if not isinstance(over_clustering, str):
            raise InputError(f"over_clustering must be the name of an obs column of clusters, got {over_clustering!r}")
        clusters = adata.obs[over_clustering].to_numpy() if over_clustering in adata.obs else "codes"
    # refuse before the work
    _fields_to_replace(adata, key_added, _new_keys(model, key_added, neighbors, clusters))
    result = annotation(model, adata, layer=layer, method=method, k=k, batch_key=batch_key, species=species,
                        neighbors=neighbors,
                        clusters=clusters, chunk_size=chunk_size, progress=progress, cells=adata.obs_names,
                        novelty_alpha=novelty_alpha)
    if copy:
        adata = adata.copy()
    write_annotation(adata, model, result, key_added=key_added)
    return adata if copy else None


def _new_keys(model, key_added, neighbors, clusters=None) -> dict:
    """The obs and obsm keys an annotation writes."""
    obs = [f"{key_added}_{c}" for c in ("label", "pruned_label", "distance", "delta_next", "typicality",
                                         "confidence")]
    if model.levels is not None:
        obs += [f"{key_added}_{c}" for c in model.levels.columns()]
    obsm = [f"X_{key_added}", f"{key_added}_codes", f"{key_added}_scores"]
    if model.ref_map is not None:
        obsm.append(f"X_{key_added}_{model.map_name()}")
    if neighbors:
        cols = list(model.reference_obs().columns)
        obsm += [f"{key_added}_{by}_composition" for by in cols]
        if "batch" in cols:
            obs.append(f"{key_added}_neighbor_batch")
    if clusters is not None:
        if isinstance(clusters, str):  # "codes": over-clustered here
            obs.append(f"{key_added}_over_clustering")
        obs += [f"{key_added}_majority_label", f"{key_added}_majority_share"]
    return {"obs": obs, "obsm": obsm}


def _created_before(adata, key_added) -> dict:
    """The keys an earlier schash run under ``key_added`` created (empty when there was none)."""
    rec = adata.uns.get(key_added)
    if rec is None:
        return {"obs": [], "obsm": []}
    if not isinstance(rec, dict) or not ("created" in rec or {"params", "n_genes_matched"} <= set(rec)):
        raise InputError(f"uns[{key_added!r}] exists and was not written by schash; pass another key_added=")
    if "created" in rec:
        return {where: [str(x) for x in np.asarray(rec["created"].get(where, []), dtype=object).reshape(-1)]
                for where in ("obs", "obsm")}
    # written by an older schash: its fields are those with schash's names
    suffixes = ("label", "pruned_label", "distance", "delta_next", "typicality", "confidence", "neighbor_batch",
                "majority_label", "majority_share", "over_clustering")
    return {"obs": [f"{key_added}_{c}" for c in suffixes if f"{key_added}_{c}" in adata.obs],
            "obsm": [m for m in adata.obsm.keys()
                     if m in (f"X_{key_added}", f"{key_added}_codes", f"{key_added}_scores")
                     or (m.startswith(f"{key_added}_") and m.endswith("_composition"))]}


def _fields_to_replace(adata, key_added, new: dict) -> dict:
    """Check that writing ``new`` overwrites only schash's own fields; returns the earlier run's fields."""
    before = _created_before(adata, key_added)
    for where, store in (("obs", adata.obs), ("obsm", adata.obsm)):
        clash = [key for key in new[where] if key in store and key not in before[where]]
        if clash:
            raise InputError(f"{where}[{clash[0]!r}] exists and was not written by schash; "
                             f"pass another key_added= (now {key_added!r})")
    return before


def write_annotation(adata, model, result: Annotation, *, key_added="schash"):
    """Write a finished :class:`~schash._result.Annotation` into ``adata`` (the fields listed in :func:`annotate`).

    Everything is computed first and written last; an error leaves ``adata`` untouched.
    """
    _args.key_added(key_added)
    obs = {f"{key_added}_{col}": result.table[col].values for col in result.table.columns}
    obsm = {f"X_{key_added}": result.signs(model.n_bits), f"{key_added}_codes": result.codes,
            f"{key_added}_scores": result.scores}
    if result.placed is not None:
        obsm[f"X_{key_added}_{model.map_name()}"] = result.placed
    for by, comp in result.compositions.items():
        obsm[f"{key_added}_{by}_composition"] = comp
    before = _fields_to_replace(adata, key_added, {"obs": list(obs), "obsm": list(obsm)})
    record = {**result.record, "created": {"obs": list(obs), "obsm": list(obsm)}}
    # all computed: now replace the earlier run's fields with this run's
    for key in before["obs"]:
        if key in adata.obs:
            del adata.obs[key]
    for key in before["obsm"]:
        if key in adata.obsm:
            del adata.obsm[key]
    for key, values in obs.items():
        adata.obs[key] = values
    for key, values in obsm.items():
        adata.obsm[key] = values
    adata.uns[key_added] = record
