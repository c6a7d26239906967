"""The one encoder: from a :class:`~schash._data.Source` to hash codes and typicality, a chunk at a time.

Every encoding goes through here — the reference database at training, ``predict``,
``annotate``, ``encode``, ``neighbors``, ``composition``, ``add_reference``, the reference
map, saliency, the CLI and the R bridge.  :class:`ScaledPass` learns what the input is (counts
or log values, from rows across the whole input) and how many model genes it has; iterating
over it yields the scaled rows a chunk at a time.  Under the default ``scale="reference"`` that
is the only pass over the data; under ``scale="batch"`` a first pass gathers each group's
per-gene statistics, and the chunks are kept from it while they fit in
:data:`CACHE_LIMIT_BYTES` (else read again).  A backed
``.h5ad`` is read chunk by chunk, so peak memory is bounded by the chunk, not the file, and
in-memory input is cut into the same chunks, so both give identical codes.

Dask input (:class:`schash._dask.DaskSource`) takes the same steps on Dask workers, a
chunk per task (:mod:`schash._dask`): each chunk's rows, features and :meth:`Encoder.block`
are computed by the same functions as here, which is why the results are identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse

from . import _args, _hamming
from ._data import Source
from ._novelty import NoveltyScorer, margins, prototype_cosines
from ._preprocess import Preprocessor
from ._rare import NEAR, RareTypes, nearest
from ._scaled import Scaled, column_sums, dot_rows
from ._values import check_finite_nonnegative, detect_kind

CACHE_LIMIT_BYTES = 1 << 30  # keep first-pass features in memory below this, else recompute


@dataclass
class Encoded:
    """What one pass over an input yields: packed codes, typicality and bookkeeping."""

    cells: pd.Index
    codes: np.ndarray  # packed, cells × n_bits/8
    typicality: np.ndarray | None  # p-values in (0, 1]; None when encoded without a novelty scorer
    empty: np.ndarray  # cells without expression on the model's genes
    n_genes_matched: int
    kind: str = "counts"  # what the input was detected as (see schash._values.detect_kind)
    projected: np.ndarray | None = None  # cells × (PCA + residual) in the novelty scorer's space
    gene_mapping: dict | None = None  # how the input's genes were matched to the model's (schash._genes)
    prototype: np.ndarray | None = None  # each cell's nearest type prototype (index); None without prototypes
    contested: bool = False  # whether ``prototype`` went through the rare types' contest (schash._rare)
    # p-values of each cell's hidden-layer cosine with its nearest type prototype among the calibration
    # cells' (NoveltyScorer.alignment); None where the model calibrates none
    alignment: np.ndarray | None = None
    # p-values of each cell's largest probability under the expression view's type classifier among the
    # calibration cells' (NoveltyScorer.clarity); None where the model has none
    clarity: np.ndarray | None = None


@dataclass
class InputFacts:
    """What an encoding pass decides about its input before reading the chunks."""

    genes: pd.Index  # the input's gene names, matched to the model's where they are the same genes
    gene_mapping: dict
    kind: str
    groups: np.ndarray  # each cell's scaling group
    n_groups: int
    chunk_size: int


def input_facts(pre: Preprocessor, src, *, batch_key=None, groups=None, kind=None, species=None,
                chunk_size: int = 8192, min_gene_overlap: float = 0.3, check_sample: bool = True) -> InputFacts:
    """Arguments checked, genes matched, the kind of values (from rows across the whole input, never the
    first chunk alone) and the scaling groups: the same for one machine (:class:`ScaledPass`) and Dask."""
    chunk_size = _args.whole("chunk_size", chunk_size)
    _args.number("min_gene_overlap", min_gene_overlap, lo=0, hi=1)
    genes, mapping = pre.query_genes(src.genes, species)
    if kind is None:
        sample = src.sample()
        if check_sample:  # in-memory input was checked whole when it was read
            check_finite_nonnegative(sample)
        kind = detect_kind(sample)
    if groups is None:
        groups, n_groups = src.groups(batch_key)
    else:
        groups = np.asarray(groups, dtype=np.int64)
        n_groups = int(groups.max()) + 1 if len(groups) else 1
    return InputFacts(genes, mapping, kind, groups, n_groups, chunk_size)


class ScaledPass:
    """The scaled rows of a source for a model's preprocessing (see the module docstring).

    ``groups`` (one code per cell) overrides ``batch_key``; ``kind`` overrides detection.  The
    input's genes are matched to the model's by name, or mapped across identifier kinds (and from
    ``species`` to the model's) where names alone miss model genes (:meth:`Preprocessor.query_genes`).
    """

    def __init__(self, pre: Preprocessor, src: Source, *, batch_key=None, groups=None, kind=None,
                 species: str | None = None, chunk_size: int = 8192, min_gene_overlap: float = 0.3,
                 progress: bool = False):
        from tqdm.auto import tqdm

        self.pre, self.src = pre, src
        f = input_facts(pre, src, batch_key=batch_key, groups=groups, kind=kind, species=species,
                        chunk_size=chunk_size, min_gene_overlap=min_gene_overlap, check_sample=src.backed)
        self.genes, self.gene_mapping, self.kind, self.chunk_size = f.genes, f.gene_mapping, f.kind, f.chunk_size
        kind, groups, n_groups = f.kind, f.groups, f.n_groups
        self.groups = groups
        self.bounds = src.bounds(self.chunk_size)
        self.progress, self.min_gene_overlap = progress, min_gene_overlap
        G = len(pre.genes)
        s1, s2 = np.zeros((n_groups, G)), np.zeros((n_groups, G))
        sizes = np.bincount(groups, minlength=n_groups)
        self.empty = np.zeros(src.n, dtype=bool)  # filled as the chunks are read
        self._cache = None
        if pre.scale == "reference":
            # every group uses the reference's statistics: nothing to learn from the input first, so
            # the chunks are read once, as they are encoded (a GeneOverlapError comes from the first)
            self.present = pre.genes.isin(self.genes)
            self.n_genes_matched = int(self.present.sum())
            self.mean, self.std = pre.stats_from_sums(s1, s2, sizes)
            return
        self._cache, cached_bytes, present = [], 0, np.zeros(G, dtype=bool)
        for i, (a, b) in enumerate(tqdm(self.bounds, desc="schash read", disable=not progress, unit="chunk")):
            F, present, _ = pre.features(self._chunk(a, b), kind=kind, min_overlap=min_gene_overlap,
                                         what="query", report=i == 0)
            F = canonical(F)
            c1, c2 = column_sums(F, groups[a:b], n_groups)
            s1 += c1
            s2 += c2
            self.empty[a:b] = np.diff(F.indptr) == 0
            cached_bytes += F.data.nbytes + F.indices.nbytes
            self._cache.append(F if cached_bytes <= CACHE_LIMIT_BYTES else None)
        self.present, self.n_genes_matched = present, int(present.sum())
        self.mean, self.std = pre.stats_from_sums(s1, s2, sizes)

    def __iter__(self):
        """``(start, stop, Scaled)`` for every chunk, in order."""
        from tqdm.auto import tqdm

        cache = self._cache if self._cache is not None else [None] * len(self.bounds)
        for i, ((a, b), F) in enumerate(zip(tqdm(self.bounds, desc="schash encode", disable=not self.progress,
                                                 unit="chunk"), cache, strict=True)):
            if F is None:
                if self._cache is None:  # the one pass: the first chunk checks and reports the gene overlap
                    F = canonical(self.pre.features(self._chunk(a, b), kind=self.kind, what="query",
                                                    min_overlap=self.min_gene_overlap if i == 0 else 0,
                                                    report=i == 0)[0])
                    self.empty[a:b] = np.diff(F.indptr) == 0
                else:
                    F = chunk_features(self.pre, self._chunk(a, b), self.kind)
            yield a, b, Scaled(F, self.groups[a:b], self.mean, self.std, self.present, self.pre.clip)

    def _chunk(self, a: int, b: int):
        expr = self.src.chunk(a, b)
        expr.genes = self.genes  # the names matched to the model's
        return expr


def chunk_features(pre: Preprocessor, expr, kind: str):
    """The features of one chunk's rows (CSR), as every chunk after the first pass is computed."""
    return canonical(pre.features(expr, kind=kind, min_overlap=0, report=False)[0])


def canonical(F) -> sparse.csr_matrix:
    """CSR features with each entry stored once (duplicates summed, as a dense matrix would hold them),
    on a copy where needed: scaling clips each stored value, so a value must not be split in two."""
    F = sparse.csr_matrix(F)
    if not F.has_canonical_format:
        F = F.copy()
        F.sum_duplicates()
    return F


@dataclass(frozen=True)
class Encoder:
    """A model's preprocessing, network, anchors and (once fitted) novelty scorer and type
    prototypes, as one encoder."""

    pre: Preprocessor
    module: object  # schash._module.HashMLP
    anchors: np.ndarray
    novelty: NoveltyScorer | None = None
    prototypes: np.ndarray | None = None  # types × last hidden layer, unit rows
    rare: RareTypes | None = None  # the rare types' contest (schash._rare), for prototype calls only

    def scaled(self, src: Source, **kwargs) -> ScaledPass:
        """The first pass over ``src`` (arguments of :class:`ScaledPass`)."""
        return ScaledPass(self.pre, src, **kwargs)

    def codes(self, X: Scaled, chunk: int = 8192) -> np.ndarray:
        """Packed codes of rows already scaled (the training rows), chunk by chunk."""
        out = [_hamming.pack(self.module.logits_sparse(X.slice(s, s + chunk))) for s in range(0, X.shape[0], chunk)]
        return np.concatenate(out) if out else np.zeros((0, self.anchors.shape[1] // 8), np.uint8)

    def block(self, block: Scaled) -> tuple:
        """Packed codes, projected coordinates, typicality, nearest type prototype, alignment and clarity
        of one chunk of scaled rows (the last five None where the encoder has no novelty scorer or prototypes).

        Every value is per cell, computed from the chunk alone: chunks can be encoded anywhere
        (a Dask worker) and give what they give here.
        """
        first = self.module.net[0]
        if self.novelty is None:
            logits, sims, _ = self._outputs(block.linear(first.weight.detach().numpy(), first.bias.detach().numpy()))
            return _hamming.pack(logits), None, None, self._contest(block, sims), None, None  # sign(tanh(x)) == sign(x)
        # typicality is judged against the reference's own scale, whatever `scale` the network uses
        pre = self.pre
        ref = block if pre.scale == "reference" else block.restat(
            np.zeros(block.shape[0], dtype=np.int64), pre.ref_mean[None], pre.ref_std[None])
        h, coords = self._first_and_projection(block, ref)
        logits, sims, cosines = self._outputs(h)
        codes = _hamming.pack(logits)
        return codes, coords, self.novelty.typicality(coords, margins(logits, self.anchors, codes)), \
            self._contest(block, sims), self.novelty.alignment(cosines), self.novelty.clarity(coords)

    def _contest(self, block: Scaled, sims: np.ndarray | None) -> np.ndarray | None:
        """The prototype call (the nearest prototype), after the rare types' contest
        (:mod:`schash._rare`) where the model has rare types."""
        if sims is None:
            return None
        if self.rare is None or block.shape[0] == 0:
            return sims.argmax(1)
        return self.rare.contest(block.F, nearest(sims, NEAR))

    def _first_and_projection(self, block: Scaled, ref_block: Scaled) -> tuple[np.ndarray, np.ndarray]:
        """The network's first-layer outputs and the novelty scorer's projection of a block; one sparse
        product serves both when they scale the block alike (``scale="reference"``)."""
        first, nov = self.module.net[0], self.novelty
        w1, b1 = first.weight.detach().numpy(), first.bias.detach().numpy()
        if ref_block is not block:
            return block.linear(w1, b1), nov.project(ref_block)
        weight = np.vstack([w1, nov.components])
        bias = np.concatenate([b1, -dot_rows(nov.components, nov.center)])
        h = block.linear(weight, bias)
        n = w1.shape[0]
        return h[:, :n], nov.project_from(h[:, n:], block.sq_dist(nov.center))

    def _outputs(self, first: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Pre-tanh outputs from the first layer's, and with prototypes each cell's similarity with every
        type's prototype (the last hidden layer against unit rows) and its cosine with the nearest."""
        if self.prototypes is None:
            return self.module.logits_from_first(first), None, None
        hidden, logits = self.module.hidden_and_logits_from_first(first)
        sims = hidden @ self.prototypes.T
        return logits, sims, prototype_cosines(hidden, sims)

    def run(self, src: Source, *, keep_projected: bool = False, progress: bool = False, **kwargs) -> Encoded:
        """Encode every cell of ``src``: codes and, with a novelty scorer, typicality (and with
        ``keep_projected`` each cell's coordinates in the scorer's PCA space, for a reference map).

        Dask input is encoded by Dask tasks, a chunk each (:func:`schash._dask.run`).
        """
        if hasattr(src, "encode_on_dask"):  # a schash._dask.DaskSource
            return src.encode_on_dask(self, keep_projected=keep_projected, progress=progress, **kwargs)
        scaled = self.scaled(src, progress=progress, **kwargs)
        parts = [self.block(block) for _, _, block in scaled]
        return assemble(src.cells, parts, scaled.empty, scaled.n_genes_matched, scaled.kind, keep_projected,
                        scaled.gene_mapping, contested=self.rare is not None)


def assemble(cells, parts, empty, n_genes_matched, kind, keep_projected, gene_mapping=None, *,
             contested: bool = False) -> Encoded:
    """One :class:`Encoded` from the :meth:`Encoder.block` results of every chunk, in order."""
    codes = np.concatenate([p[0] for p in parts])
    typ = np.concatenate([p[2] for p in parts]) if parts[0][2] is not None else None
    projected = np.concatenate([p[1] for p in parts]) if keep_projected and parts[0][1] is not None else None
    proto = np.concatenate([p[3] for p in parts]) if parts[0][3] is not None else None
    alignment, clarity = (np.concatenate([p[i] for p in parts]) if parts[0][i] is not None else None for i in (4, 5))
    return Encoded(cells, codes, typ, empty, n_genes_matched, kind, projected, gene_mapping, proto,
                   contested and proto is not None, alignment, clarity)
