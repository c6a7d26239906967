"""The typicality: conformal p-values of the expression view and the network's margin, combined."""

import numpy as np
import pandas as pd
import pytest
from conftest import edited_model_file, make_counts
from sklearn.metrics import roc_auc_score

import schash
from schash._novelty import (
    NoveltyScorer,
    batch_adjusted,
    confidence_factor,
    fit_novelty,
    joint_calibration,
    margins,
)
from schash._scaled import Scaled


def _scorer(rng, n_bank=40):
    comps = np.linalg.qr(rng.normal(size=(8, 3)))[0].T.astype(np.float32)  # 3 orthonormal components
    s = NoveltyScorer(comps, np.zeros(8, np.float32), np.zeros((0, 4), np.float32), np.zeros(0, np.float32), k=3)
    s.bank = s.project(rng.normal(size=(n_bank, 8)).astype(np.float32))
    s.calibration = np.sort(s.distances(s.project(rng.normal(size=(200, 8)).astype(np.float32))))
    s.margin_calibration = np.sort(rng.normal(size=100)).astype(np.float32)
    return s


def _p_values(s, coords, m):
    d = s.distances(coords)
    p_expr = np.array([(1 + (s.calibration >= x).sum()) / (1 + len(s.calibration)) for x in d])
    p_margin = np.array([(1 + (s.margin_calibration <= x).sum()) / (1 + len(s.margin_calibration)) for x in m])
    return p_expr, p_margin


def _with_joint_calibration():
    """A scorer with a joint calibration, 30 query cells' coordinates and margins."""
    rng = np.random.default_rng(2)
    s = _scorer(rng)
    n_cal = len(s.margin_calibration)
    s.joint_calibration = np.sort(rng.exponential(2.0, size=n_cal)).astype(np.float32)
    return s, n_cal, s.project(rng.normal(size=(30, 8)).astype(np.float32)), rng.normal(size=30)


def test_typicality_ranks_fishers_statistic_among_the_calibration_cells():
    s, n_cal, coords, m = _with_joint_calibration()
    p_expr, p_margin = _p_values(s, coords, m)
    stat = (-np.log(p_expr) - np.log(p_margin)).astype(np.float32)
    expected = np.array([(1 + (s.joint_calibration >= x).sum()) / (1 + n_cal) for x in stat])
    np.testing.assert_allclose(s.typicality(coords, m), expected)
    np.testing.assert_allclose(s.typicality(coords), p_expr)  # no margins: the expression view alone
    # a cell whose margin is below every calibration margin is less typical than with its own margin
    low = s.typicality(coords, np.full(30, s.margin_calibration[0] - 1.0))
    assert (low <= s.typicality(coords, m)).all() and (low < s.typicality(coords, m)).any()


def test_models_saved_before_the_joint_calibration_keep_bonferroni():
    rng = np.random.default_rng(2)
    s = _scorer(rng)
    assert s.joint_calibration is None
    coords = s.project(rng.normal(size=(30, 8)).astype(np.float32))
    m = rng.normal(size=30)
    p_expr, p_margin = _p_values(s, coords, m)
    np.testing.assert_allclose(s.typicality(coords, m), np.minimum(1, 2 * np.minimum(p_expr, p_margin)))


def test_joint_calibration_pairs_each_cells_two_views():
    """Each calibration cell's statistic comes from its own distance and margin, ranked among the others."""
    d = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    m = np.array([4.0, 3.0, 2.0, 1.0], np.float32)  # the most distant cell also has the lowest margin
    stat = joint_calibration(d, m)
    # p-values against the calibration, the cell itself included once: p_expr = #(d >= d_i) / n
    p_expr, p_margin = np.array([4, 3, 2, 1]) / 4, np.array([4, 3, 2, 1]) / 4
    np.testing.assert_allclose(stat, np.sort(-np.log(p_expr) - np.log(p_margin)), rtol=1e-6)
    # the same values paired the other way round give a different (less extreme) calibration
    assert joint_calibration(d, m[::-1]).max() < stat.max()


