"""Cell anchors: one K-bit target code per cell type.

With at most ``2 * K`` types (and K a power of two) the anchors are rows of a
Hadamard matrix and their negations, so any two anchors differ in K/2 bits (a row
and its own negation in K).  Otherwise they are random balanced codes (K/2 ones)
picked greedily so that every pair differs in at least ``min_distance`` bits.
Anchors are returned as ``{-1, +1}`` float32 arrays of shape ``(n_types, K)``.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import hadamard

from ._errors import InputError


def _is_power_of_two(k: int) -> bool:
    return k > 0 and (k & (k - 1)) == 0


def make_anchors(n_types: int, n_bits: int, seed: int = 0, min_distance: int | None = None) -> np.ndarray:
    """Return ``n_types`` anchor codes of ``n_bits`` bits, deterministic from ``seed``."""
    if n_types < 2:
        raise InputError(f"need at least 2 cell types to build anchors, got {n_types}")
    if n_bits < 8 or n_bits % 8:
        raise InputError(f"n_bits must be a positive multiple of 8 (got {n_bits}); 64 is the default")
    rng = np.random.default_rng(seed)
    if _is_power_of_two(n_bits) and n_types <= 2 * n_bits:
        h = hadamard(n_bits).astype(np.float32)
        # Prefer the positive rows, which are all K/2 apart; negations only when needed.
        order = rng.permutation(n_bits)
        rows = np.concatenate([h[order], -h[order]])
        return np.ascontiguousarray(rows[:n_types])
    return _random_balanced(n_types, n_bits, rng, min_distance)


def _random_balanced(n_types: int, n_bits: int, rng: np.random.Generator, min_distance: int | None) -> np.ndarray:
    if min_distance is None:
        min_distance = max(1, n_bits // 4)
    chosen: list[np.ndarray] = []
    tries = 0
    while len(chosen) < n_types:
        tries += 1
        if tries > 200 * n_types + 10_000:
            raise InputError(
                f"could not find {n_types} codes of {n_bits} bits at least {min_distance} bits apart; "
                "increase n_bits"
            )
        code = np.full(n_bits, -1.0, dtype=np.float32)
        code[rng.choice(n_bits, n_bits // 2, replace=False)] = 1.0
        if all(np.sum(code != c) >= min_distance for c in chosen):
            chosen.append(code)
    return np.stack(chosen)


def min_pairwise_distance(anchors: np.ndarray) -> int:
    """Smallest Hamming distance between two anchors."""
    bits = anchors > 0
    d = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    np.fill_diagonal(d, bits.shape[1] + 1)
    return int(d.min())
