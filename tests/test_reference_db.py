import matplotlib

matplotlib.use("Agg")
import numpy as np
import pytest

import schash
from schash import _hamming


def brute_knn(codes, ref, k):
    d = _hamming.distances(codes, ref).astype(np.int64)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(d, order, 1)


def test_knn_indices_equal_brute_force():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 16, (500, 2), dtype=np.uint8)  # few distinct codes: many ties
    q = rng.integers(0, 16, (60, 2), dtype=np.uint8)
    idx, dist = _hamming.knn_indices(q, ref, 20)
    bi, bd = brute_knn(q, ref, 20)
    np.testing.assert_array_equal(idx, bi)
    np.testing.assert_array_equal(dist, bd)


def test_neighbors_and_composition(synth_model, synth):
    idx, dist = synth_model.neighbors(synth[:40].copy(), k=10)
    codes = synth_model.encode(synth[:40].copy())
    bi, bd = brute_knn(codes, synth_model.ref_codes, 10)
    np.testing.assert_array_equal(idx, bi)
    comp = synth_model.composition(synth[:40].copy(), by="cell_type", k=10)
    np.testing.assert_allclose(comp.sum(1), 1.0)
    assert list(comp.columns) == synth_model.cell_types
    truth = synth.obs["cell_type"].astype(str)[:40].to_numpy()
    assert (comp.idxmax(axis=1).to_numpy() == truth).mean() > 0.9
    batch = synth_model.composition(synth[:40].copy(), by="batch", k=10)
    assert list(batch.columns) == ["b0", "b1"]
    with pytest.raises(schash.LabelKeyError, match="no 'donor' column"):
        synth_model.composition(synth[:5].copy(), by="donor")


def test_add_reference_grows_database_and_is_found(synth_model, synth, tmp_path):
    import copy

    m = copy.deepcopy(synth_model)
    n0 = len(m.ref_labels)
    new = synth[:30].copy()
    new.obs["batch"] = "new_batch"
    m.add_reference(new, cell_type_key="cell_type", batch_key="batch")
    assert len(m.ref_labels) == n0 + 30 and m.ref_codes.shape[0] == n0 + 30
    codes = m.encode(new)
    same_code = (_hamming.distances(codes, m.ref_codes) == 0).sum(1)
    k = int(same_code.max())  # enough neighbours to reach every cell sharing a code
    idx, dist = m.neighbors(new, k=k)
    assert all(n0 + i in idx[i] for i in range(30))  # each added cell is found as a neighbour
    comp = m.composition(new, by="batch", k=k)
    assert "new_batch" in comp.columns and (comp["new_batch"] > 0).all()
    m.save(tmp_path / "grown.schash")
    back = schash.load(tmp_path / "grown.schash")
    np.testing.assert_array_equal(back.ref_codes, m.ref_codes)
    assert back.reference_obs().equals(m.reference_obs())
    bad = synth[:5].copy()
    bad.obs["cell_type"] = "martian"
    with pytest.raises(schash.InputError, match="unknown to this model"):
        m.add_reference(bad, cell_type_key="cell_type")


def test_annotate_with_neighbors_and_plots(synth_model, synth):
    a = synth.copy()
    schash.annotate(a, synth_model, neighbors=10)
    comp = a.obsm["schash_cell_type_composition"]
    np.testing.assert_allclose(np.asarray(comp).sum(1), 1.0)
    assert set(a.obs["schash_neighbor_batch"].cat.categories) <= {"b0", "b1"}
    ax = schash.pl.composition(a, by="batch")
    assert len(ax.patches) == 2 * a.obs["schash_label"].nunique()
    ax = schash.pl.confusion(a, "cell_type")
    assert ax.images[0].get_array().shape == (4, a.obs["schash_label"].nunique())
    sal = synth_model.saliency(a)
    ax = schash.pl.saliency(sal, n=3)
    assert len(ax.get_xticklabels()) <= 3 * sal.shape[1]
    with pytest.raises(KeyError, match="neighbors=15"):
        schash.pl.composition(synth[:3].copy())


def test_more_reference_columns_are_kept_and_saved(synth, tmp_path):
    a = synth.copy()
    a.obs["donor"] = np.where(np.arange(a.n_obs) % 3 == 0, "d1", "d2")
    with pytest.raises(schash.LabelKeyError, match="'nope' is not in obs"):
        schash.train(a, cell_type_key="cell_type", reference_keys=["nope"], progress=False)
    m = schash.train(a, cell_type_key="cell_type", reference_keys=["donor"], max_epochs=3, progress=False)
    obs = m.reference_obs()
    assert list(obs["donor"].astype(str)) == list(a.obs["donor"])
    comp = m.composition(a[:20].copy(), by="donor", k=10)
    assert list(comp.columns) == ["d1", "d2"]
    np.testing.assert_allclose(comp.sum(1), 1.0)
    m.save(tmp_path / "m.schash")
    assert schash.load(tmp_path / "m.schash").reference_obs().equals(obs)
    # subsampled training: the database (and the column) still covers every cell
    m2 = schash.train(a, cell_type_key="cell_type", reference_keys=["donor"], max_cells_per_type=50,
                      max_epochs=3, progress=False)
    assert list(m2.reference_obs()["donor"].astype(str)) == list(a.obs["donor"])
