"""Label levels: cell types given at several levels (``cell_type_key=["coarse", "fine"]``), one model.

The network and its anchors are trained on the finest level, as for one level.  The model keeps,
for every fine type, its label at each coarser level (:class:`Hierarchy`), read from the
reference, whose levels must nest: every type of a level lies in one type of the level above.

Calls at level ``j`` (:meth:`Hierarchy.extend`):

* the label is the level-``j`` parent of the fine label, so the levels always agree;
* its confidence is the larger of two code scores (times the typicality, alignment and clarity factor
  of the fine call): the fine code score of the nearest anchor among the parent's descendants, and the
  parent's margin, ``(d_out - d_in) / half`` clipped to [0, 1], where ``d_in`` and ``d_out``
  are the distances to the nearest anchor inside and outside the parent and ``half`` is half
  the smallest distance between two anchors.  A code between two sibling anchors is far from
  both (fine code score 0) but much farther from every other parent (margin 1).  With
  ``method="knn"`` the confidence is the summed vote fraction of the parent's descendants;
* it is kept (not ``Unassigned``) where the level below is kept, or where the cell is typical
  of the reference (typicality >= ``novelty_alpha``) and the margin is at least ``half / 2``
  (8 bits with 64-bit Hadamard anchors; random codes pass this for about 1 % of them).

So a confident fine call is a confident coarse call, and the kept levels of a cell run from the
coarsest down to some level: ``resolved_label`` is the call at the finest kept level and
``resolved_level`` names that level (``Unassigned`` when none is kept).  Measured on Zeisel's
mouse cortex in ``bench/results/levels.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import _hamming
from ._data import UNASSIGNED
from ._errors import InputError

RESOLVED = ("resolved_label", "resolved_level")


def level_keys(cell_type_key) -> list[str] | None:
    """``cell_type_key`` as a list of obs column names (``None`` stays ``None``)."""
    if cell_type_key is None:
        return None
    keys = [cell_type_key] if isinstance(cell_type_key, str) else cell_type_key
    if not isinstance(keys, (list, tuple)) or not keys or not all(isinstance(k, str) for k in keys):
        raise InputError("cell_type_key must be an obs column name or a list of them (coarsest level first), "
                         f"got {cell_type_key!r}")
    if len(set(keys)) != len(keys):
        raise InputError(f"cell_type_key names a column twice: {list(keys)}")
    return list(keys)


def _label_table(labels, n_cells: int) -> dict | None:
    """Labels given as a table (DataFrame, dict, 2-D array or list): {level name: values}; None for a vector."""
    if labels is None or isinstance(labels, pd.Series):
        return None
    if isinstance(labels, pd.DataFrame):
        names = [str(c) for c in labels.columns]
        if len(set(names)) != len(names):
            raise InputError(f"the labels DataFrame has repeated column names: {names}")
        return {name: labels.iloc[:, j] for j, name in enumerate(names)}
    if isinstance(labels, dict):
        return {str(k): v for k, v in labels.items()}
    try:
        arr = np.asarray(labels, dtype=object)
    except ValueError:
        raise InputError("labels must be a vector, or a table with one row per cell and one column per "
                         "level (a DataFrame, a dict of vectors or a 2-D list)") from None
    if arr.ndim <= 1:
        return None
    if arr.ndim == 2 and arr.shape[0] == n_cells:  # cells × levels
        return {f"level{j + 1}": arr[:, j] for j in range(arr.shape[1])}
    if arr.ndim == 2 and arr.shape[1] == n_cells:  # one row per level
        return {f"level{j + 1}": arr[j] for j in range(arr.shape[0])}
    raise InputError(f"labels has shape {arr.shape}; a table of labels needs one row per cell ({n_cells}) "
                     "and one column per level, coarsest first")


def read_labels(src, cell_type_key, labels) -> tuple[np.ndarray | None, dict | None]:
    """The finest labels and, with two or more levels, ``{level name: labels}`` (coarsest first), checked."""
    keys = level_keys(cell_type_key)
    if keys is not None:
        table = {k: src.column(k, None, "cell type") for k in keys}
    else:
        table = _label_table(labels, src.n)
        if table is None:
            return src.column(None, labels, "cell type"), None
        table = {name: src.column(None, v, "cell type") for name, v in table.items()}
    if len(table) == 1:
        return next(iter(table.values())), None
    check_nested(table, src.cells)
    return list(table.values())[-1], table


def check_nested(table: dict, cells) -> None:
    """Every type of each level lies in one type of the level above, or an error names those that do not."""
    names = list(table)
    for upper, lower in zip(names, names[1:], strict=False):
        df = pd.DataFrame({"lower": table[lower], "upper": table[upper], "cell": np.asarray(cells, dtype=object)})
        spread = df.groupby("lower", sort=True)["upper"].nunique()
        bad = spread[spread > 1]
        if not len(bad):
            continue
        parts = []
        for t in bad.index[:3]:
            rows = df[df["lower"] == t]
            where = [f"{p!r} ({len(g)} cells, e.g. {', '.join(map(str, g['cell'].iloc[:2]))})"
                     for p, g in rows.groupby("upper", sort=True)]
            parts.append(f"{t!r} lies in {' and '.join(where)}")
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        verb = "does" if len(bad) == 1 else "do"
        raise InputError(
            f"the cell-type levels do not nest: each {lower!r} type must lie in one {upper!r} type, but "
            f"{len(bad)} {verb} not{more}: {'; '.join(parts)}. Correct the labels, or give each such type one "
            f"name per {upper!r} type (e.g. {lower} = {upper} + '/' + {lower} for its cells)")


@dataclass
class Hierarchy:
    """The label levels of a model: level names (coarsest first, the last is ``cell_types``' level) and,
    for each coarser level, the parent of every cell type (aligned with ``SchashModel.cell_types``)."""

    names: list[str]
    parents: list[list[str]]  # parents[j][t]: the level-j label of cell type t, for j < len(names) - 1

    @classmethod
    def from_labels(cls, table: dict, cell_types: list[str]) -> Hierarchy:
        names = list(table)
        finest = pd.Series(table[names[-1]])
        parents = []
        for name in names[:-1]:
            first = pd.Series(table[name]).groupby(finest.to_numpy(), sort=False).first()
            parents.append([str(first[t]) for t in cell_types])
        return cls(names=names, parents=parents)

    def to_frame(self, cell_types) -> pd.DataFrame:
        """One row per cell type, one column per level."""
        return pd.DataFrame({**dict(zip(self.names, self.parents, strict=False)), self.names[-1]: list(cell_types)})

    def to_meta(self) -> dict:
        return {"names": list(self.names), "parents": [list(p) for p in self.parents]}

    @classmethod
    def from_meta(cls, meta: dict) -> Hierarchy:
        return cls(names=[str(n) for n in meta["names"]], parents=[[str(x) for x in p] for p in meta["parents"]])

    def columns(self) -> list[str]:
        """The columns :meth:`extend` adds to a call table."""
        return [f"{c}_{n}" for n in self.names for c in ("label", "pruned_label", "confidence")] + list(RESOLVED)

    def extend(self, table: pd.DataFrame, codes: np.ndarray, packed_anchors: np.ndarray, *, half: float,
               trusted: np.ndarray, factor: np.ndarray, votes: np.ndarray | None = None) -> pd.DataFrame:
        """Add each level's call, pruned call and confidence, and the resolved call, to a call table.

        ``table`` is the finest level's (``SchashModel.call``); ``trusted``: typical and not empty;
        ``factor``: the typicality, alignment and clarity factor of the confidence; ``votes``: k-NN vote fractions
        (cells × types) with ``method="knn"``.  See the module docstring for the rules.
        """
        n_types = packed_anchors.shape[0]
        fine = table["label"].cat.codes.to_numpy().astype(np.int64)  # n_types: Unassigned (no expression)
        empty = fine >= n_types
        uniq, inv, _ = _hamming.distinct(codes)
        # every distinct (code, call) pair once: the k-NN call may differ from the nearest anchor's
        pairs, rows = np.unique(inv.astype(np.int64) * (n_types + 1) + fine, return_inverse=True)
        rows = rows.reshape(-1)
        code_of, call_of = pairs // (n_types + 1), np.minimum(pairs % (n_types + 1), n_types - 1)
        rep = np.empty(len(pairs), dtype=np.int64)
        rep[rows] = np.arange(len(rows))
        kept = table["pruned_label"].to_numpy() != UNASSIGNED
        conf = table["confidence"].to_numpy()
        out = {f"label_{self.names[-1]}": table["label"], f"pruned_label_{self.names[-1]}": table["pruned_label"],
               f"confidence_{self.names[-1]}": conf}
        resolved = np.where(kept, table["label"].astype(object).to_numpy(), UNASSIGNED)
        level = np.where(kept, self.names[-1], UNASSIGNED).astype(object)
        for j in range(len(self.parents) - 1, -1, -1):
            cats, group = np.unique(np.asarray(self.parents[j], dtype=object), return_inverse=True)
            margin, score = self._margins(uniq, packed_anchors, group, code_of, call_of, half,
                                          votes[rep] if votes is not None else None)
            kept = kept | (trusted & (margin[rows] >= half / 2))
            conf = np.where(empty, 0.0, np.maximum(conf, score[rows] * factor))
            labels = np.where(empty, UNASSIGNED, cats[group[np.minimum(fine, n_types - 1)]])
            name = self.names[j]
            categories = [str(c) for c in cats] + [UNASSIGNED]
            out[f"label_{name}"] = pd.Categorical(labels, categories=categories)
            out[f"pruned_label_{name}"] = pd.Categorical(np.where(kept, labels, UNASSIGNED), categories=categories)
            out[f"confidence_{name}"] = conf
            newly = kept & (level == UNASSIGNED)
            resolved = np.where(newly, labels, resolved)
            level = np.where(newly, name, level)
        every = list(dict.fromkeys(c for n in self.names for c in pd.Series(out[f"label_{n}"]).cat.categories
                                   if c != UNASSIGNED))
        for col in self.columns()[:-2]:
            table[col] = out[col]
        table["resolved_label"] = pd.Categorical(resolved, categories=every + [UNASSIGNED])
        table["resolved_level"] = pd.Categorical(level, categories=list(self.names) + [UNASSIGNED])
        return table

    @staticmethod
    def _margins(uniq, packed_anchors, group, code_of, call_of, half, votes, block: int = 8192):
        """Per (code, call) pair: the parent's margin ``d_out - d_in`` and the code score (see the module)."""
        margin = np.empty(len(code_of), dtype=np.float64)
        score = np.empty(len(code_of), dtype=np.float64)
        big = float(packed_anchors.shape[1] * 8 * 2)  # no anchor outside the parent: always clear
        for s in range(0, len(code_of), block):
            d = _hamming.distances(uniq[code_of[s:s + block]], packed_anchors).astype(np.float64)
            same = group[None, :] == group[call_of[s:s + block]][:, None]
            d_in = np.where(same, d, big).min(1)
            gap = np.where(same, big, d).min(1) - d_in
            margin[s:s + block] = gap
            if votes is None:
                score[s:s + block] = np.maximum(np.clip(1.0 - d_in / half, 0, 1), np.clip(gap / half, 0, 1))
            else:
                score[s:s + block] = np.minimum(1.0, (votes[s:s + block] * same).sum(1))
        return margin, score


def meta_problem(meta, cell_types: list) -> str | None:
    """What is wrong with a model file's ``levels`` metadata, or ``None``."""
    if not isinstance(meta, dict) or not isinstance(meta.get("names"), list) or \
            not isinstance(meta.get("parents"), list):
        return "levels must be an object with the lists 'names' and 'parents'"
    names, parents = meta["names"], meta["parents"]
    if len(names) < 2 or len(set(map(str, names))) != len(names) or \
            not all(isinstance(n, str) and n for n in names):
        return "levels.names must hold two or more distinct level names"
    if len(parents) != len(names) - 1:
        return f"levels.parents has {len(parents)} lists for {len(names)} levels (one per coarser level)"
    for j, p in enumerate(parents):
        if not isinstance(p, list) or len(p) != len(cell_types) or not all(isinstance(x, str) and x for x in p):
            return f"levels.parents[{j}] must list one parent name for each of the {len(cell_types)} cell types"
        if UNASSIGNED in p:
            return f"levels.parents[{j}] lists {UNASSIGNED!r}, which is reserved for unassigned cells"
    for j in range(1, len(parents)):  # a level's types lie each in one type of the level above
        if pd.DataFrame({"a": parents[j], "b": parents[j - 1]}).groupby("a")["b"].nunique().max() > 1:
            return f"the levels {names[j - 1]!r} and {names[j]!r} do not nest"
    return None
