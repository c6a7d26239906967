import numpy as np
import pytest

import schash
from schash._anchors import make_anchors, min_pairwise_distance


def test_hadamard_anchors_are_half_the_bits_apart():
    a = make_anchors(10, 64, seed=1)
    assert a.shape == (10, 64) and set(np.unique(a)) == {-1.0, 1.0}
    assert min_pairwise_distance(a) == 32


def test_more_types_than_rows_use_negated_rows():
    a = make_anchors(20, 16, seed=0)  # 16 rows + 4 negations
    assert len({tuple(r) for r in a}) == 20
    assert min_pairwise_distance(a) == 8


def test_random_balanced_codes_beyond_2k():
    a = make_anchors(40, 16, seed=3)
    assert a.shape == (40, 16)
    assert np.all((a > 0).sum(1) == 8)  # balanced
    assert min_pairwise_distance(a) >= 4


def test_anchors_are_deterministic_from_seed():
    np.testing.assert_array_equal(make_anchors(5, 64, seed=7), make_anchors(5, 64, seed=7))
    assert not np.array_equal(make_anchors(5, 64, seed=7), make_anchors(5, 64, seed=8))


def test_bad_anchor_requests():
    with pytest.raises(schash.InputError, match="at least 2"):
        make_anchors(1, 64)
    with pytest.raises(schash.InputError, match="multiple of 8"):
        make_anchors(3, 12)
