"""Gene identifiers: a query's genes renamed to the model's, across identifier kinds and species.

A model knows its genes by the names the reference used: symbols (``CD3E``) or Ensembl IDs
(``ENSG00000198851``).  A query may name the same genes otherwise: IDs with a version suffix
(``ENSG00000198851.12``), the other identifier kind, another case, or mouse symbols for a
human model.  :func:`map_query` renames the query's genes to the model's names, so that the
caller can then align columns by exact name (:func:`schash._data.align_genes`), and reports
what it did; :func:`identifiers` records both identifier kinds of a model's genes at training.

The tables are shipped in ``schash/data`` (see its README: GENCODE 44 human IDs and symbols,
Ensembl 105 human-mouse orthologues) and read once per process with :mod:`importlib.resources`.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import numpy as np
import pandas as pd

from ._errors import InputError
from ._logging import logger

SPECIES = ("human", "mouse")
STEPS = {"direct": "by name", "version_stripped": "without version suffix", "by_id_mapping":  # step: words
         "through the ID/symbol table", "by_case": "by case-insensitive symbol", "orthologue_one_to_one": ""}
_ENSEMBL = r"^(ENS[A-Z]*G\d{6,})(?:\.\d+)?(_PAR_Y)?$"  # gene ID, optional version, optional PAR suffix


@cache
def _table(name: str) -> pd.DataFrame:
    """A table shipped in ``schash/data`` (read from the installed package, once per process)."""
    with (resources.files("schash") / "data" / name).open("rb") as fh:
        return pd.read_csv(fh, sep="\t", compression="gzip", dtype=str, keep_default_na=False)


@cache
def _human() -> tuple[pd.Series, pd.DataFrame]:
    """GENCODE 44: ID → symbol, and the table (sorted by ID) with an upper-case symbol column."""
    t = _table("human_genes.tsv.gz")
    return pd.Series(t.symbol.to_numpy(), index=t.ensembl_id.to_numpy()), t.assign(upper=t.symbol.str.upper())


def _check_species(value, what: str = "species"):
    if value is None or (isinstance(value, str) and value in SPECIES):
        return value
    raise InputError(f"{what} must be None (guessed from the gene names), 'human' or 'mouse'; got {value!r}")


def _names(genes, what: str, unique: bool = True) -> pd.Index:
    names = pd.Index(np.asarray(genes, dtype=object).reshape(-1)).astype(str)
    dup = names[names.duplicated()]
    if unique and len(dup):
        raise InputError(f"{len(dup)} {what} occur more than once (e.g. {list(dup[:3])}); make them unique "
                         "first, e.g. adata.var_names_make_unique()")
    return names


def _strip(names) -> np.ndarray:
    """Each name's Ensembl ID without version suffix (``ENSG00000198851.12`` → ``ENSG00000198851``);
    None for any other name (a symbol)."""
    m = pd.Series(np.asarray(names, dtype=object), dtype=object).str.extract(_ENSEMBL)
    out = (m[0] + m[1].fillna("")).to_numpy(object)
    out[pd.isna(out)] = None
    return out


def _pairs(pos, keys, prefix: str = "") -> pd.DataFrame:
    """(position, key) rows, without missing keys; ``prefix`` keeps IDs and symbols apart in one step."""
    df = pd.DataFrame({"pos": np.asarray(pos, dtype=np.int64), "key": np.asarray(keys, dtype=object)})
    df = df[df.key.notna() & (df.key != "")]
    return df.assign(key=prefix + df.key.astype(str)) if prefix else df


def _ids_of(pos, symbols, fold: bool) -> pd.DataFrame:
    """(position, GENCODE ID, GENCODE symbol) of each symbol, all IDs of a symbol, ID order."""
    _, t = _human()
    q = _pairs(pos, symbols)
    if fold:
        q = q.assign(key=q.key.str.upper())
    hits = q.merge(t, left_on="key", right_on="upper" if fold else "symbol")
    return hits[["pos", "ensembl_id", "symbol"]].rename(columns={"ensembl_id": "key"})


def _keys(pos, names, table: bool, fold: bool, sid=None) -> pd.DataFrame:
    """A query's keys for matching model genes by ID (``i:``) or symbol (``s:``).

    An ID's symbol and a symbol's IDs come from GENCODE where ``table`` (human names);
    ``fold`` upper-cases symbols and looks them up in any case; ``sid``: ``_strip(names)``."""
    pos, names = np.asarray(pos, dtype=np.int64), np.asarray(names, dtype=object)
    sid = _strip(names) if sid is None else sid
    is_id = pd.notna(sid)
    sym = np.where(is_id, None, names)
    parts = [_pairs(pos, sid, "i:")]
    if table:
        sym = np.where(is_id, pd.Series(sid, dtype=object).map(_human()[0]).to_numpy(object), sym)
        hits = _ids_of(pos[~is_id], names[~is_id], fold)
        parts.append(_pairs(hits.pos, hits.key, "i:"))
    syms = pd.Series(sym, dtype=object)
    parts.append(_pairs(pos, syms.str.upper() if fold else syms, "s:"))
    return pd.concat(parts, ignore_index=True)


class _Matcher:
    """Query genes assigned to model genes step by step, each gene on either side used once.

    Within a step, a query gene takes its candidate first in model order; a model gene
    claimed by several query genes goes to the first in query order, and the others try
    their next candidate.  A query gene is *contested* when it had a choice of model genes or
    lost a model gene to another query gene, in this step or an earlier one."""

    def __init__(self, nq: int, nm: int):
        self.match, self.step = np.full(nq, -1), np.full(nq, "", dtype=object)
        self.taken, self.contested = np.zeros(nm, bool), np.zeros(nq, bool)

    def run(self, step: str, q: pd.DataFrame, m: pd.DataFrame) -> None:
        q = q[self.match[q.pos.to_numpy()] < 0]
        c = q.merge(m, on="key", suffixes=("_q", "_m"))[["pos_q", "pos_m"]].drop_duplicates()
        if c.empty:
            return
        c = c.sort_values(["pos_q", "pos_m"])
        free = ~self.taken[c.pos_m.to_numpy()]
        self.contested[np.setdiff1d(c.pos_q.to_numpy(), c.pos_q.to_numpy()[free])] = True
        c = c[free]
        self.contested[c.pos_q.to_numpy()[c.pos_q.duplicated().to_numpy()]] = True  # a choice of model genes
        while len(c):
            first = c.drop_duplicates("pos_q")
            win = first.drop_duplicates("pos_m")
            self.contested[np.setdiff1d(first.pos_q.to_numpy(), win.pos_q.to_numpy())] = True  # lost to another
            i, j = win.pos_q.to_numpy(), win.pos_m.to_numpy()
            self.match[i], self.taken[j], self.step[i] = j, True, step
            c = c[(self.match[c.pos_q.to_numpy()] < 0) & ~self.taken[c.pos_m.to_numpy()]]


def _column(values, n: int, what: str) -> np.ndarray:
    """One entry per model gene (str or None), from what the caller recorded."""
    arr = np.asarray(values, dtype=object).reshape(-1).copy()
    if len(arr) != n:
        raise InputError(f"{what} has {len(arr)} entries for {n} model genes; pass one per model gene "
                         "(None where unknown), or None to derive them from the gene names")
    bad = pd.isna(arr) | (arr == "")
    arr[bad] = None
    arr[~bad] = arr[~bad].astype(str)
    return arr


def _orthologues(pos, symbols, src: str, dst: str) -> pd.DataFrame:
    """(position, orthologue, one-to-one) rows of each symbol: its exact spelling, else in any case."""
    t = _table("human_mouse_orthologues.tsv.gz")
    t = pd.DataFrame({"src": t[src], "upper": t[src].str.upper(), "dst": t[dst], "one": t.one_to_one == "1"})
    q = _pairs(pos, symbols)
    exact = q.merge(t, left_on="key", right_on="src")
    rest = q[~q.pos.isin(exact.pos)]
    folded = rest.assign(key=rest.key.str.upper()).merge(t, left_on="key", right_on="upper")
    folded = folded[folded.src == folded.groupby("pos").src.transform("min")]  # one spelling (Snora75, SNORA75)
    return pd.concat([exact, folded])[["pos", "dst", "one"]]


def identifiers(genes, *, species: str | None = None) -> pd.DataFrame:
    """Both identifier kinds of each gene: a DataFrame indexed by ``genes``, with columns
    ``ensembl_id`` and ``symbol`` (None where unknown).

    Called at training, so that a model records every gene as ID and as symbol whichever kind
    the reference used, and :func:`map_query` can match a query named the other way.

    - An Ensembl ID (any species, with or without version suffix) is its own ``ensembl_id``
      (version dropped); a human ID's ``symbol`` is its GENCODE 44 symbol, None if it has none.
    - Any other name is a symbol.  For human genes GENCODE 44 gives its ID and its spelling
      (exact spelling first, else in any case: ``cd3e`` → ``CD3E``); a symbol of several IDs
      (``Y_RNA``, a few PAR genes) gets the first ID in sort order.  A symbol unknown to the
      table is kept as it is, with no ID.

    ``species`` is ``'human'``, ``'mouse'`` or None (guessed by :func:`species_of`; human when
    unclear).  Mouse symbols are kept as they are: the shipped tables hold human IDs only.
    """
    names = _names(genes, "gene names", unique=False)
    species = _check_species(species) or species_of(names) or "human"
    arr = names.to_numpy(object)
    ens = _strip(arr)
    is_id = pd.notna(ens)
    sym = np.where(is_id, None, arr)
    if species == "human" and len(arr):
        sym[is_id] = pd.Series(ens[is_id], dtype=object).map(_human()[0]).to_numpy(object)
        pos = np.flatnonzero(~is_id)
        hits = pd.concat([_ids_of(pos, arr[pos], False).assign(rank=0), _ids_of(pos, arr[pos], True).assign(rank=1)])
        hits = hits.sort_values(["pos", "rank", "key"]).drop_duplicates("pos")
        ens[hits.pos.to_numpy()], sym[hits.pos.to_numpy()] = hits.key.to_numpy(), hits.symbol.to_numpy()
    out = pd.DataFrame({"ensembl_id": ens, "symbol": sym}, index=names, dtype=object)
    return out.where(out.notna(), None)


def species_of(genes) -> str | None:
    """``'human'``, ``'mouse'`` or None: a guess from the form of the gene names.

    Votes: ``ENSG`` IDs and upper-case symbols (``CD3E``, also ``C1orf112``) for human;
    ``ENSMUSG`` IDs and mixed-case symbols (``Cd3e``, ``mt-Co1``) for mouse.  Other Ensembl
    IDs and all-lower-case symbols vote for neither; names without letters are not counted.
    A species needs at least 80 % of the votes; otherwise (or with no votes) None.  Long
    lists are judged on 5,000 names spread evenly over them.
    """
    s = pd.Series(_names(genes, "gene names", unique=False), dtype=object)
    s = s.iloc[:: max(1, len(s) // 5000)]
    prefix = s.str.extract(r"^(ENS[A-Z]*G)\d")[0]
    sym = s[prefix.isna()]
    lower, upper = sym.str.contains("[a-z]"), sym.str.contains("[A-Z]")
    orf = sym.str.contains(r"\dorf\d")
    human = int((prefix == "ENSG").sum() + ((upper & ~lower) | orf).sum())
    mouse = int((prefix == "ENSMUSG").sum() + (upper & lower & ~orf).sum())
    votes = int(prefix.notna().sum() + (upper | lower).sum())
    for name, n in (("human", human), ("mouse", mouse)):
        if votes and n >= 0.8 * votes:
            return name
    return None


def map_query(query_genes, model_genes, model_ids=None, model_symbols=None, *, species: str | None = None,
              model_species: str | None = "human") -> tuple[pd.Index, dict]:
    """Rename the query's genes to the model genes they are: ``(new_names, report)``.

    ``new_names`` has one entry per query gene, in query order, all unique: the model gene's
    name where the query gene matches one, else the query gene's own name (never a model
    gene's name: an exact name is always matched first).  Align columns by exact name after.
    ``model_ids`` / ``model_symbols`` are what :func:`identifiers` recorded at training (one
    per model gene, None where unknown); None derives them from the model's gene names.

    Steps, in order; each query gene and each model gene is matched at most once:

    (a) ``direct``: the same name;
    (b) ``version_stripped``: the same Ensembl ID once version suffixes are dropped on both sides;
    (c) ``by_id_mapping``: through the other identifier kind: a query ID matches a model
        gene recorded with that ID or with the ID's GENCODE 44 symbol, a query symbol one
        recorded with that symbol or one of its GENCODE IDs (GENCODE only for human queries);
    (d) ``by_case``: as (c), with symbols compared in any case (``cd3e``, ``Cd3e`` → ``CD3E``);
    (e) ``orthologue_one_to_one``, only where ``species`` differs from ``model_species``: a
        query symbol (or a human ID's symbol) still unmatched is replaced by its Ensembl 105
        orthologue if that is one-to-one, then matched by (a), (c), (d).  Orthologues that
        are not one-to-one are dropped, never guessed: the report counts as
        ``orthologue_one_to_many_dropped`` those query genes one of whose orthologues is a
        model gene.  Mouse Ensembl IDs cannot be translated (the table is by symbol).

    Ties are resolved the same way every time: an earlier step wins; within a step a query
    gene takes its candidate first in model order (a symbol of several IDs), and a model gene
    claimed by several query genes goes to the first of them in query order, the others
    trying their next candidate.  Query genes that had a choice of model genes, or lost one
    to another query gene, are counted as ``ambiguous_resolved``.

    ``species`` / ``model_species``: ``'human'``, ``'mouse'`` or None (guessed by
    :func:`species_of`; the query is taken to be of the model's species when unclear).

    The report is a plain dict: ``n_model_genes``, ``n_query_genes``, ``species``,
    ``model_species``, the number of model genes matched at each step (above),
    ``orthologue_one_to_many_dropped``, ``ambiguous_resolved``, ``missing`` (model genes no
    query gene matched; the step counts plus ``missing`` add up to ``n_model_genes``),
    ``unmatched_query_genes``, ``examples`` (a few names per count) and a one-line ``summary``.
    """
    q, m = _names(query_genes, "query gene names"), _names(model_genes, "model gene names")
    species, model_species = _check_species(species), _check_species(model_species, "model_species")
    model_species = model_species or species_of(m) or "human"
    species = species or species_of(q) or model_species
    qa, ma = q.to_numpy(object), m.to_numpy(object)
    nq, nm = len(qa), len(ma)
    if model_ids is None or model_symbols is None:
        known = identifiers(m, species=model_species)
        model_ids = known.ensembl_id if model_ids is None else model_ids
        model_symbols = known.symbol if model_symbols is None else model_symbols
    m_sid = _strip(ma)
    mid = _strip(_column(model_ids, nm, "model_ids"))
    mid = np.where(pd.notna(mid), mid, m_sid)
    msym = np.concatenate([_column(model_symbols, nm, "model_symbols"), np.where(pd.notna(m_sid), None, ma)])
    mpos, qpos = np.arange(nm), np.arange(nq)
    m_ids, m_syms = _pairs(mpos, mid, "i:"), _pairs(np.tile(mpos, 2), msym)
    exact = pd.concat([m_ids, m_syms.assign(key="s:" + m_syms.key)], ignore_index=True)
    folded = pd.concat([m_ids, m_syms.assign(key="s:" + m_syms.key.str.upper())], ignore_index=True)
    m_name = _pairs(mpos, ma)

    M = _Matcher(nq, nm)
    human_q = species == "human"
    M.run("direct", _pairs(qpos, qa), m_name)
    q_sid = _strip(qa)
    M.run("version_stripped", _pairs(qpos, q_sid), _pairs(mpos, m_sid))
    M.run("by_id_mapping", _keys(qpos, qa, human_q, False, q_sid), exact)
    M.run("by_case", _keys(qpos, qa, human_q, True, q_sid), folded)
    dropped = np.array([], dtype=object)
    if species != model_species and nq:
        left = np.flatnonzero(M.match < 0)
        sid = q_sid[left]
        src = np.where(pd.notna(sid), None, qa[left])
        if human_q:  # a human ID stands for its symbol
            src = np.where(pd.notna(sid), pd.Series(sid, dtype=object).map(_human()[0]).to_numpy(object), src)
        o = _orthologues(left, src, species, model_species)
        one, human_m = o[o.one], model_species == "human"
        M.run("orthologue_one_to_one", _pairs(one.pos, one.dst), m_name)
        M.run("orthologue_one_to_one", _keys(one.pos, one.dst, human_m, False), exact)
        M.run("orthologue_one_to_one", _keys(one.pos, one.dst, human_m, True), folded)
        many = o[~o.pos.isin(one.pos)]
        model_upper = set(m_syms.key.str.upper()) | set(pd.Series(ma, dtype=object).str.upper())
        dropped = qa[np.unique(many.pos[many.dst.str.upper().isin(model_upper)].to_numpy())]

    hit = M.match >= 0
    new = qa.copy()
    new[hit] = ma[M.match[hit]]
    counts = {s: int((M.step == s).sum()) for s in STEPS}
    missing = ma[~M.taken]
    contested = qa[M.contested]
    examples = {s: [f"{qa[i]} -> {ma[M.match[i]]}" for i in np.flatnonzero(M.step == s)[:3]] for s in STEPS}
    examples.update(missing=list(missing[:5]), ambiguous_resolved=list(contested[:3]),
                    orthologue_one_to_many_dropped=list(dropped[:3]))
    del examples["direct"]
    report = {"n_model_genes": nm, "n_query_genes": nq, "species": species, "model_species": model_species,
              **counts, "orthologue_one_to_many_dropped": len(dropped), "ambiguous_resolved": len(contested),
              "missing": len(missing), "unmatched_query_genes": int((~hit).sum()),
              "examples": {k: v for k, v in examples.items() if v}}
    words = dict(STEPS, orthologue_one_to_one=f"as {species}-{model_species} orthologues")
    how = ", ".join(f"{counts[s]} {words[s]}" for s in STEPS if counts[s])
    tail = [f"{len(names)} {what} (e.g. {', '.join(names[:3])})" for names, what in (
        (missing, "missing"), (contested, "ambiguous matches resolved"),
        (dropped, "query genes without a one-to-one orthologue dropped")) if len(names)]
    report["summary"] = "; ".join([f"{nm - len(missing)} of {nm} model genes found in the query"
                                   + (f" ({how})" if how else "")] + tail)
    logger.info("gene mapping: %s", report["summary"])
    return pd.Index(new, dtype=object), report
