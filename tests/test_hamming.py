import numpy as np
import pytest

from schash import _hamming


def brute(a, b):
    ua, ub = np.unpackbits(a, axis=1), np.unpackbits(b, axis=1)
    return (ua[:, None, :] != ub[None, :, :]).sum(-1)


def test_distances_equal_brute_force():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (50, 8), dtype=np.uint8)
    b = rng.integers(0, 256, (30, 8), dtype=np.uint8)
    np.testing.assert_array_equal(_hamming.distances(a, b, block=7), brute(a, b))


def test_pack_unpack_round_trip():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(10, 64))
    np.testing.assert_array_equal(_hamming.unpack(_hamming.pack(x), 64), np.where(x > 0, 1.0, -1.0))


def test_nearest_anchor_distance_and_gap():
    rng = np.random.default_rng(2)
    anchors = rng.integers(0, 256, (5, 8), dtype=np.uint8)
    codes = rng.integers(0, 256, (200, 8), dtype=np.uint8)
    codes[:50] = codes[:1]  # many duplicates exercise the distinct-code path
    best, dist, gap = _hamming.nearest_anchor(codes, anchors)
    d = brute(codes, anchors)
    np.testing.assert_array_equal(best, d.argmin(1))
    np.testing.assert_array_equal(dist, d.min(1))
    np.testing.assert_array_equal(gap, np.sort(d, 1)[:, 1] - d.min(1))


@pytest.mark.parametrize(("width", "k"), [(1, 25), (1, 1), (1, 300), (2, 7), (8, 40)])
def test_knn_vote_equals_brute_force_with_fractional_ties(width, k):
    rng = np.random.default_rng(3 + k)
    ref = rng.integers(0, 4, (300, width), dtype=np.uint8)  # few distinct codes: many ties
    labels = rng.integers(0, 3, 300)
    q = rng.integers(0, 8, (40, width), dtype=np.uint8)
    frac, mean_d = _hamming.knn_vote(q, ref, labels, 3, k, n_bits=8 * width)
    d = brute(q, ref)
    for i in range(len(q)):
        kth = np.sort(d[i])[k - 1]
        closer = d[i] < kth
        tied = d[i] == kth
        w = closer.astype(float) + tied * (k - closer.sum()) / tied.sum()
        expect = np.bincount(labels, weights=w, minlength=3) / k
        np.testing.assert_allclose(frac[i], expect)
        np.testing.assert_allclose(mean_d[i], (w * d[i]).sum() / k)
    np.testing.assert_allclose(frac.sum(1), 1.0)


SEARCHES = {  # settings that force each of knn_indices' searches
    "walk": {"LOOP_COST_PAIRS": -10**6},
    "direct": {"LOOP_COST_PAIRS": 10**9, "PATTERN_KEY_LIMIT": 0},
    "pattern": {"LOOP_COST_PAIRS": 10**9, "PATTERN_KEY_LIMIT": 2**24, "PATTERN_SHARE_MIN": 0, "PATTERN_MAX_K": 10**9},
    "pattern, unshared": {"LOOP_COST_PAIRS": 10**9, "PATTERN_KEY_LIMIT": 2**24, "PATTERN_SHARE_MIN": 10**9,
                          "PATTERN_MAX_K": 10**9},
    "faiss": {"LOOP_NS_PER_CODE": 10**12}}  # FAISS's scan (the faiss extra), never the walk


def force(search, monkeypatch):
    from schash import _hamming as h

    if search == "faiss":
        pytest.importorskip("faiss")
    monkeypatch.setenv("SCHASH_FAISS", "1" if search == "faiss" else "0")
    for name, value in SEARCHES[search].items():
        monkeypatch.setattr(h, name, value)


@pytest.mark.parametrize("search", sorted(SEARCHES))
@pytest.mark.parametrize("n_distinct", [5, 400, 3000])
def test_every_neighbour_search_equals_a_stable_argsort(n_distinct, search, monkeypatch):
    """The walk over distinct codes, the direct search, the search through code order and FAISS's scan
    give one answer: a stable argsort of the full distance row, ties by reference index."""
    from schash import _hamming as h

    rng = np.random.default_rng(n_distinct)
    base = rng.integers(0, 256, (n_distinct, 8), dtype=np.uint8)
    ref = base[rng.integers(0, n_distinct, 2500)]
    q = base[rng.integers(0, n_distinct, 700)] ^ (rng.random((700, 8)) < 0.03).astype(np.uint8)
    d = h.distances(q, ref)
    order = np.argsort(d, axis=1, kind="stable")[:, :15]
    force(search, monkeypatch)
    idx, dist = h.knn_indices(q, ref, 15)
    np.testing.assert_array_equal(idx, order)
    np.testing.assert_array_equal(dist, np.take_along_axis(d, order, axis=1))


