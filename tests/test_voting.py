import numpy as np
import pandas as pd
import pytest

from schash._errors import InputError
from schash._voting import default_resolution, majority_vote, over_cluster


def test_majority_label_and_share_from_a_toy_example():
    labels = ["B", "B", "T", "T", "T", "NK", "B", "Unassigned"]
    clusters = ["a", "a", "a", "b", "b", "b", "c", "c"]
    out = majority_vote(labels, clusters)
    assert list(out.index) == list(range(8))
    assert isinstance(out["majority_label"].dtype, pd.CategoricalDtype)
    assert list(out["majority_label"].astype(str)) == ["B", "B", "B", "T", "T", "T", "B", "B"]
    np.testing.assert_allclose(out["majority_share"], [2 / 3] * 3 + [2 / 3] * 3 + [0.5] * 2)
    assert out["majority_share"].dtype == np.float64


def test_unassigned_majority_stays_unassigned_but_loses_ties():
    labels = ["Unassigned", "Unassigned", "B", "Unassigned", "B"]
    clusters = [1, 1, 1, 2, 2]
    out = majority_vote(labels, clusters)
    assert list(out["majority_label"].astype(str)) == ["Unassigned"] * 3 + ["B"] * 2
    np.testing.assert_allclose(out["majority_share"], [2 / 3] * 3 + [0.5] * 2)
    # a custom name for the untrusted call follows the same rule
    out = majority_vote(["?", "?", "B"], [0, 0, 0], unassigned="?")
    assert list(out["majority_label"].astype(str)) == ["?"] * 3


def test_ties_alphabetical_or_by_category_order_and_independent_of_cell_order():
    labels = ["T", "B", "B", "T"]
    clusters = ["x"] * 4
    assert set(majority_vote(labels, clusters)["majority_label"].astype(str)) == {"B"}
    assert set(majority_vote(labels[::-1], clusters)["majority_label"].astype(str)) == {"B"}
    cat = pd.Categorical(labels, categories=["T", "B"])
    out = majority_vote(cat, clusters)
    assert set(out["majority_label"].astype(str)) == {"T"}
    assert list(out["majority_label"].cat.categories) == ["T", "B", "Unassigned"]


def test_series_index_is_kept_and_clusters_aligned_by_cell_name():
    idx = ["c3", "c1", "c2", "c0"]
    labels = pd.Series(["B", "B", "T", "T"], index=idx)
    clusters = pd.Series(["k", "k", "k", "j"], index=["c0", "c1", "c2", "c3"])  # same cells, other order
    out = majority_vote(labels, clusters)
    assert list(out.index) == idx
    # c3 -> j (alone, B), c1, c2, c0 -> k with votes B, T, T
    assert list(out["majority_label"].astype(str)) == ["B", "T", "T", "T"]
    with pytest.raises(InputError, match="different cells"):
        majority_vote(labels, pd.Series(["k"] * 4, index=["x0", "c1", "c2", "c3"]))
    # arrays are matched by position
    out = majority_vote(labels, clusters.to_numpy())
    assert list(out["majority_label"].astype(str)) == ["B", "B", "B", "T"]


def test_length_mismatch_and_na_are_clear_errors():
    with pytest.raises(InputError, match="3 labels and 2 cluster ids"):
        majority_vote(["a", "b", "c"], [0, 1])
    with pytest.raises(InputError, match="2 of 4 cells have no cluster"):
        majority_vote(list("abcd"), pd.Series(["x", None, np.nan, "y"]))
    with pytest.raises(InputError, match="2 of 4 cells have no cluster"):
        majority_vote(list("abcd"), pd.Categorical(["x", None, None, "y"]))
    with pytest.raises(InputError, match="1 of 2 labels are NA"):
        majority_vote(["a", None], [0, 0])
    with pytest.raises(InputError, match="one value per cell"):
        majority_vote(np.zeros((2, 2)), [0, 0])


