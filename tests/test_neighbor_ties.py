"""Neighbour compositions do not depend on the order of the reference cells.

Trained codes collapse onto few distinct values, so many reference cells tie at the k-th
Hamming distance; compositions weigh all tied cells equally.
"""

import copy

import numpy as np
import pandas as pd

import schash
from schash import _bridge, _hamming


def _permuted(model, seed=1):
    m = copy.deepcopy(model)
    p = np.random.default_rng(seed).permutation(len(m.ref_labels))
    m.ref_codes, m.ref_labels = m.ref_codes[p], m.ref_labels[p]
    if m.ref_batches is not None:
        m.ref_batches = m.ref_batches[p]
    m.ref_meta = {key: v[p] for key, v in m.ref_meta.items()}
    return m


def test_compositions_and_neighbour_batch_ignore_reference_order(synth_model, synth):
    q = synth[:200].copy()
    # codes collapse: far fewer distinct codes than cells, so ties at the k-th distance are common
    assert len(_hamming.distinct(synth_model.ref_codes)[0]) < len(synth_model.ref_labels) / 5
    perm = _permuted(synth_model)
    for by in ("cell_type", "batch"):
        a = synth_model.composition(q, by=by, k=15)
        b = perm.composition(q, by=by, k=15)
        pd.testing.assert_frame_equal(a, b)
        np.testing.assert_allclose(a.sum(1), 1.0)
    a1, a2 = q.copy(), q.copy()
    schash.annotate(a1, synth_model, neighbors=15)
    schash.annotate(a2, perm, neighbors=15)
    assert list(a1.obs["schash_neighbor_batch"]) == list(a2.obs["schash_neighbor_batch"])
    pd.testing.assert_frame_equal(a1.obsm["schash_batch_composition"], a2.obsm["schash_batch_composition"])
    r1 = _bridge.annotate_matrix(synth_model, q.X, list(q.var_names), list(q.obs_names), saliency=False, neighbors=15)
    r2 = _bridge.annotate_matrix(perm, q.X, list(q.var_names), list(q.obs_names), saliency=False, neighbors=15)
    np.testing.assert_array_equal(r1["composition"]["batch"]["values"], r2["composition"]["batch"]["values"])
    assert list(r1["table"]["neighbor_batch"]) == list(r2["table"]["neighbor_batch"])


def test_tied_cells_share_the_last_places_equally():
    # one query code; 2 reference cells at distance 0 and 4 at distance 1 (labels 0, 0, 1, 1, 1, 0)
    q = np.array([[0b00000000]], dtype=np.uint8)
    ref = np.array([[0], [0], [1], [2], [4], [8]], dtype=np.uint8)
    frac, _ = _hamming.knn_vote(q, ref, np.array([0, 0, 1, 1, 1, 0]), 2, 4, 8)
    # k=4: both distance-0 cells (label 0), then 2 of the 4 tied cells: 3 of label 1, 1 of label 0
    np.testing.assert_allclose(frac, [[(2 + 2 * 1 / 4) / 4, (2 * 3 / 4) / 4]])
