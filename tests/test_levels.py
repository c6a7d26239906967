"""Label levels (schash._levels): one model, calls at every level that always agree."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from conftest import make_counts

import schash
from schash import _bridge, _hamming, _io
from schash._cli import main
from schash._data import Source
from schash._encode import Encoded
from schash._levels import read_labels

COARSE = {"type_0": "A", "type_1": "A", "type_2": "A", "type_3": "B", "type_4": "B", "type_5": "B"}


@pytest.fixture(scope="module")
def ref():
    a = make_counts(n_cells=480, n_types=6, n_batches=1, seed=3)
    a.obs["cell_type"] = a.obs["cell_type"].astype(str)
    a.obs["coarse"] = a.obs["cell_type"].map(COARSE)
    a.obs["all"] = "cell"
    return a


@pytest.fixture(scope="module")
def model(ref):
    return schash.train(ref, cell_type_key=["coarse", "cell_type"], max_epochs=8, progress=False)


def _parents(model, level="coarse"):
    return dict(zip(model.cell_types, model.levels.parents[model.levels.names.index(level)], strict=True))


def test_model_keeps_the_levels(model):
    assert model.levels.names == ["coarse", "cell_type"]
    assert _parents(model) == COARSE
    assert "label levels: coarse > cell_type" in repr(model)
    assert model.levels.to_frame(model.cell_types).shape == (6, 2)


@pytest.mark.parametrize("method", ["anchor", "knn"])
def test_levels_always_agree(model, ref, method):
    p = model.predict(ref, method=method, progress=False)
    parent = _parents(model)
    assert (p["label_coarse"].astype(str) == p["label"].astype(str).map(parent)).all()
    assert (p["label_cell_type"] == p["label"]).all() and (p["pruned_label_cell_type"] == p["pruned_label"]).all()
    fine_kept = p["pruned_label"] != "Unassigned"
    coarse_kept = p["pruned_label_coarse"] != "Unassigned"
    assert not (fine_kept & ~coarse_kept).any()  # a trusted fine call is a trusted coarse call
    assert (p["confidence_coarse"] >= p["confidence"] - 1e-12).all()
    assert (p["resolved_level"].astype(str) == np.where(fine_kept, "cell_type",
                                                        np.where(coarse_kept, "coarse", "Unassigned"))).all()
    assert (p.loc[fine_kept, "resolved_label"].astype(str) == p.loc[fine_kept, "label"].astype(str)).all()
    # the synthetic types are easy: nearly every cell is called right at both levels
    assert (p["label_coarse"].astype(str) == ref.obs["coarse"].to_numpy()).mean() > 0.95


def _encoded(model, codes, typicality=None, empty=None):
    n = len(codes)
    return Encoded(cells=pd.Index([f"q{i}" for i in range(n)]), codes=_hamming.pack(codes),
                   typicality=np.full(n, 0.9) if typicality is None else np.asarray(typicality, dtype=float),
                   empty=np.zeros(n, bool) if empty is None else np.asarray(empty), n_genes_matched=300)


def _between(a, b, rng):
    """A ±1 code that takes half of the bits where a and b differ from each, the rest from both."""
    out = a.copy()
    differ = np.flatnonzero(a != b)
    take = rng.choice(differ, len(differ) // 2, replace=False)
    out[take] = b[take]
    return out


def test_a_code_between_siblings_is_resolved_at_the_coarse_level(model):
    """Fine: too far from both anchors (Unassigned); coarse: clearly nearer its parent than any other."""
    # the codes below lie K/4 from the anchors they are between: a threshold under that prunes them
    model = copy.copy(model)
    model.threshold = model.n_bits // 4 - 1
    rng = np.random.default_rng(0)
    t = {name: i for i, name in enumerate(model.cell_types)}
    anchors = model.anchors
    codes = np.stack([
        _between(anchors[t["type_0"]], anchors[t["type_1"]], rng),  # siblings under A
        _between(anchors[t["type_0"]], anchors[t["type_3"]], rng),  # cousins: A or B?
        anchors[t["type_4"]],  # on an anchor
        anchors[t["type_4"]],  # on an anchor, but atypical of the reference
        anchors[t["type_4"]],  # no expression
    ])
    p = model.call(_encoded(model, codes, typicality=[0.9, 0.9, 0.9, 1e-4, 0.9],
                            empty=[False, False, False, False, True]))
    assert p["distance"].iloc[0] > model.threshold and p["distance"].iloc[1] > model.threshold
    assert list(p["pruned_label"].astype(str)) == ["Unassigned", "Unassigned", "type_4", "Unassigned", "Unassigned"]
    assert list(p["pruned_label_coarse"].astype(str)) == ["A", "Unassigned", "B", "Unassigned", "Unassigned"]
    assert list(p["resolved_label"].astype(str)) == ["A", "Unassigned", "type_4", "Unassigned", "Unassigned"]
    assert list(p["resolved_level"].astype(str)) == ["coarse", "Unassigned", "cell_type", "Unassigned", "Unassigned"]
    assert p["confidence"].iloc[0] == 0 and p["confidence_coarse"].iloc[0] >= 0.5
    assert p["confidence_coarse"].iloc[1] < 0.5
    assert p["label_coarse"].iloc[4] == "Unassigned" and p["confidence_coarse"].iloc[4] == 0


def test_three_levels_and_a_single_top_class(ref):
    m = schash.train(ref, cell_type_key=["all", "coarse", "cell_type"], max_epochs=3, progress=False)
    assert m.levels.names == ["all", "coarse", "cell_type"]
    p = m.predict(ref, progress=False)
    assert (p["label_all"] == "cell").all()
    # one class at the top: nothing outside it, so every typical cell is resolved at least there
    trusted = p["typicality"] >= m.novelty_alpha
    assert (p.loc[trusted, "pruned_label_all"] == "cell").all()
    order = {"Unassigned": 0, "all": 1, "coarse": 2, "cell_type": 3}
    depth = p["resolved_level"].astype(str).map(order)
    for level, d in (("all", 1), ("coarse", 2), ("cell_type", 3)):
        assert ((p[f"pruned_label_{level}"] != "Unassigned") == (depth >= d)).all()


def test_inconsistent_levels_name_the_types_and_cells(ref):
    a = ref.copy()
    fine = a.obs["cell_type"].to_numpy().copy()
    fine[[0, 5]] = np.where(a.obs["coarse"].to_numpy()[[0, 5]] == "A", "type_3", "type_0")  # wrong parent
    a.obs["fine"] = fine
    with pytest.raises(schash.InputError, match=r"do not nest.*'fine' type must lie in one 'coarse'") as err:
        schash.train(a, cell_type_key=["coarse", "fine"], max_epochs=1, progress=False)
    msg = str(err.value)
    assert "c0" in msg or "c5" in msg
    bad = {fine[0], fine[5]}
    assert all(f"'{t}' lies in" in msg for t in bad)


def test_label_tables_in_every_form(ref):
    want_fine = ref.obs["cell_type"].to_numpy()
    with Source(ref) as src:
        for labels, names in [
            (ref.obs[["coarse", "cell_type"]], ["coarse", "cell_type"]),
            ({"c": ref.obs["coarse"].to_numpy(), "f": want_fine}, ["c", "f"]),
            (np.stack([ref.obs["coarse"].to_numpy(), want_fine], axis=1).tolist(), ["level1", "level2"]),
            ([list(ref.obs["coarse"]), list(want_fine)], ["level1", "level2"]),  # one row per level
        ]:
            fine, table = read_labels(src, None, labels)
            assert list(table) == names and (fine == want_fine).all()
        fine, table = read_labels(src, ["cell_type"], None)  # one level: as before
        assert table is None and (fine == want_fine).all()
        fine, table = read_labels(src, None, want_fine.tolist())
        assert table is None
        with pytest.raises(schash.InputError, match="one row per cell"):
            read_labels(src, None, [["a", "b"], ["c", "d"]])
        with pytest.raises(schash.InputError, match="names a column twice"):
            read_labels(src, ["coarse", "coarse"], None)


def test_labels_dataframe_trains_the_same_levels(ref):
    m = schash.train(ref, labels=ref.obs[["coarse", "cell_type"]], max_epochs=1, progress=False)
    assert m.levels.names == ["coarse", "cell_type"] and _parents(m) == COARSE


def test_save_load_round_trip(model, ref, tmp_path):
    path = tmp_path / "levels.schash"
    model.save(path)
    back = schash.load(path)
    assert back.levels == model.levels
    pd.testing.assert_frame_equal(back.predict(ref, progress=False), model.predict(ref, progress=False))


def test_files_without_levels_load_and_bad_levels_are_refused(model, tmp_path):
    tensors, meta = model._state()
    old = {k: v for k, v in meta.items() if k != "levels"}  # as written before label levels existed
    _io.write(tmp_path / "old.schash", tensors, old)
    m = schash.load(tmp_path / "old.schash")
    assert m.levels is None and "label_coarse" not in m.call(_encoded(m, m.anchors[:2]))
    bad = dict(meta, levels={"names": ["coarse", "cell_type"], "parents": [["A", "B"]]})
    _io.write(tmp_path / "bad.schash", tensors, bad)
    with pytest.raises(schash.ModelFileError, match="one parent name for each of the 6 cell types"):
        schash.load(tmp_path / "bad.schash")


def test_add_reference_takes_the_levels_too(model, ref):
    import copy

    m = copy.deepcopy(model)
    n = len(m.ref_labels)
    m.add_reference(ref[:20], cell_type_key=["coarse", "cell_type"])
    assert len(m.ref_labels) == n + 20
    assert (m.reference_obs()["cell_type"].iloc[n:].astype(str).to_numpy() == ref.obs["cell_type"][:20]).all()


def test_annotate_writes_and_replaces_level_columns(model, ref):
    a = ref.copy()
    schash.annotate(a, model, progress=False)
    for col in ("label_coarse", "pruned_label_coarse", "confidence_coarse", "label_cell_type",
                "resolved_label", "resolved_level"):
        assert f"schash_{col}" in a.obs
    assert "schash_resolved_level" in list(a.uns["schash"]["created"]["obs"])
    schash.annotate(a, model, progress=False)  # a rerun replaces its own columns
    a.obs["schash2_resolved_level"] = "mine"
    with pytest.raises(schash.InputError, match="schash2_resolved_level"):
        schash.annotate(a, model, key_added="schash2", progress=False)


def test_cli_takes_levels_comma_separated_or_repeated(ref, tmp_path, capsys):
    ref.write_h5ad(tmp_path / "ref.h5ad")
    for i, flags in enumerate((["--cell-type-key", "coarse,cell_type"],
                               ["--cell-type-key", "coarse", "--cell-type-key", "cell_type"])):
        out = tmp_path / f"m{i}.schash"
        assert main(["train", str(tmp_path / "ref.h5ad"), *flags, "--max-epochs", "1", "-o", str(out),
                     "--no-progress"]) == 0
        assert schash.load(out).levels.names == ["coarse", "cell_type"]
    assert main(["annotate", str(out), str(tmp_path / "ref.h5ad"), "--csv", str(tmp_path / "o.csv"),
                 "--no-progress"]) == 0
    table = pd.read_csv(tmp_path / "o.csv", index_col=0)
    assert {"schash_label_coarse", "schash_resolved_level"} <= set(table.columns)
    assert "resolved_level" in capsys.readouterr().out


def test_r_bridge_levels(ref):
    labels = {"coarse": list(ref.obs["coarse"]), "cell_type": list(ref.obs["cell_type"])}  # R's named list
    m = _bridge.train_matrix(ref.X, list(ref.var_names), list(ref.obs_names), labels, max_epochs=1.0)
    assert _bridge.model_info(m)["levels"] == ["coarse", "cell_type"]
    res = _bridge.annotate_matrix(m, ref.X, list(ref.var_names), list(ref.obs_names), saliency=False)
    assert res["factors"]["label_coarse"] == ["A", "B", "Unassigned"]
    assert res["factors"]["resolved_level"] == ["coarse", "cell_type", "Unassigned"]
    assert set(res["table"]["label_coarse"]) <= {"A", "B", "Unassigned"}