@pytest.mark.parametrize("search", ["direct", "pattern", "pattern, unshared", "faiss"])
@pytest.mark.parametrize("k", [1, 7, 40])
def test_direct_searches_at_the_edges_of_k(k, search, monkeypatch):
    """k of one, a k that falls inside a run of ties (FAISS must keep the lowest reference indices of
    the tied cells), and k equal to the whole reference; with many codes tied at the k-th distance
    the search through code order hands those rows on."""
    from schash import _hamming as h

    force(search, monkeypatch)
    handed_on = []
    direct = h._knn_direct
    monkeypatch.setattr(h, "_knn_direct", lambda q, *a: handed_on.append(len(q)) or direct(q, *a))
    rng = np.random.default_rng(k)
    ref = rng.integers(0, 4, (40, 8), dtype=np.uint8)  # 2 varying bits per byte: many ties
    q = rng.integers(0, 4, (90, 8), dtype=np.uint8)
    d = h.distances(q, ref)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    idx, dist = h.knn_indices(q, ref, k)
    np.testing.assert_array_equal(idx, order)
    np.testing.assert_array_equal(dist, np.take_along_axis(d, order, axis=1))
    if search.startswith("pattern") and k == 7:
        assert 0 < handed_on[0] < 90  # some rows, not all, had more tied codes than fit


@pytest.mark.parametrize("block_entries", [50, 8_000_000])
def test_pattern_search_with_a_large_k_and_in_small_blocks(block_entries):
    """k of 120 over 30 codes (w × k cells per pattern), and blocks small enough that queries and
    patterns are both taken a few at a time: the same answer as the stable argsort."""
    from schash import _hamming as h

    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (30, 8), dtype=np.uint8)
    ref = base[rng.integers(0, 30, 3000)]
    q = base[rng.integers(0, 30, 2000)] ^ (rng.random((2000, 8)) < 0.05).astype(np.uint8)
    k = 120
    q_uniq, q_inv, _ = h.distinct(q)
    r_uniq, r_inv, r_counts = h.distinct(ref)
    by_code = np.argsort(r_inv, kind="stable")
    rank = np.arange(len(ref)) - np.concatenate([[0], np.cumsum(r_counts)])[r_inv[by_code]]
    cand = np.sort(by_code[rank < k])
    pos, dist = h._knn_by_pattern(q_uniq, r_uniq, r_inv[cand], k, block_entries=block_entries)
    d = h.distances(q, ref)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(cand[pos][q_inv], order)
    np.testing.assert_array_equal(dist[q_inv], np.take_along_axis(d, order, axis=1))


@pytest.mark.parametrize("n_ref", [250_000, 270_000])
def test_direct_search_keys_stay_exact_past_float32(n_ref, monkeypatch):
    """Sort keys of distance × candidates + position: float32 up to 2**24, float64 beyond (64 bits:
    258,111 candidates).  Every reference code distinct, so every cell is a candidate."""
    from schash import _hamming as h

    monkeypatch.setattr(h, "LOOP_COST_PAIRS", 10**9)
    monkeypatch.setenv("SCHASH_FAISS", "0")
    rng = np.random.default_rng(n_ref)
    ref = rng.integers(0, 256, (n_ref, 8), dtype=np.uint8)
    ref[-5:] = ref[-6]  # ties at the far end of the key range
    q = np.concatenate([ref[-6:-5] ^ 1, rng.integers(0, 256, (20, 8), dtype=np.uint8)])
    d = h.distances(q, ref)
    order = np.argsort(d, axis=1, kind="stable")[:, :10]
    idx, dist = h.knn_indices(q, ref, 10)
    np.testing.assert_array_equal(idx, order)
    np.testing.assert_array_equal(dist, np.take_along_axis(d, order, axis=1))


@pytest.mark.parametrize(("k", "by_pattern"), [(15, True), (21, False)])
def test_the_pattern_search_serves_up_to_twenty_neighbours(k, by_pattern, monkeypatch):
    """Each pattern orders w × k cells: above 20 neighbours the direct search runs instead."""
    from schash import _hamming as h

    monkeypatch.setenv("SCHASH_FAISS", "0")
    used = []
    for name in ("_knn_by_pattern", "_knn_direct"):
        search = getattr(h, name)
        monkeypatch.setattr(h, name, lambda *a, _s=search, _n=name: used.append(_n) or _s(*a))
    rng = np.random.default_rng(k)
    base = rng.integers(0, 256, (20, 8), dtype=np.uint8)
    ref = base[rng.integers(0, 20, 400)]
    q = base[rng.integers(0, 20, 300)] ^ (rng.random((300, 8)) < 0.05).astype(np.uint8)
    d = h.distances(q, ref)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    idx, _ = h.knn_indices(q, ref, k)
    np.testing.assert_array_equal(idx, order)
    assert used[0] == ("_knn_by_pattern" if by_pattern else "_knn_direct")


