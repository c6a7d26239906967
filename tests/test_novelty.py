"""The typicality: two conformal p-values (expression PCA, the network's last hidden layer) combined."""

import numpy as np
import pytest
from conftest import make_counts
from sklearn.metrics import roc_auc_score

import schash
from schash._novelty import NoveltyScorer, fit_novelty, unit
from schash._scaled import Scaled


def _scorer(rng, n_bank=40, width=6):
    comps = np.linalg.qr(rng.normal(size=(8, 3)))[0].T.astype(np.float32)  # 3 orthonormal components
    bank_rows = rng.normal(size=(n_bank, 8)).astype(np.float32)
    s = NoveltyScorer(comps, np.zeros(8, np.float32), np.zeros((0, 4), np.float32), np.zeros(0, np.float32), k=3)
    s.bank = s.project(bank_rows)
    s.calibration = np.sort(s.distances(s.project(rng.normal(size=(200, 8)).astype(np.float32))))
    e1 = np.eye(width, dtype=np.float32)[0]  # known cells' hidden layer: around one direction
    s.deep_bank = unit(rng.normal(size=(n_bank, width)) * 0.3 + e1).astype(np.float32)
    s.deep_calibration = np.sort(s.deep_distances((rng.normal(size=(200, width)) * 0.3 + e1).astype(np.float32)))
    return s


def _p_above(cal, d):
    return np.array([(1 + (cal >= x).sum()) / (1 + len(cal)) for x in d])


def test_typicality_is_fishers_combination_of_the_two_views():
    rng = np.random.default_rng(0)
    s = _scorer(rng)
    coords = s.project(rng.normal(size=(50, 8)).astype(np.float32))
    feats = rng.normal(size=(50, 6)).astype(np.float32)
    p1 = _p_above(s.calibration, s.distances(coords))
    p2 = _p_above(s.deep_calibration, s.deep_distances(feats))
    from scipy.stats import chi2

    expected = chi2.sf(-2 * (np.log(p1) + np.log(p2)), 4)
    np.testing.assert_allclose(s.typicality(coords, features=feats), expected, rtol=1e-9)


def test_a_cell_unlike_the_bank_in_the_hidden_layer_alone_is_atypical():
    """Typical in expression, far from every bank cell in the network's view: the typicality falls."""
    rng = np.random.default_rng(1)
    s = _scorer(rng)
    coords = s.bank[:5]  # bank cells themselves: as typical as expression can say
    near = s.deep_bank[:5] * 3.0  # bank cells' own directions: the nearest bank cell at distance ~0
    far = -s.deep_bank[:5]  # the opposite directions: away from every bank cell
    typical, atypical = s.typicality(coords, features=near), s.typicality(coords, features=far)
    expression_only = s.typicality(coords)
    assert (expression_only > 0.2).all()
    assert (typical >= expression_only).all()
    assert (atypical < 0.1 * expression_only).all()


def test_models_with_margins_are_scored_as_they_were():
    """Older model files hold a margin calibration and no deep bank: Bonferroni of the PCA and margin p-values."""
    rng = np.random.default_rng(2)
    s = _scorer(rng)
    s.deep_bank = s.deep_calibration = None
    s.margin_calibration = np.sort(rng.normal(size=100)).astype(np.float32)
    assert not s.uses_features
    coords = s.project(rng.normal(size=(30, 8)).astype(np.float32))
    m = rng.normal(size=30)
    p1 = _p_above(s.calibration, s.distances(coords))
    p_margin = np.array([(1 + (s.margin_calibration <= x).sum()) / 101 for x in m])
    np.testing.assert_allclose(s.typicality(coords, margins=m), np.minimum(1, 2 * np.minimum(p1, p_margin)))
    # features are ignored by a scorer without a deep bank
    np.testing.assert_array_equal(s.typicality(coords, margins=m, features=rng.normal(size=(30, 6))),
                                  s.typicality(coords, margins=m))


def test_fit_leaves_each_bank_cell_out_of_its_own_calibration():
    rng = np.random.default_rng(3)
    n, g = 60, 12
    X = Scaled(rng.normal(size=(n, g)).astype(np.float32), np.zeros(n, np.int64), np.zeros((1, g)),
               np.ones((1, g)), np.ones(g, bool), 10.0)
    y = np.repeat([0, 1, 2], n // 3)
    seen = []

    def features(rows):
        seen.append(len(rows))
        return rows[:, :5] * 2.0  # any map of the rows; the bank is kept at unit length

    s = fit_novelty(X, y, np.arange(n), seed=0, calibration_rows=X.rows, features=features, k=1, n_comps=4)
    assert s.uses_features and s.deep_bank.shape == (n, 5)
    np.testing.assert_allclose(np.linalg.norm(s.deep_bank, axis=1), 1.0, rtol=1e-5)
    # every cell is in the bank and calibrates on plain rows: with itself left out no distance is 0
    assert (s.deep_calibration > 1e-3).all() and (np.diff(s.deep_calibration) >= 0).all()
    assert (s.calibration > 1e-3).all()
    assert sum(seen) == 2 * n  # the bank once, every calibration cell once


def test_trained_model_saves_and_reloads_its_deep_bank(synth_model, synth, tmp_path):
    nov = synth_model.novelty
    assert nov.uses_features
    assert nov.deep_bank.shape == (min(1000, len(nov.bank)), synth_model.module.config["hidden"][-1])
    path = tmp_path / "m.schash"
    synth_model.save(path)
    again = schash.SchashModel.load(path)
    np.testing.assert_array_equal(again.novelty.deep_calibration, nov.deep_calibration)
    q = synth[:50]
    np.testing.assert_array_equal(again.predict(q)["typicality"], synth_model.predict(q)["typicality"])


@pytest.mark.parametrize("scale", ["reference", "batch"])
def test_left_out_type_is_less_typical_under_either_scaling(scale):
    data = make_counts(n_cells=900, n_types=5, seed=7)
    ref = data[(data.obs["batch"] == "b0").to_numpy() & (data.obs["cell_type"] != "type_4").to_numpy()].copy()
    query = data[data.obs["batch"] == "b1"].copy()
    m = schash.train(ref, cell_type_key="cell_type", scale=scale, max_epochs=15, progress=False)
    df = m.predict(query)
    novel = (query.obs["cell_type"] == "type_4").to_numpy()
    assert roc_auc_score(novel, -df["typicality"]) > 0.85
