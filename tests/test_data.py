import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import schash
from schash._data import extract
from schash._preprocess import align_genes
from schash._values import detect_kind, log_normalise


def test_counts_and_log_are_detected(synth):
    assert detect_kind(synth.X) == "counts"
    logged = log_normalise(synth.X, "counts")
    assert detect_kind(logged) == "log"
    expressed = np.asarray(synth.X.sum(1)).ravel() > 0
    np.testing.assert_allclose(np.expm1(logged.toarray()).sum(1)[expressed], 1e4, rtol=1e-3)


def test_layer_is_honoured_and_unknown_layer_named(synth):
    a = synth.copy()
    a.layers["counts"] = a.X.copy()
    a.X = sparse.csr_matrix(a.X.shape, dtype=np.float32)
    assert extract(a, layer="counts").X.nnz == synth.X.nnz
    with pytest.raises(schash.InputError, match="layer 'raw' is not in this AnnData.*counts"):
        extract(a, layer="raw")


def test_genes_by_cells_orientation_is_refused(synth):
    X = synth.X.T.tocsr()  # genes × cells
    with pytest.raises(schash.InputError, match="genes × cells.*transpose"):
        extract(X, genes=list(synth.var_names))


def test_labels_matching_genes_point_to_orientation():
    X = np.ones((5, 3), dtype=np.float32)
    with pytest.raises(schash.InputError, match="genes × cells"):
        schash.train(X.T, labels=["a"] * 5, genes=["g1", "g2", "g3", "g4", "g5"])


def test_duplicate_genes_nan_and_negative_values_are_refused():
    X = np.abs(np.random.default_rng(0).normal(size=(4, 3))).astype(np.float32)
    with pytest.raises(schash.InputError, match="more than once.*var_names_make_unique"):
        extract(X, genes=["a", "a", "b"])
    Y = X.copy()
    Y[1, 1] = np.nan
    with pytest.raises(schash.InputError, match="1 NaN or infinite"):
        extract(Y, genes=["a", "b", "c"])
    Y = X.copy()
    Y[0, 0] = -1
    with pytest.raises(schash.InputError, match="negative values.*raw counts or log-normalised"):
        extract(sparse.csr_matrix(Y), genes=["a", "b", "c"])


def test_plain_matrix_needs_gene_names():
    with pytest.raises(schash.InputError, match="genes="):
        extract(np.ones((2, 2)))


def test_alignment_reorders_zero_fills_and_reports():
    X = sparse.csr_matrix(np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32))
    with pytest.warns(UserWarning, match="2 of 3 model genes found.*'z'"):
        out, n = align_genes(X, pd.Index(["a", "b", "c"]), pd.Index(["c", "a", "z"]))
    assert n == 2
    np.testing.assert_array_equal(out.toarray(), [[3, 1, 0], [6, 4, 0]])
    with pytest.raises(schash.GeneOverlapError, match="only 1 of the model's 3 genes"):
        align_genes(X, pd.Index(["a", "b", "c"]), pd.Index(["a", "y", "z"]), min_overlap=0.5)


def test_dataframe_input_keeps_names():
    df = pd.DataFrame([[1.0, 0.0], [0.0, 2.0]], index=["x", "y"], columns=["g1", "g2"])
    e = extract(df)
    assert list(e.cells) == ["x", "y"] and list(e.genes) == ["g1", "g2"]


def test_duplicate_entries_of_a_sparse_query_count_as_their_sum(synth_model, synth):
    """A CSR matrix may store one value in two entries; scaling must see their sum (as toarray() does)."""
    from scipy import sparse

    q = synth[:60].copy()
    X = sparse.csr_matrix(q.X, dtype=np.float32)
    X.data = np.log1p(X.data)
    X.data[::5] = 15.0  # log values, some far beyond the reference's: their z is clipped
    rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
    order = np.argsort(np.concatenate([rows, rows]), kind="stable")  # each row: its entries, then again
    data = np.concatenate([X.data, X.data])[order] / 2  # every value split into two stored halves
    indices = np.concatenate([X.indices, X.indices])[order]
    dup = sparse.csr_matrix((data, indices, 2 * X.indptr), shape=X.shape)
    assert dup.nnz == 2 * X.nnz
    genes = list(q.var_names)
    before = dup.data.copy()
    np.testing.assert_array_equal(synth_model.encode(dup, genes=genes), synth_model.encode(X, genes=genes))
    np.testing.assert_array_equal(dup.data, before)  # the caller's matrix is left as it was


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_sparse_log_normalise_equals_the_dense_computation(dtype):
    """Each stored value is scaled by its row's factor and log1p-transformed; explicit zeros and
    empty rows store nothing, duplicates are summed, the input is untouched."""
    rng = np.random.default_rng(0)
    dense = np.floor(rng.random((40, 30)) * 8) * (rng.random((40, 30)) < 0.3)
    dense[3] = 0.0  # an empty cell
    X = sparse.csr_matrix(dense.astype(dtype))
    X.data[::7] = 0  # explicit zeros
    # row 0 replaced by two entries of one gene (a non-canonical CSR matrix)
    start = X.indptr[1]
    dup = sparse.csr_matrix((np.r_[np.array([2, 3], dtype), X.data[start:]], np.r_[[1, 1], X.indices[start:]],
                             np.r_[0, X.indptr[1:] - start + 2]), shape=X.shape)
    assert not dup.has_canonical_format
    before = dup.copy()
    for M in (X, dup, dup.tocsc()):
        Y = log_normalise(M, "counts")
        D = M.toarray().astype(np.float64)
        totals = D.sum(1, keepdims=True)
        expected = np.log1p(np.divide(1e4, totals, out=np.zeros_like(totals), where=totals > 0) * D)
        assert Y.dtype == np.float32 and (Y.data != 0).all()
        np.testing.assert_allclose(Y.toarray(), expected, rtol=1e-5)
    assert (dup != before).nnz == 0 and np.array_equal(dup.data, before.data)


def test_rows_of_a_backed_csr_file_equal_those_in_memory(tmp_path):
    """Blocks of rows read from an .h5ad's CSR arrays directly (anndata's row slice is slow with
    SciPy >= 1.17) are the rows anndata reads, including empty rows and blocks at the ends."""
    import anndata as ad

    from schash._data import _rows

    X = sparse.random(57, 23, density=0.2, format="csr", random_state=1, dtype=np.float32)
    X = sparse.csr_matrix(X.multiply(20).floor())
    X[[0, 30, 56]] = 0
    X.eliminate_zeros()
    path = tmp_path / "x.h5ad"
    ad.AnnData(X).write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    blocks = [(0, 57), (0, 1), (29, 31), (50, 57), (56, 57), (10, 10)] + [(s, min(s + 8, 57)) for s in range(0, 57, 8)]
    for start, stop in blocks:
        got = _rows(backed.X, start, stop)
        want = X[start:stop]
        assert got.shape == want.shape and got.dtype == want.dtype
        assert np.array_equal(got.indptr, want.indptr) and np.array_equal(got.indices, want.indices)
        assert np.array_equal(got.data, want.data)
    backed.file.close()
