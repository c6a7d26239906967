"""schash._bridge, the functions the R package calls (without R)."""

import numpy as np
import pytest

import schash
from schash import _bridge


def test_query_batches_match_batch_key(synth):
    """R's schash_annotate(batch=) goes through annotate_matrix(batches=): the same as batch_key=.

    Query batches matter for a model that standardises each batch on its own (scale="batch").
    """
    synth_model = schash.train(synth, cell_type_key="cell_type", batch_key="batch", scale="batch", max_epochs=3,
                               progress=False)
    q = synth[:300].copy()
    res = _bridge.annotate_matrix(synth_model, q.X, list(q.var_names), list(q.obs_names), saliency=False,
                                  batches=list(q.obs["batch"].astype(str)))
    pred = synth_model.predict(q, batch_key="batch")
    np.testing.assert_array_equal(res["table"]["confidence"], pred["confidence"].to_numpy())
    plain = synth_model.predict(q)
    assert not np.array_equal(plain["typicality"].to_numpy(), pred["typicality"].to_numpy())
    with pytest.raises(schash.InputError, match="3 batches for 300 cells"):
        _bridge.annotate_matrix(synth_model, q.X, list(q.var_names), list(q.obs_names), saliency=False,
                                batches=["a", "b", "c"])


def test_warnings_are_recorded_for_r_not_printed(synth, recwarn):
    """Bridge calls record their warnings (each once) for R's take_warnings() instead of printing them."""
    _bridge.take_warnings()
    q = synth.copy()
    labels = q.obs["cell_type"].astype(str).to_numpy().copy()
    labels[:2] = "rare"
    _bridge.train_matrix(q.X, list(q.var_names), list(q.obs_names), list(labels), max_epochs=1,
                         min_cells_per_type=10)
    assert len(recwarn) == 0  # nothing reached Python's own warning machinery
    msgs = _bridge.take_warnings()
    assert len(msgs) == 1 and "rare (2)" in msgs[0]
    assert _bridge.take_warnings() == []


def test_type_scores(synth_model, synth):
    import matplotlib

    matplotlib.use("Agg")
    a = synth[:100].copy()
    schash.annotate(a, synth_model)
    sc = a.obsm["schash_scores"]
    assert list(sc.columns) == synth_model.cell_types and list(sc.index) == list(a.obs_names)
    assert ((sc.to_numpy() >= 0) & (sc.to_numpy() <= 1)).all()
    # the label is the best-scoring type, and the score is 1 - distance / n_bits
    assert (sc.idxmax(axis=1).to_numpy() == a.obs["schash_label"].astype(str).to_numpy()).all()
    np.testing.assert_allclose(sc.max(axis=1), 1 - a.obs["schash_distance"] / synth_model.n_bits)
    res = _bridge.annotate_matrix(synth_model, a.X, list(a.var_names), list(a.obs_names), saliency=False)
    np.testing.assert_array_equal(res["scores"]["values"], sc.to_numpy())
    ax = schash.pl.scores(a)
    assert ax.images[0].get_array().shape == (len(synth_model.cell_types), 100)


def test_every_whole_number_argument_is_made_an_integer_for_r():
    """R hands numbers over as doubles (``max_epochs = 5`` is 5.0): every whole-number argument
    of ``train`` and ``predict`` must be converted, or Python's checks refuse it."""
    import inspect

    params = {**inspect.signature(schash.train).parameters, **inspect.signature(schash.SchashModel.predict).parameters}
    whole = {n for n, p in params.items() if type(p.default) is int or "int |" in str(p.annotation)
             or str(p.annotation) == "int"}
    assert whole <= set(_bridge._INT_ARGS)
    out = _bridge._ints({"max_epochs": 5.0, "n_top_genes": None, "dropout": 0.2})
    assert out == {"max_epochs": 5, "n_top_genes": None, "dropout": 0.2} and type(out["max_epochs"]) is int
