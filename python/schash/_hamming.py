"""Packed binary codes and exact Hamming search.

Codes are stored packed, ``K/8`` bytes per cell (``np.packbits`` order).  Distances
come from a matrix product of the ±1 codes (``d = (K - x·y) / 2``, exact), in blocks so
memory stays bounded.  Trained codes collapse onto few distinct values, so searches first reduce
both sides to their distinct codes and expand the answer afterwards; with FAISS installed, its
binary index scans what is left (:func:`knn_indices`).
"""

from __future__ import annotations

import os
import sys

import numpy as np


def pack(signs: np.ndarray) -> np.ndarray:
    """Pack real-valued outputs (or ±1 codes) into bits: a bit is 1 where the value is > 0."""
    return np.packbits(np.asarray(signs) > 0, axis=1)


def unpack(codes: np.ndarray, n_bits: int) -> np.ndarray:
    """Unpack to a ``{-1, +1}`` float32 array."""
    bits = np.unpackbits(np.asarray(codes, dtype=np.uint8), axis=1, count=n_bits)
    return bits.astype(np.float32) * 2 - 1


def distances(a: np.ndarray, b: np.ndarray, block: int = 4096) -> np.ndarray:
    """All pairwise Hamming distances between packed codes ``a`` (n × B) and ``b`` (m × B), as uint16.

    Computed as ``(K - x·y) / 2`` on the ±1 codes with one float32 matrix product per block: exact
    (the products are integers of at most ``K`` in magnitude) and several times faster than counting
    the bits of XORed bytes.
    """
    a = np.ascontiguousarray(a, dtype=np.uint8)
    b = np.ascontiguousarray(b, dtype=np.uint8)
    K = a.shape[1] * 8
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.uint16)
    if out.size == 0:
        return out
    b_block = 262_144  # ±1 rows of b made at a time: 64 MB for 64-bit codes
    for t in range(0, b.shape[0], b_block):
        B = unpack(b[t : t + b_block], K)
        for s in range(0, a.shape[0], block):
            dot = unpack(a[s : s + block], K) @ B.T
            out[s : s + block, t : t + b_block] = ((K - dot) * 0.5).astype(np.uint16)
    return out