def test_faiss_is_chosen_where_it_is_cheaper_and_installed(monkeypatch):
    """FAISS scans the candidates unless the walk through few distinct codes is cheaper (many cells
    per code, a large k); SCHASH_FAISS=0 or no faiss module leaves the searches here, and so does
    macOS or Windows unless SCHASH_FAISS=1 (FAISS's and torch's OpenMP runtimes can clash there)."""
    import sys

    from schash import _hamming as h

    faiss = pytest.importorskip("faiss")
    monkeypatch.delenv("SCHASH_FAISS", raising=False)
    for platform in ("darwin", "win32"):
        monkeypatch.setattr(h.sys, "platform", platform)
        assert h._faiss_for(340, 74, 15) is None
        monkeypatch.setenv("SCHASH_FAISS", "1")
        assert h._faiss_for(340, 74, 15) is faiss
        monkeypatch.delenv("SCHASH_FAISS")
    monkeypatch.setattr(h.sys, "platform", "linux")
    assert h._faiss_for(340, 74, 15) is faiss  # the speed benchmark's 1,000-cell database
    assert h._faiss_for(11_087, 9_471, 15) is faiss  # its 1,000,000-cell one
    assert h._faiss_for(40_000, 200, 200) is None  # 200 codes of 400 cells, k = 200: the walk
    monkeypatch.setenv("SCHASH_FAISS", "0")
    assert h._faiss_for(340, 74, 15) is None
    monkeypatch.delenv("SCHASH_FAISS")
    monkeypatch.setitem(sys.modules, "faiss", None)  # not installed
    assert h._faiss_for(340, 74, 15) is None


def test_faiss_runs_on_torch_s_thread_count_and_restores_its_own(monkeypatch):
    faiss = pytest.importorskip("faiss")
    import torch

    from schash import _hamming as h

    seen = []
    search = faiss.IndexBinaryFlat.search
    monkeypatch.setattr(faiss.IndexBinaryFlat, "search",
                        lambda self, *a, **kw: seen.append(faiss.omp_get_max_threads()) or search(self, *a, **kw))
    before_faiss, before_torch = faiss.omp_get_max_threads(), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rng = np.random.default_rng(0)
        h._knn_faiss(faiss, rng.integers(0, 256, (5, 8), dtype=np.uint8),
                     rng.integers(0, 256, (50, 8), dtype=np.uint8), 3)
    finally:
        torch.set_num_threads(before_torch)
    assert seen == [1]
    assert faiss.omp_get_max_threads() == before_faiss


def test_distances_are_exact_popcounts():
    from schash import _hamming as h

    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (300, 16), dtype=np.uint8)
    b = rng.integers(0, 256, (200, 16), dtype=np.uint8)
    bits = np.unpackbits(a[:, None, :] ^ b[None], axis=2).sum(-1)
    np.testing.assert_array_equal(h.distances(a, b), bits)


@pytest.mark.parametrize("width", [1, 3, 8, 16])
def test_distinct_rows_inverse_and_counts(width):
    """Codes of any byte width (padded to 64-bit words; several words combined): the distinct rows are
    numpy's, in order of first appearance, and the inverse and counts rebuild the input."""
    from schash import _hamming as h

    rng = np.random.default_rng(width)
    base = rng.integers(0, 256, (40, width), dtype=np.uint8)
    base[1] = base[0]
    base[2, : width // 2] = base[0, : width // 2]  # shares a first word (or half) with another row
    codes = base[rng.integers(0, 40, 1000)]
    uniq, inv, counts = h.distinct(codes)
    np.testing.assert_array_equal(uniq[inv], codes)
    np.testing.assert_array_equal(np.sort(uniq.view(np.dtype((np.void, width))).ravel()),
                                  np.unique(codes.view(np.dtype((np.void, width))).ravel()))
    np.testing.assert_array_equal(counts, np.bincount(inv))
    firsts = [int(np.flatnonzero(inv == j)[0]) for j in range(len(uniq))]
    assert firsts == sorted(firsts)
    assert h.distinct(codes[:0])[0].shape == (0, width)