def _small_reference(seed, n=60, g=12):
    """``n`` plain standardised rows of three types, and three random 16-bit anchors."""
    rng = np.random.default_rng(seed)
    X = Scaled(rng.normal(size=(n, g)).astype(np.float32), np.zeros(n, np.int64), np.zeros((1, g)),
               np.ones((1, g)), np.ones(g, bool), 10.0)
    anchors = np.where(rng.random((3, 16)) < 0.5, -1.0, 1.0).astype(np.float32)
    return rng, X, np.repeat([0, 1, 2], n // 3), anchors


def test_fit_leaves_each_bank_cell_out_of_its_own_calibration():
    _, X, y, anchors = _small_reference(3)
    n = len(y)
    s = fit_novelty(X, y, np.arange(n), seed=0, calibration_rows=X.rows,
                    network=lambda z: (np.tile(anchors[0], (len(z), 1)), None), anchors=anchors, k=1, n_comps=4)
    assert len(s.bank) == n  # every cell is in the bank and calibrates on plain rows
    # with itself left out, no cell is at distance 0 from its nearest bank cell
    assert (s.calibration > 1e-3).all() and (np.diff(s.calibration) >= 0).all()
    assert len(s.margin_calibration) == n and (np.diff(s.margin_calibration) >= 0).all()
    assert len(s.joint_calibration) == n and (np.diff(s.joint_calibration) >= 0).all()


def test_fit_pairs_each_calibration_cells_distance_with_its_own_margin():
    rng, X, y, anchors = _small_reference(4)
    n = len(y)
    logits = lambda z: np.outer(np.abs(z[:, 0]) + 0.1, anchors[0])  # noqa: E731  margins differ by cell
    s = fit_novelty(X, y, np.arange(n), seed=0, calibration_rows=X.rows, network=lambda z: (logits(z), None),
                    anchors=anchors, k=1, n_comps=4)
    rows = X.rows(np.arange(n))  # every cell calibrates and is a bank cell (scored without itself)
    d = s.distances(s.project(rows), own=np.arange(n)).astype(np.float32)
    m = margins(logits(rows), anchors).astype(np.float32)
    np.testing.assert_allclose(s.joint_calibration, joint_calibration(d, m), rtol=1e-5)
    assert not np.allclose(s.joint_calibration, joint_calibration(d, m[rng.permutation(n)]), rtol=1e-5)


@pytest.mark.parametrize("scale", ["reference", "batch"])
def test_left_out_type_is_less_typical_under_either_scaling(scale):
    data = make_counts(n_cells=900, n_types=5, seed=7)
    ref = data[(data.obs["batch"] == "b0").to_numpy() & (data.obs["cell_type"] != "type_4").to_numpy()].copy()
    query = data[data.obs["batch"] == "b1"].copy()
    m = schash.train(ref, cell_type_key="cell_type", scale=scale, max_epochs=15, progress=False)
    df = m.predict(query)
    novel = (query.obs["cell_type"] == "type_4").to_numpy()
    assert roc_auc_score(novel, -df["typicality"]) > 0.85


def test_batch_adjustment_moves_each_types_batches_onto_the_types_mean():
    rng = np.random.default_rng(5)
    y = np.repeat([0, 1, 2], 30)
    batches = np.tile(["a", "b", "c"], 30)
    batches[y == 2] = "a"  # a type seen in one batch only
    rows = rng.normal(size=(90, 6)).astype(np.float32)
    rows[batches == "b"] += 4.0  # the batch's offset, shared by its types
    before = rows.copy()
    out = batch_adjusted(rows, y, batches)
    np.testing.assert_array_equal(rows, before)  # the input is not changed
    for t in (0, 1):
        for b in "abc":
            group = (y == t) & (batches == b)
            np.testing.assert_allclose(out[group].mean(0), rows[y == t].mean(0), atol=1e-5)
            # each cell keeps its deviation from its group
            np.testing.assert_allclose(out[group] - out[group].mean(0), rows[group] - rows[group].mean(0), atol=1e-5)
    np.testing.assert_array_equal(out[y == 2], rows[y == 2])
    np.testing.assert_allclose(out.mean(0), rows.mean(0), atol=1e-5)
    np.testing.assert_array_equal(batch_adjusted(rows, y, np.full(90, "one")), rows)


def test_with_batches_the_expression_axes_follow_types_not_the_references_batches():
    """Two reference batches with a large gene-wise offset: fitted with the batches, the PCA's
    leading axis no longer lines up with the batches' difference."""
    from schash._data import Expr
    from schash._preprocess import fit_preprocessor

    data = make_counts(n_cells=900, n_types=4, n_batches=3, batch_shift=1.0, seed=11)
    ref = data[data.obs["batch"] != "b2"].copy()

    y = ref.obs["cell_type"].cat.codes.to_numpy().astype(np.int64)
    b = ref.obs["batch"].astype(str).to_numpy()
    _, X = fit_preprocessor(Expr(X=ref.X, genes=ref.var_names, cells=ref.obs_names), n_top_genes=None, batches=b,
                            transform="log", scale="reference")
    anchors = np.sign(np.random.default_rng(0).normal(size=(4, 16))).astype(np.float32)
    fit = dict(seed=0, calibration_rows=X.rows, network=lambda z: (np.tile(anchors[0], (len(z), 1)), None),
               anchors=anchors)
    plain = fit_novelty(X, y, np.arange(len(y)), **fit)
    adjusted = fit_novelty(X, y, np.arange(len(y)), batches=b, **fit)
    rows = X.rows(np.arange(len(y)))
    diff = rows[b == "b1"].mean(0) - rows[b == "b0"].mean(0)
    diff /= np.linalg.norm(diff)
    # measured: 0.9997 without the batches, 0.10 with them
    assert abs(plain.components[0] @ diff) > 0.9 and abs(adjusted.components[0] @ diff) < 0.3
    np.testing.assert_allclose(adjusted.center, plain.center, atol=1e-4)  # the centre stays the reference mean


def test_tail_keeps_conformal_p_values_up_to_the_extremes_and_falls_beyond_them():
    from schash._novelty import TAIL_REACH, _p_above, _p_below

    rng = np.random.default_rng(5)
    cal = np.sort(rng.exponential(1.0, size=300)).astype(np.float32)
    n = len(cal)
    inside = np.concatenate([cal[::7], rng.uniform(cal[0], cal[-1], 50)]).astype(np.float32)
    np.testing.assert_array_equal(_p_above(cal, inside, 0.1), _p_above(cal, inside))
    np.testing.assert_array_equal(_p_below(cal, inside, 0.1), _p_below(cal, inside))
    beyond = cal[-1] + np.array([1e-4, 0.5, 1.0, 1.5, 1e4], np.float32)
    p = _p_above(cal, beyond, 0.1)
    assert (_p_above(cal, beyond) == 1 / (n + 1)).all()  # the conformal floor: one value for all of them
    assert p[0] == pytest.approx(1 / (n + 1), rel=1e-3)  # continuous at the largest calibration value
    assert (np.diff(p) < 0).all()
    assert p[-1] == pytest.approx(TAIL_REACH / (n + 1), rel=1e-12)  # the tail reaches one decade below the floor
    # the scale: the top 10% of the calibration values' mean excess over the value below them
    top = cal[-30:].astype(np.float64) - cal[-31]
    assert p[2] == pytest.approx(np.exp(-1.0 / top.mean()) / (n + 1), rel=1e-4)
    below = _p_below(cal, cal[0] - np.array([1e-4, 1.0], np.float32), 0.1)
    assert below[1] < below[0] < 1 / (n + 1) < _p_below(cal, cal[:1])[0]


def test_tail_ranks_cells_beyond_the_calibration_instead_of_tying_them():
    s, n_cal, coords, m = _with_joint_calibration()
    far = np.linspace(0.01, 2.0, 30)  # one cell's margin ever further below every calibration margin
    low = s.margin_calibration[0] - far
    floor = s.typicality(coords[:1].repeat(30, 0), low)
    assert len(np.unique(floor)) == 1  # without the tail: one p-value for all of them
    s.tail = 0.1
    tailed = s.typicality(coords[:1].repeat(30, 0), low)
    assert (np.diff(tailed) <= 0).all() and (tailed <= floor).all() and len(np.unique(tailed)) >= 4
    np.testing.assert_array_equal(s.typicality(coords, np.clip(m, s.margin_calibration[0], None)),
                                  _no_tail(s).typicality(coords, np.clip(m, s.margin_calibration[0], None)))


def _no_tail(s):
    import dataclasses

    return dataclasses.replace(s, tail=0.0)


def test_trained_models_keep_their_tail_and_older_files_load_without_it(synth_model, tmp_path):
    from schash._novelty import TAIL

    assert synth_model.novelty.tail == TAIL > 0
    path = tmp_path / "m.schash"
    synth_model.save(path)
    assert schash.load(path).novelty.tail == TAIL
    old = tmp_path / "old.schash"
    old.write_bytes(edited_model_file(path.read_bytes(), lambda meta, t: meta.pop("novelty_tail")))  # as saved before
    assert schash.load(old).novelty.tail == 0.0


def test_confidence_factor_keeps_typical_aligned_cells_and_scales_the_rest_in_proportion():
    typ = np.array([1.0, 0.5, 0.25, 1.0, 1.0, 0.25, 0.01])
    aligned = np.array([1.0, 0.1, 1.0, 0.05, 0.01, 0.05, 1.0])
    np.testing.assert_allclose(confidence_factor(typ, aligned), [1.0, 1.0, 0.5, 0.5, 0.1, 0.25, 0.02])
    np.testing.assert_allclose(confidence_factor(typ), [1.0, 1.0, 0.5, 1.0, 1.0, 0.5, 0.02])  # models without it
    clear = np.array([0.05, 1.0, 0.1, 1.0, 0.5, 0.02, 1.0])
    np.testing.assert_allclose(confidence_factor(typ, aligned, clear), [0.5, 1.0, 0.5, 0.5, 0.1, 0.05, 0.02])
    np.testing.assert_allclose(confidence_factor(typ, None, clear), [0.5, 1.0, 0.5, 1.0, 1.0, 0.1, 0.02])


def test_alignment_is_a_conformal_p_value_among_the_calibration_cosines():
    s = _scorer(np.random.default_rng(5))
    cos = np.array([-0.2, 0.3, 0.55, 0.9, 0.95])
    assert s.alignment(cos) is None  # a model saved before the alignment: no factor
    s.prototype_calibration = np.linspace(0.1, 0.9, 99).astype(np.float32)
    expect = [(1 + (s.prototype_calibration <= c).sum()) / 100 for c in cos]
    np.testing.assert_allclose(s.alignment(cos), expect)
    assert s.alignment(None) is None


def test_trained_models_calibrate_the_alignment_and_older_files_load_without_it(synth_model, tmp_path):
    query = make_counts(n_cells=300, seed=7)  # other baseline expression and batch effects: a shifted query
    cal = synth_model.novelty.prototype_calibration
    assert cal is not None and len(cal) == len(synth_model.novelty.margin_calibration)  # one per calibration cell
    assert (np.diff(cal) >= 0).all() and -1.0 <= cal[0] <= cal[-1] <= 1.0 + 1e-6
    enc = synth_model.encoded(query)
    assert enc.alignment is not None and ((enc.alignment > 0) & (enc.alignment <= 1)).all()
    # as saved before the alignment
    _saved_and_saved_before(synth_model, query, enc, tmp_path, lambda meta, t: t.pop("novelty.prototype_calibration"),
                            enc.alignment)


def _saved_and_saved_before(model, query, enc, tmp_path, drop, p_values):
    """The calls of ``enc`` (``query``'s encoding) survive saving and loading; the file edited by ``drop``
    (as saved before a confidence factor) gives the same calls and typicality and the confidence without
    the factor ``min(1, p_values / 0.1)``, exactly — never lower, and lower for some cells of this query."""
    table = model.call(enc)
    path = tmp_path / "m.schash"
    model.save(path)
    pd.testing.assert_frame_equal(schash.load(path).predict(query), table)
    old = tmp_path / "old.schash"
    old.write_bytes(edited_model_file(path.read_bytes(), drop))
    before = schash.load(old).predict(query)
    assert (before["label"] == table["label"]).all() and np.array_equal(before["typicality"], table["typicality"])
    factor = np.minimum(1.0, p_values / 0.1)
    np.testing.assert_allclose(table["confidence"].to_numpy(), before["confidence"].to_numpy() * factor,
                               rtol=1e-12, atol=1e-15)
    assert (factor < 1).any()  # some cells of this shifted query are below the calibration's tenth


@pytest.mark.parametrize("n_types", [2, 4])
def test_clarity_classifier_gives_scikit_learns_largest_probability(n_types):
    from sklearn.linear_model import LogisticRegression

    from schash import _clarity

    rng = np.random.default_rng(n_types)
    y = rng.integers(0, n_types, 300)
    x = rng.normal(size=(300, 5)) + y[:, None] * 0.7
    coef, intercept = _clarity.fit(x, y)
    assert coef.shape == (n_types, 5) and intercept.shape == (n_types,)  # a binary fit too: one row per class
    lr = LogisticRegression(C=_clarity.C, class_weight="balanced", max_iter=1000).fit(x, y)
    q = rng.normal(size=(50, 5)) * 2
    np.testing.assert_allclose(_clarity.max_probability(q, coef, intercept), lr.predict_proba(q).max(1), rtol=1e-4)
    assert _clarity.fit(x, np.zeros(300, dtype=int)) is None  # one type: nothing to be clear between


def test_clarity_is_a_conformal_p_value_among_the_calibration_probabilities():
    from schash import _clarity

    s = _scorer(np.random.default_rng(6))
    coords = s.project(np.random.default_rng(7).normal(size=(20, 8)).astype(np.float32))
    assert s.clarity(coords) is None  # a model saved before the clarity: no factor
    s.clarity_coef = np.random.default_rng(8).normal(size=(3, 4)).astype(np.float32)
    s.clarity_intercept = np.zeros(3, np.float32)
    s.clarity_calibration = np.linspace(0.4, 1.0, 99).astype(np.float32)
    probs = _clarity.max_probability(s._space(coords), s.clarity_coef, s.clarity_intercept)
    expect = [(1 + (s.clarity_calibration <= p).sum()) / 100 for p in probs]
    np.testing.assert_allclose(s.clarity(coords), expect)
    assert s.clarity(None) is None


def test_trained_models_calibrate_the_clarity_and_older_files_load_without_it(synth_model, tmp_path):
    query = make_counts(n_cells=300, seed=7)  # other baseline expression and batch effects: a shifted query
    nov = synth_model.novelty
    cal = nov.clarity_calibration
    assert cal is not None and len(cal) == len(nov.margin_calibration)  # one per calibration cell
    assert (np.diff(cal) >= 0).all() and 1.0 / len(synth_model.cell_types) - 1e-6 <= cal[0] <= cal[-1] <= 1.0 + 1e-6
    assert nov.clarity_coef.shape == (len(synth_model.cell_types), nov.bank.shape[1])
    enc = synth_model.encoded(query)
    assert enc.clarity is not None and ((enc.clarity > 0) & (enc.clarity <= 1)).all()

    def drop(meta, t):  # as saved before the clarity
        for name in ("novelty.clarity_coef", "novelty.clarity_intercept", "novelty.clarity_calibration"):
            t.pop(name)

    _saved_and_saved_before(synth_model, query, enc, tmp_path, drop, enc.clarity)