def distinct(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct rows of ``codes`` (in order of first appearance) with the inverse index and the count of each.

    Rows are read as 64-bit words (zero-padded) and hashed by ``pandas.factorize``, one word at a
    time, each word's codes combined with the codes of the words before it: linear time, ~7× faster
    than sorting the rows as opaque values (10,000,000 64-bit codes: 0.6 s against 4.1 s).
    """
    import pandas as pd

    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    n, width = codes.shape
    if n == 0:
        return codes[:0], np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    pad = -width % 8
    words = np.ascontiguousarray(np.pad(codes, ((0, 0), (0, pad))) if pad else codes).view("<u8")
    inverse, uniq = pd.factorize(words[:, 0])
    for w in range(1, words.shape[1]):
        col, col_uniq = pd.factorize(words[:, w])
        inverse, uniq = pd.factorize(inverse.astype(np.int64) * len(col_uniq) + col)
    inverse = inverse.astype(np.int64)
    running = np.maximum.accumulate(inverse)  # new rows take the next index: their first appearances
    first = np.flatnonzero(np.concatenate([[True], running[1:] > running[:-1]]))
    return codes[first], inverse, np.bincount(inverse, minlength=len(first))


def nearest_anchor(codes: np.ndarray, anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index of the nearest anchor, its distance and the gap to the second nearest, per cell.

    ``anchors`` are packed.  Ties go to the anchor with the lower index.
    """
    uniq, inverse, _ = distinct(codes)
    d = distances(uniq, anchors).astype(np.int32)
    order = np.argsort(d, axis=1, kind="stable")
    best = order[:, 0]
    rows = np.arange(d.shape[0])
    dist = d[rows, best]
    gap = d[rows, order[:, 1]] - dist if d.shape[1] > 1 else np.zeros_like(dist)
    return best[inverse], dist[inverse], gap[inverse]


def to_anchor(codes: np.ndarray, anchors: np.ndarray, calls: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For cells already called (``calls``: an anchor index per cell): the call, its anchor distance and the
    distance to the nearest other anchor minus it (negative where another anchor is nearer)."""
    uniq, inverse, _ = distinct(codes)
    d = distances(uniq, anchors).astype(np.int32)[inverse]
    rows = np.arange(len(d))
    calls = np.asarray(calls, dtype=np.int64)
    dist = d[rows, calls]
    if d.shape[1] < 2:
        return calls, dist, np.zeros_like(dist)
    d[rows, calls] = np.iinfo(np.int32).max
    return calls, dist, d.min(1) - dist


def knn_vote(
    codes: np.ndarray, ref_codes: np.ndarray, ref_labels: np.ndarray, n_labels: int, k: int, n_bits: int
) -> tuple[np.ndarray, np.ndarray]:
    """Label fractions among the ``k`` nearest reference cells of each query cell.

    Exact: reference cells are taken in order of distance; when several cells tie at
    the k-th distance they share the remaining votes equally.  Returns the fractions
    (cells × labels, rows sum to 1) and the mean distance to the k neighbours.  Per block of
    distinct query codes: one histogram of the reference cells by distance finds the k-th
    distance, and two products with the label counts of the distinct reference codes give the
    votes of the closer and of the tied cells.
    """
    q_uniq, q_inv, _ = distinct(codes)
    r_uniq, r_inv, r_counts = distinct(ref_codes)
    per_code = np.zeros((r_uniq.shape[0], n_labels), dtype=np.float64)
    np.add.at(per_code, (r_inv, np.asarray(ref_labels)), 1.0)  # label counts per distinct code
    k = int(min(k, ref_codes.shape[0]))
    frac = np.empty((q_uniq.shape[0], n_labels), dtype=np.float64)
    mean_d = np.empty(q_uniq.shape[0], dtype=np.float64)
    block = max(1, 4_000_000 // max(1, r_uniq.shape[0]))
    counts = r_counts.astype(np.float64)
    for s in range(0, q_uniq.shape[0], block):
        d = distances(q_uniq[s : s + block], r_uniq).astype(np.int64)
        rows = np.arange(len(d))
        # reference cells at each distance (one pass), the k-th cell's distance and the cells before it
        hist = np.bincount((rows[:, None] * (n_bits + 1) + d).ravel(), weights=np.broadcast_to(counts, d.shape).ravel(),
                           minlength=len(d) * (n_bits + 1)).reshape(len(d), n_bits + 1)
        cum = np.cumsum(hist, axis=1)
        kth = (cum < k).sum(1)
        before = cum[rows, kth] - hist[rows, kth]
        share = (k - before) / hist[rows, kth]  # of each cell at the k-th distance
        closer = d < kth[:, None]
        # integer label counts first, the one fractional term added last: the sums are exact
        frac[s : s + block] = (closer @ per_code + share[:, None] * ((d == kth[:, None]) @ per_code)) / k
        mean_d[s : s + block] = ((closer * d) @ counts + (k - before) * kth) / k
    return frac[q_inv], mean_d[q_inv]


def knn_indices(codes: np.ndarray, ref_codes: np.ndarray, k: int,
                progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest reference cells of each query cell: (indices, distances), both cells × k.

    Neighbours are ordered by distance, ties by reference index — the same as a stable
    argsort of the full distance row.  Both sides are reduced to their distinct codes, and
    only the first ``k`` cells (by index) of each distinct reference code can ever be a
    neighbour: a later cell of the same code ties with, and ranks after, all of them.  When
    those candidates are few enough every distinct query code is compared with all of them at
    once (with few distinct reference codes, through the order of those codes; see
    :func:`_knn_by_pattern`); otherwise each distinct query code walks the distinct reference
    codes in order of distance and touches only the cells of the closest ones.  Where FAISS is
    installed (the ``faiss`` extra; by default on Linux only) the distinct query codes are scanned
    against the candidates by FAISS's binary index instead, unless the walk is cheaper
    (:func:`_faiss_for`): the same answer.
    """
    k = int(min(k, ref_codes.shape[0]))
    q_uniq, q_inv, _ = distinct(codes)
    r_uniq, r_inv, r_counts = distinct(ref_codes)
    by_code = np.argsort(r_inv, kind="stable")  # reference cells grouped by code, by index within
    starts = np.concatenate([[0], np.cumsum(r_counts)])
    rank_in_code = np.arange(len(by_code)) - starts[r_inv[by_code]]
    cand = np.sort(by_code[rank_in_code < k])  # every cell that can be a neighbour, by index
    faiss = _faiss_for(len(cand), r_uniq.shape[0], k)
    if faiss is not None:
        pos, dist = _knn_faiss(faiss, q_uniq, ref_codes[cand], k)
        return cand[pos][q_inv], dist[q_inv]
    if len(cand) <= 3 * r_uniq.shape[0] + LOOP_COST_PAIRS:
        by_pattern = (ref_codes.shape[1] * 8 + 1) * r_uniq.shape[0] < PATTERN_KEY_LIMIT and k <= PATTERN_MAX_K
        pos, dist = (_knn_by_pattern if by_pattern else _knn_direct)(q_uniq, r_uniq, r_inv[cand], k)
        return cand[pos][q_inv], dist[q_inv]
    idx = np.empty((q_uniq.shape[0], k), dtype=np.int64)
    dist = np.empty((q_uniq.shape[0], k), dtype=np.uint16)
    block = max(1, 2_000_000 // max(1, r_uniq.shape[0]))
    from tqdm.auto import tqdm

    bar = tqdm(total=q_uniq.shape[0], desc="schash neighbours", unit="code", disable=not progress)
    for s in range(0, q_uniq.shape[0], block):
        bar.update(min(block, q_uniq.shape[0] - s))
        d = distances(q_uniq[s : s + block], r_uniq)
        order = np.argsort(d, axis=1, kind="stable")
        d_sorted = np.take_along_axis(d, order, axis=1)
        reach = (np.cumsum(r_counts[order], axis=1) < k).sum(1)  # first sorted code reaching k cells
        kth = d_sorted[np.arange(len(d)), reach]
        for j in range(len(d)):
            lo = np.searchsorted(d_sorted[j], kth[j], side="left")
            hi = np.searchsorted(d_sorted[j], kth[j], side="right")
            closer = [by_code[starts[c] : starts[c + 1]] for c in order[j, :lo]]
            closer = np.concatenate(closer) if closer else np.zeros(0, dtype=np.int64)
            need = k - len(closer)
            # from each tied code, its `need` lowest-index cells at most
            tied = [by_code[starts[c] : min(starts[c + 1], starts[c] + need)] for c in order[j, lo:hi]]
            tied = np.sort(np.concatenate(tied))[:need]
            chosen = np.concatenate([closer, tied])
            d_cells = d[j, r_inv[chosen]]
            keep = np.lexsort((chosen, d_cells))
            idx[s + j], dist[s + j] = chosen[keep], d_cells[keep]
    bar.close()
    return idx[q_inv], dist[q_inv]


# FAISS's scan, measured per distinct query code (2 cores, faiss-cpu 1.15): ~1 µs plus ~0.6 ns per
# candidate cell at 15 neighbours, more with more neighbours (about a factor 1 + k / 100).  It was
# faster than the direct and pattern searches below on every database measured (15 neighbours: the
# speed benchmark's synthetic codes 1.6-2.1 times, codes that hardly collapse 3.6-8 times; 50 and
# 150 neighbours: 1.6-22 times) and than the walk through the distinct codes unless the candidates
# are many per code and k is large (200 codes of 400 cells, k = 200: 0.27 s against 0.13 s)
FAISS_NS_PER_CODE, FAISS_NS_PER_CANDIDATE = 1_000, 0.6


def _faiss_for(n_candidates: int, n_codes: int, k: int):
    """The ``faiss`` module where it is installed, wanted and, where the search would walk the distinct
    reference codes, cheaper than that walk (see the costs here); else None.

    Wanted: ``SCHASH_FAISS=1``, or by default on Linux only.  On macOS and Windows faiss-cpu and torch
    each bring their own OpenMP runtime, and a process that loads both can abort ("OMP: Error #15") or
    crash in FAISS's search (faiss-wheels issues 40 and 73): there FAISS runs only when asked for."""
    wanted = os.environ.get("SCHASH_FAISS", "1" if sys.platform.startswith("linux") else "0")
    if wanted == "0":
        return None
    walks = n_candidates > 3 * n_codes + LOOP_COST_PAIRS
    faiss_ns = (FAISS_NS_PER_CODE + FAISS_NS_PER_CANDIDATE * n_candidates) * (1 + k / 100)
    if walks and faiss_ns > LOOP_NS_PER_CODE + LOOP_NS_PER_REF_CODE * n_codes:
        return None
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _knn_faiss(faiss, q: np.ndarray, cand_codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions among the candidates (``cand_codes``, in reference order) and distances of each query
    code's ``k`` nearest, by FAISS's exact binary scan (``IndexBinaryFlat``) on as many threads as torch
    has (one in a one-thread Dask worker).  Its heaps rank equal distances by id, so ties go to the lower
    position, as in a stable argsort (``tests/test_hamming.py`` checks it against the searches here)."""
    import torch

    index = faiss.IndexBinaryFlat(cand_codes.shape[1] * 8)
    index.add(np.ascontiguousarray(cand_codes, dtype=np.uint8))
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(torch.get_num_threads())
    try:
        dist, pos = index.search(np.ascontiguousarray(q, dtype=np.uint8), k)
    finally:
        faiss.omp_set_num_threads(before)
    return pos.astype(np.int64), dist.astype(np.uint16)


# which search: measured per distinct query code, the loop costs ~13 ns per distinct reference code
# plus ~28 µs of Python, the direct search ~4.5 ns per candidate cell; so the direct search wins
# while candidates are fewer than 3 per distinct reference code plus this many
LOOP_COST_PAIRS = 6000
LOOP_NS_PER_CODE, LOOP_NS_PER_REF_CODE = 28_000, 13
# and among the direct searches, the one through the order of the distinct reference codes while
# its keys (distance × codes + code) stay below this: up to 16,131 codes at 64 bits.  Measured
# (2 cores, 15 neighbours, both with torch's top-k): 2,353 codes 0.21 s against 0.30 s, 6,820 codes
# 0.59 s against 0.84 s, level at 15,545 codes (codes clustered around 20 centres, 12,500-15,500
# distinct query codes).  (With a full sort of the keys in place of the top-k, the limit was 2**16.)
PATTERN_KEY_LIMIT = 2**20
PATTERN_SHARE_MIN = 1024  # distinct query codes from which their patterns are hashed and shared
# and up to this many neighbours: each pattern orders w × k cells, so with more the direct search wins
# (the 1,000-cell synthetic database, 56,601 distinct query codes: k = 25 0.61 s against 0.29 s,
# k = 150 11.6 s against 0.75 s; level at 15; the 10,000-cell one, fewer patterns: 0.04 s against
# 0.07 s at 25, 1.4 s against 0.34 s at 150)
PATTERN_MAX_K = 20


def _knn_by_pattern(q: np.ndarray, r_uniq: np.ndarray, cand_code: np.ndarray, k: int,
                    block_entries: int = 8_000_000) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_knn_direct`'s answer, found through the order of the distinct reference codes.

    A query's neighbours depend only on which reference codes lie within its k-th distance and
    in which order of distance: its *pattern*.  Per distinct query code the distinct reference
    codes are ranked by (distance, code), one integer key each; the first ``w = min(k, R)`` of them hold
    at least ``k`` candidate cells, so they give the k-th distance, and the codes up to it in
    order, with a level that rises with the distance, are the pattern.  Trained codes share few
    patterns (58,081 distinct query codes, 5,871 patterns against a 1,000-cell reference), so
    each pattern's cells are ordered once — by (level, reference index), which is (distance,
    index) — and the distances read back per query code.  A query code with more than ``w`` codes
    within its k-th distance (ties at that distance; 7 of 58,081 there) goes to
    :func:`_knn_direct`.  Requires ``(K + 1) · R < 2**24``, where the float32 keys are exact.
    """
    import torch

    R, K, m = r_uniq.shape[0], r_uniq.shape[1] * 8, len(cand_code)
    w = min(k, R)
    per_code = np.bincount(cand_code, minlength=R).astype(np.int32)  # candidates per code, ≤ k
    by_code = np.argsort(cand_code, kind="stable")
    first = np.concatenate([[0], np.cumsum(per_code)])
    slots = np.full((R + 1, k), m, dtype=np.int64)  # each code's candidates by index; row R: none
    slots[cand_code[by_code], np.arange(m) - first[cand_code[by_code]]] = by_code
    ref_pm = torch.from_numpy(unpack(r_uniq, K)).T
    ramp = torch.arange(R, dtype=torch.float32) + K * R / 2
    column = np.arange(w, dtype=np.int64)[None, :, None]
    pos = np.empty((q.shape[0], k), dtype=np.int64)
    dist = np.empty((q.shape[0], k), dtype=np.uint16)
    spill = []
    block = max(1, block_entries // R)
    for s in range(0, q.shape[0], block):
        # distance × R + code, (K - x·y) / 2 · R + code: exact (integers, and products of R / 2 with the
        # integer dot products' partial sums, all far below 2**24)
        key = torch.addmm(ramp, torch.from_numpy(unpack(q[s : s + block], K)), ref_pm, alpha=-R / 2)
        # the smallest w (and the next) keys in order: torch's top-k on every core instead of sorting
        # whole rows (100,000 query codes against 74 reference codes: 35 ms against 85 ms)
        top = torch.topk(key, min(w + 1, R), dim=1, largest=False).values.numpy().astype(np.int32)
        code, d = top[:, :w] % R, top[:, :w] // R
        kth = d[np.arange(len(d)), (np.cumsum(per_code[code], axis=1) < k).sum(1)]
        if w < R:  # a code beyond the first w also at the k-th distance
            spill.append(s + np.flatnonzero(top[:, w] // R <= kth))
        level = np.zeros_like(d)
        np.cumsum(d[:, 1:] != d[:, :-1], axis=1, out=level[:, 1:])
        pattern = np.where(d <= kth[:, None], code * w + level, -1)
        if len(pattern) >= PATTERN_SHARE_MIN:
            p_uniq, p_inv, _ = distinct(pattern.view(np.uint8))
            p_uniq = p_uniq.view(pattern.dtype).astype(np.int64)
        else:  # too few to gain from sharing (hashing them costs ~0.2 ms)
            p_uniq, p_inv = pattern.astype(np.int64), np.arange(len(pattern))
        order = np.empty((len(p_uniq), k), dtype=np.int64)
        step = max(1, block_entries // (w * k))  # patterns expanded at a time (w × k cells each)
        for t in range(0, len(p_uniq), step):
            part = p_uniq[t : t + step]
            cells = slots[np.where(part >= 0, part // w, R)]  # (patterns, w, k)
            # (level, index, column) in one integer; padding sorts last
            rank = np.where(cells < m, ((part % w)[:, :, None] * m + cells) * w + column, w * w * m)
            order[t : t + step] = np.sort(rank.reshape(len(part), -1), axis=1)[:, :k]
        pos[s : s + block] = ((order // w) % m)[p_inv]
        dist[s : s + block] = np.take_along_axis(d, (order % w)[p_inv].astype(np.intp), axis=1)
    spill = np.concatenate(spill) if spill else np.zeros(0, dtype=np.int64)
    if len(spill):
        pos[spill], dist[spill] = _knn_direct(q[spill], r_uniq, cand_code, k)
    return pos, dist


def _knn_direct(q: np.ndarray, r_uniq: np.ndarray, cand_code: np.ndarray, k: int,
                block_entries: int = 16_000_000) -> tuple[np.ndarray, np.ndarray]:
    """:func:`knn_indices` by comparing each distinct query code with every candidate cell at once.

    ``r_uniq`` are the distinct reference codes and ``cand_code`` the code (row of ``r_uniq``) of
    each candidate cell, candidates in reference order; returns positions in that list and the
    distances.  Ties keep the lower position first: the sort key is ``distance * m + position``,
    unique per candidate, so a top-k of the keys picks exactly the cells a stable argsort of the
    whole row would.  The distances to the distinct codes come from one matrix product per block,
    are gathered out to the candidates and selected by torch's top-k (multi-threaded, about three
    times faster than a NumPy argpartition of int64 keys).  The keys are integers: float32 holds them
    exactly while ``(K + 1)·m < 2**24`` (258,000 candidates at 64 bits), float64 beyond that.
    """
    import torch

    m, K = len(cand_code), r_uniq.shape[1] * 8
    dtype = torch.float32 if (K + 1) * m < 2**24 else torch.float64
    ref_pm = torch.from_numpy(unpack(r_uniq, K)).to(dtype)
    gather = torch.from_numpy(np.asarray(cand_code, dtype=np.int64))
    tie = torch.arange(m, dtype=dtype)
    pos = np.empty((q.shape[0], k), dtype=np.int64)
    dist = np.empty((q.shape[0], k), dtype=np.uint16)
    block = max(1, block_entries // max(1, m, r_uniq.shape[0]))
    for s in range(0, q.shape[0], block):
        q_pm = torch.from_numpy(unpack(q[s : s + block], K)).to(dtype)
        d_code = (K - q_pm @ ref_pm.T) * (m / 2)  # distance × m per distinct code, exact integers
        key = torch.index_select(d_code, 1, gather).add_(tie)
        top = torch.topk(key, k, dim=1, largest=False, sorted=True).values.to(torch.int64).numpy()
        pos[s : s + block], dist[s : s + block] = top % m, top // m
    return pos, dist