def test_empty_input_gives_an_empty_frame():
    out = majority_vote(pd.Series([], dtype=object), pd.Series([], dtype=object))
    assert len(out) == 0 and list(out.columns) == ["majority_label", "majority_share"]


def noisy_codes(rng, anchor, n, flips):
    x = np.tile(anchor, (n, 1))
    for row in x:
        row[rng.choice(len(anchor), flips, replace=False)] *= -1
    return x


def two_groups(seed=0, n=120, k=64, flips=3):
    rng = np.random.default_rng(seed)
    a = np.where(rng.random(k) < 0.5, 1.0, -1.0)
    b = a.copy()
    b[rng.choice(k, k // 2, replace=False)] *= -1  # 32 bits from a
    x = np.vstack([noisy_codes(rng, a, n, flips), noisy_codes(rng, b, n, flips)]).astype(np.float32)
    return x, np.repeat([0, 1], n)


def test_over_cluster_separates_two_groups_and_is_reproducible():
    x, group = two_groups()
    cl = over_cluster(x, resolution=1.0)
    assert cl.shape == (len(x),) and all(isinstance(c, str) for c in cl)
    # no cluster mixes the groups
    assert pd.crosstab(cl, group).gt(0).sum(axis=1).max() == 1
    np.testing.assert_array_equal(cl, over_cluster(x, resolution=1.0))
    over = over_cluster(x)  # default: CellTypist's over-clustering resolution, more clusters
    assert len(set(over)) > len(set(cl))
    assert pd.crosstab(over, group).gt(0).sum(axis=1).max() == 1
    np.testing.assert_array_equal(over, over_cluster(x, seed=0))
    # ids ordered by size
    sizes = pd.Series(over).value_counts()
    assert list(sizes.index[:1]) == ["0"] and sizes.is_monotonic_decreasing


def test_over_cluster_keeps_identical_codes_together():
    x, group = two_groups(n=60, flips=2)
    rng = np.random.default_rng(5)
    # most cells share a handful of codes, as schash's codes do (they collapse onto the anchors)
    many = np.vstack([np.repeat(x[:3], 300, axis=0), np.repeat(x[60:62], 250, axis=0), x]).astype(np.float32)
    perm = rng.permutation(len(many))
    many = many[perm]
    cl = over_cluster(many)
    key = pd.Series([r.tobytes() for r in many])
    assert pd.Series(cl).groupby(key).nunique().max() == 1  # one cluster per code
    # a duplicated group is one cluster, not split into singletons by arbitrary tie-breaks
    assert pd.Series(cl).value_counts().iloc[0] >= 300
    grp = np.concatenate([np.repeat(group[:3], 300), np.repeat(group[60:62], 250), group])[perm]
    assert pd.crosstab(cl, grp).gt(0).sum(axis=1).max() == 1
    np.testing.assert_array_equal(cl, over_cluster(many))
    # all cells identical, or two distinct codes: one cluster per code
    assert set(over_cluster(np.ones((50, 16), np.float32))) == {"0"}
    two = np.vstack([np.ones((5, 16)), -np.ones((3, 16))])
    assert list(over_cluster(two)) == ["0"] * 5 + ["1"] * 3


def test_over_cluster_input_checks_and_resolution_rule():
    with pytest.raises(InputError, match="-1 and \\+1"):
        over_cluster(np.zeros((10, 8), dtype=np.uint8))
    with pytest.raises(InputError, match="cells × bits"):
        over_cluster(np.ones(8))
    with pytest.raises(InputError, match="n_neighbors"):
        over_cluster(np.ones((4, 8)), n_neighbors=1)
    with pytest.raises(InputError, match="resolution"):
        over_cluster(np.ones((4, 8)), resolution=0)
    assert [default_resolution(n) for n in (10, 4_999, 5_000, 19_999, 40_000, 150_000, 200_000)] == \
        [5, 5, 10, 10, 20, 25, 30]
    assert len(over_cluster(np.ones((0, 8)))) == 0
