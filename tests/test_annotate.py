import numpy as np
import pandas as pd
import pytest
from conftest import make_counts
from scipy import sparse
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

import schash


def test_predict_has_no_side_effects_and_is_indexed_by_cell(synth_model, synth):
    before = synth.copy()
    df = synth_model.predict(synth)
    assert list(df.index) == list(synth.obs_names)
    assert list(df.columns) == ["label", "pruned_label", "distance", "delta_next", "typicality", "confidence"]
    assert df["confidence"].between(0, 1).all() and df["typicality"].between(0, 1).all()
    assert set(synth.obs.columns) == set(before.obs.columns) and not synth.obsm
    assert (synth.X != before.X).nnz == 0


def test_annotate_writes_scanpy_style_fields(synth_model, synth):
    out = schash.annotate(synth, synth_model, copy=True)
    assert "schash_label" not in synth.obs  # copy=True leaves the input alone
    for col in ["schash_label", "schash_pruned_label", "schash_distance", "schash_confidence"]:
        assert col in out.obs
    assert out.obs["schash_label"].dtype == "category"
    assert out.obsm["schash_codes"].shape == (synth.n_obs, 8) and out.obsm["schash_codes"].dtype == np.uint8
    signs = out.obsm["X_schash"]  # the same codes as an embedding: ±1 float32, one column per bit
    assert signs.shape == (synth.n_obs, 64) and signs.dtype == np.float32 and set(np.unique(signs)) == {-1.0, 1.0}
    assert np.array_equal(np.packbits(signs > 0, axis=1), out.obsm["schash_codes"])
    assert out.uns["schash"]["n_genes_matched"] == len(synth_model.genes)
    acc = (out.obs["schash_label"].astype(str) == synth.obs["cell_type"].astype(str)).mean()
    assert acc > 0.95
    a = synth.copy()
    assert schash.annotate(a, synth_model, key_added="sh") is None and "sh_label" in a.obs


def test_knn_vote_agrees_with_anchors_on_clean_data(synth_model, synth):
    a = synth_model.predict(synth, method="anchor")["label"].astype(str)
    b = synth_model.predict(synth, method="knn", k=10)["label"].astype(str)
    assert (a == b).mean() > 0.95


def test_empty_cells_are_unassigned_not_a_crash(synth_model, synth):
    q = synth[:20].copy()
    X = q.X.toarray()
    X[:5] = 0
    q.X = sparse.csr_matrix(X)
    df = synth_model.predict(q)
    assert (df["pruned_label"].iloc[:5] == schash.UNASSIGNED).all()
    assert (df["confidence"].iloc[:5] == 0).all()
    assert (df["pruned_label"].iloc[5:] != schash.UNASSIGNED).mean() > 0.8


def test_query_with_missing_genes_and_other_gene_order(synth_model, synth):
    genes = list(synth_model.genes)
    q = synth[:, synth.var_names[::-1]].copy()  # reversed order
    keep = [g for g in q.var_names if g != genes[0]]
    with pytest.warns(UserWarning, match="model genes found"):
        df = synth_model.predict(q[:, keep].copy())
    assert (df["label"].astype(str).to_numpy() == synth.obs["cell_type"].astype(str).to_numpy()).mean() > 0.9
    other = synth.copy()
    other.var_names = [f"x{i}" for i in range(other.n_vars)]
    with pytest.raises(schash.GeneOverlapError, match="after mapping gene symbols, Ensembl IDs"):
        synth_model.predict(other)


def test_unknown_type_gets_lower_confidence():
    data = make_counts(n_cells=900, n_types=5, seed=4)
    ref = data[data.obs["batch"] == "b0"]
    ref = ref[ref.obs["cell_type"] != "type_4"].copy()
    query = data[data.obs["batch"] == "b1"].copy()
    m = schash.train(ref, cell_type_key="cell_type", max_epochs=15, progress=False)
    df = m.predict(query)
    novel = (query.obs["cell_type"] == "type_4").to_numpy()
    assert roc_auc_score(novel, -df["confidence"]) > 0.85
    unassigned = (df["pruned_label"] == schash.UNASSIGNED).to_numpy()
    assert unassigned[novel].mean() > 3 * unassigned[~novel].mean()
    assert unassigned[~novel].mean() < 0.1


def test_real_pbmc_end_to_end_accuracy(pbmc68k):
    """Train on half of scanpy's real pbmc68k_reduced, annotate the other half (CellTypist: 0.84)."""
    y = pbmc68k.obs["bulk_labels"].astype(str).to_numpy()
    tr, te = train_test_split(np.arange(pbmc68k.n_obs), test_size=0.5, stratify=y, random_state=0)
    m = schash.train(pbmc68k[tr].copy(), cell_type_key="bulk_labels", min_cells_per_type=5, progress=False)
    df = m.predict(pbmc68k[te].copy())
    assert (df["label"].astype(str).to_numpy() == y[te]).mean() >= 0.78


