"""The reference map: query cells placed on the reference's 2-D embedding, like scanpy's ingest."""

import numpy as np
import pytest

import schash
from schash import _bridge


@pytest.fixture(scope="module")
def mapped(synth_model, synth):
    import copy

    m = copy.deepcopy(synth_model)
    ref = synth.copy()
    # a 2-D embedding that separates the types, with spread inside each type
    rng = np.random.default_rng(0)
    t = ref.obs["cell_type"].cat.codes.to_numpy()
    ref.obsm["X_umap"] = np.c_[np.cos(t * 1.5) * 10, np.sin(t * 1.5) * 10] + rng.normal(0, 1, (ref.n_obs, 2))
    m.set_reference_map(ref, basis="X_umap")
    return m, ref


def test_query_cells_land_near_their_own_type(mapped, synth):
    m, ref = mapped
    q = synth[:200].copy()
    schash.annotate(q, m)
    pos = q.obsm["X_schash_umap"]
    assert pos.shape == (200, 2)
    own = ref.obsm["X_umap"][:200]
    # each cell lands much nearer its own position than a random reference cell does
    assert np.median(np.linalg.norm(pos - own, axis=1)) < 3
    # and the positions are not stacked per code (ingest-like, continuous)
    assert len(np.unique(pos.round(3), axis=0)) > 100


def test_reference_map_is_saved_and_reaches_r(mapped, synth, tmp_path):
    m, ref = mapped
    m.save(tmp_path / "m.schash")
    back = schash.load(tmp_path / "m.schash")
    assert back.map_name() == "umap"
    q = synth[:50].copy()
    np.testing.assert_allclose(back.place_on_reference_map(q), m.place_on_reference_map(q), rtol=1e-5)
    res = _bridge.annotate_matrix(back, q.X, list(q.var_names), list(q.obs_names), saliency=False)
    assert res["ref_map"]["name"] == "umap"
    np.testing.assert_allclose(res["ref_map"]["values"], m.place_on_reference_map(q), rtol=1e-5)
    assert _bridge.model_info(back)["ref_map"] == "umap"
    with pytest.raises(schash.InputError, match="no obsm\\['X_tsne'\\]"):
        m.set_reference_map(ref, basis="X_tsne")
    with pytest.raises(schash.InputError, match="3 map positions"):
        m.set_reference_map(ref, coords=np.zeros((3, 2)))


def test_train_basis_keeps_the_reference_map(synth):
    ref = synth.copy()
    t = ref.obs["cell_type"].cat.codes.to_numpy()
    ref.obsm["X_umap"] = np.c_[t * 10.0, -t * 5.0] + np.random.default_rng(1).normal(0, 0.5, (ref.n_obs, 2))
    m = schash.train(ref, cell_type_key="cell_type", basis="X_umap", max_epochs=3, progress=False)
    assert m.map_name() == "umap"
    q = ref[:100].copy()
    schash.annotate(q, m)
    # reference cells annotated as a query land near their own coordinates
    d_own = np.linalg.norm(q.obsm["X_schash_umap"] - ref.obsm["X_umap"][:100], axis=1)
    assert np.median(d_own) < 3.0
    with pytest.raises(schash.InputError, match="names no obsm entry"):
        schash.train(ref, cell_type_key="cell_type", basis="X_tsne", max_epochs=1, progress=False)
