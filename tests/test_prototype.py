"""method="prototype": each type's unit mean of the network's last hidden layer, the call the
nearest of them (cosine) to a cell's own hidden layer."""

import copy

import numpy as np
import pytest

import schash
from schash import _hamming
from schash._data import Source


def _hidden(model, adata):
    """The last hidden layer of every cell of ``adata`` as the encoder scales it, in order."""
    import torch

    with Source(adata, None, None) as src:
        blocks = [block.rows() for _, _, block in model.encoder.scaled(src)]
    with torch.no_grad():
        return model.module.net[:-1](torch.from_numpy(np.concatenate(blocks).astype(np.float32))).numpy()


def test_prototypes_are_unit_type_means_of_the_last_hidden_layer(synth_model, synth):
    h = _hidden(synth_model, synth)  # every cell trained (reference scaling: the rows the network saw)
    y = synth.obs["cell_type"].astype(str).to_numpy()
    means = np.stack([h[y == t].mean(0) for t in synth_model.cell_types])
    expected = means / np.linalg.norm(means, axis=1, keepdims=True)
    np.testing.assert_allclose(synth_model.prototypes, expected, atol=1e-5)


def test_prototype_call_is_the_nearest_prototype(synth_model, synth):
    q = synth[::3].copy()
    p = synth_model.predict(q, method="prototype")
    nearest = (_hidden(synth_model, q) @ synth_model.prototypes.T).argmax(1)
    np.testing.assert_array_equal(p["label"].astype(str).to_numpy(), np.asarray(synth_model.cell_types)[nearest])
    d = _hamming.distances(synth_model.encode(q), synth_model.packed_anchors).astype(np.int64)
    rows = np.arange(len(d))
    np.testing.assert_array_equal(p["distance"].to_numpy(), d[rows, nearest])
    d[rows, nearest] = 10**6
    np.testing.assert_array_equal(p["delta_next"].to_numpy(), d.min(1) - p["distance"].to_numpy())


@pytest.fixture(scope="module")
def pbmc_split(pbmc68k):
    from sklearn.model_selection import train_test_split

    y = pbmc68k.obs["bulk_labels"].astype(str).to_numpy()
    ref, qry = train_test_split(np.arange(pbmc68k.n_obs), test_size=0.5, stratify=y, random_state=0)
    model = schash.train(pbmc68k[ref].copy(), cell_type_key="bulk_labels", progress=False)
    return model, pbmc68k[qry].copy()


def test_prototype_calls_on_held_out_cells(pbmc_split):
    model, qry = pbmc_split
    y = qry.obs["bulk_labels"].astype(str).to_numpy()
    proto = model.predict(qry, method="prototype")["label"].astype(str).to_numpy()
    anchor = model.predict(qry)["label"].astype(str).to_numpy()
    assert np.mean(proto == y) >= 0.8
    assert np.mean(proto == y) >= np.mean(anchor == y) - 0.03


def test_a_query_of_one_type_gets_the_same_prototype_calls(pbmc_split):
    model, qry = pbmc_split
    full = model.predict(qry, method="prototype")
    y = qry.obs["bulk_labels"].astype(str).to_numpy()
    for t in ("CD14+ Monocyte", "CD19+ B"):
        alone = model.predict(qry[y == t].copy(), method="prototype")
        for col in ("label", "pruned_label", "confidence", "typicality"):
            np.testing.assert_array_equal(alone[col].to_numpy(), full[col].to_numpy()[y == t])


def test_a_model_without_prototypes_says_how_to_go_on(synth_model, synth):
    tensors, meta = synth_model._state()
    del tensors["prototypes"]  # as a file saved before prototypes were kept
    old = schash.SchashModel._from_state(tensors, meta)
    q = synth[:50].copy()
    with pytest.raises(schash.InputError, match="retrain it, or use method='anchor'"):
        old.predict(q, method="prototype")
    np.testing.assert_array_equal(old.predict(q)["label"].to_numpy(), synth_model.predict(q)["label"].to_numpy())


def test_prototype_and_anchor_calls_leave_the_same_cells_unassigned(pbmc_split):
    """Pruning asks whether the code is near any anchor and whether the cell is typical: neither
    depends on which type the call names."""
    model, qry = pbmc_split
    model = copy.copy(model)
    model.novelty_alpha = 0.1  # enough cells Unassigned on this small query to compare
    anchor = model.predict(qry, method="anchor")
    proto = model.predict(qry, method="prototype")
    gone = anchor["pruned_label"].astype(str) == "Unassigned"
    assert 0 < gone.sum() < len(gone)
    np.testing.assert_array_equal(proto["pruned_label"].astype(str) == "Unassigned", gone)
    assert (proto["label"] != anchor["label"]).any()  # the two calls do differ somewhere