def test_chunked_file_encoding_equals_in_memory(synth_model, synth, tmp_path):
    """Encoding straight from an .h5ad (backed, in chunks) gives the same bits as in memory."""
    path = tmp_path / "q.h5ad"
    synth.write_h5ad(path)
    in_memory = synth_model.encode(synth, chunk_size=128)
    np.testing.assert_array_equal(synth_model.encode(str(path), chunk_size=128), in_memory)
    np.testing.assert_array_equal(synth_model.encode(str(path), chunk_size=97), in_memory)
    a = synth_model.predict(str(path), chunk_size=50)
    b = synth_model.predict(synth, chunk_size=50)
    assert a.equals(b)


def test_codes_embedding_works_with_scanpy_neighbors(synth_model, synth):
    import scanpy as sc

    out = schash.annotate(synth, synth_model, copy=True)
    sc.pp.neighbors(out, use_rep="X_schash", n_neighbors=10)
    # Euclidean distance on ±1 codes is 2 * sqrt(Hamming distance): neighbours by code
    d = out.obsp["distances"].tocoo()
    codes = out.obsm["schash_codes"]
    from schash._hamming import distances

    ham = np.array([distances(codes[[i]], codes[[j]])[0, 0] for i, j in zip(d.row[:200], d.col[:200], strict=True)])
    np.testing.assert_allclose(d.data[:200], 2 * np.sqrt(ham), rtol=1e-5)


def test_majority_voting_over_a_column_and_over_computed_clusters(synth_model, synth):
    out = schash.annotate(synth, synth_model, over_clustering="batch", copy=True)
    obs = out.obs
    for _, grp in obs.groupby("batch", observed=True):
        assert grp["schash_majority_label"].nunique() == 1  # one call per cluster
        share = (grp["schash_pruned_label"] == grp["schash_majority_label"].iloc[0]).mean()
        assert grp["schash_majority_share"].iloc[0] == pytest.approx(share)
    assert "schash_over_clustering" not in obs
    schash.annotate(out, synth_model, over_clustering="no_such_column")  # computed from the codes
    assert "schash_over_clustering" in out.obs and out.obs["schash_over_clustering"].nunique() > 1
    for _, grp in out.obs.groupby("schash_over_clustering", observed=True):
        assert grp["schash_majority_label"].nunique() == 1
    agree = (out.obs["schash_majority_label"] == out.obs["cell_type"].astype(str)).mean()
    assert agree > 0.8
    schash.annotate(out, synth_model)  # the next run removes the voting columns
    assert not {"schash_over_clustering", "schash_majority_label"} & set(out.obs.columns)


def test_novelty_alpha_at_annotation_moves_only_the_pruned_calls(synth_model, synth):
    from schash._errors import InputError

    model_alpha = synth_model.novelty_alpha
    default = synth_model.predict(synth)
    pd.testing.assert_frame_equal(default, synth_model.predict(synth, novelty_alpha=model_alpha))
    empty = default["label"].astype(str) == "Unassigned"  # no expression: Unassigned whatever alpha
    typical = default["typicality"] >= model_alpha
    other = (default["pruned_label"].astype(str) == "Unassigned") & typical  # the distance threshold
    for alpha in (0.0, 0.3, 0.6):
        got = synth_model.predict(synth, novelty_alpha=alpha)
        for col in ("label", "distance", "delta_next", "typicality", "confidence"):
            assert got[col].equals(default[col]), col
        expected = empty | other | (default["typicality"] < alpha)
        assert ((got["pruned_label"].astype(str) == "Unassigned") == expected).all()
        kept = ~expected
        assert (got["pruned_label"].astype(str)[kept] == got["label"].astype(str)[kept]).all()
    low, high = (int((synth_model.predict(synth, novelty_alpha=a)["pruned_label"] == "Unassigned").sum())
                 for a in (0.0, 0.6))
    assert low <= int((default["pruned_label"] == "Unassigned").sum()) < high
    assert synth_model.novelty_alpha == model_alpha  # the model is not changed
    a = synth.copy()
    schash.annotate(a, synth_model, novelty_alpha=0.3)
    assert a.uns["schash"]["params"]["novelty_alpha"] == 0.3
    assert (a.obs["schash_pruned_label"].astype(str).to_numpy()
            == synth_model.predict(synth, novelty_alpha=0.3)["pruned_label"].astype(str).to_numpy()).all()
    for bad in (1.5, -0.1, "0.1", float("nan")):
        with pytest.raises(InputError, match="novelty_alpha must be a number in"):
            synth_model.predict(synth, novelty_alpha=bad)
