"""Scaled rows: the sparse linear maps and squared distances equal the dense computation."""

import numpy as np
import pytest
from scipy import sparse

from schash._scaled import Scaled


@pytest.mark.parametrize("n_groups", [1, 3])
@pytest.mark.parametrize("absent", [False, True])
def test_sparse_products_and_distances_equal_the_dense_rows(n_groups, absent):
    rng = np.random.default_rng(n_groups + 10 * absent)
    n, g = 60, 40
    F = sparse.random(n, g, density=0.3, format="csr", dtype=np.float32, random_state=rng) * 6
    groups = rng.integers(0, n_groups, n)
    mean = rng.uniform(0.0, 2.0, (n_groups, g)).astype(np.float32)
    std = rng.uniform(0.2, 1.5, (n_groups, g)).astype(np.float32)
    present = np.ones(g, dtype=bool)
    if absent:
        present[rng.choice(g, 7, replace=False)] = False
    X = Scaled(F, groups, mean, std, present, clip=2.5)  # small clip: stored and zero values get clipped
    Z = X.rows().astype(np.float64)
    assert (np.abs(Z) == 2.5).any()  # the clipping is exercised
    W = rng.normal(size=(5, g)).astype(np.float32)
    bias = rng.normal(size=5).astype(np.float32)
    np.testing.assert_allclose(X.linear(W, bias), Z @ W.T + bias, rtol=1e-4, atol=1e-4)
    center = rng.normal(size=g).astype(np.float32)
    np.testing.assert_allclose(X.sq_dist(center), ((Z - center) ** 2).sum(1), rtol=1e-5, atol=1e-4)
    # a block of rows, with the statistics of a single group, gives the same as the dense rows too
    Y = X.slice(10, 30).restat(np.zeros(20, dtype=np.int64), mean[:1], std[:1])
    Zy = Y.rows().astype(np.float64)
    np.testing.assert_allclose(Y.sq_dist(center), ((Zy - center) ** 2).sum(1), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(Y.linear(W), Zy @ W.T, rtol=1e-4, atol=1e-4)
