"""Issue 9, items 3 and 4: model files are written atomically, read once and checked before use."""

import json
import os

import numpy as np
import pytest
from conftest import edited_model_file, join_model_file, split_model_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import schash
from schash import _atomic


@pytest.fixture(scope="module")
def model_bytes(synth_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "m.schash"
    synth_model.save(path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def query(synth):
    return synth[:40].copy()


def _load_bytes(tmp_path, data, name="x.schash"):
    p = tmp_path / name
    p.write_bytes(data)
    return schash.load(p)


# -- item 4: edited metadata or tensors are refused, naming the problem ----------------------------

def _extra_type(m, t):
    m["cell_types"].append("Ghost")


def _three_anchor_rows(m, t):
    t["anchors"] = t["anchors"][:3]


def _labels_out_of_range(m, t):
    t["ref_labels"] = t["ref_labels"].copy()
    t["ref_labels"][0] = 7


def _missing_key(m, t):
    del m["novelty_k"]


def _huge_n_genes(m, t):
    m["module"]["n_genes"] = 10**9


def _batches_out_of_range(m, t):
    t["ref_batches"] = t["ref_batches"] + 5


def _nan_weights(m, t):
    t["net.net.0.weight"] = t["net.net.0.weight"].copy()
    t["net.net.0.weight"][0, 0] = np.nan


def _short_layer(m, t):
    m["module"]["hidden"] = [128, 32]


def _bank_width(m, t):
    t["novelty.bank"] = t["novelty.bank"][:, :-2].copy()


def _unassigned_type(m, t):
    m["cell_types"][0] = "Unassigned"


def _fewer_codes(m, t):
    t["ref_codes"] = t["ref_codes"][:-3].copy()


def _prototype_rows(m, t):
    t["prototypes"] = t["prototypes"][:-1].copy()


def _nan_prototype(m, t):
    t["prototypes"] = t["prototypes"].copy()
    t["prototypes"][0, 0] = np.nan


def _joint_unsorted(m, t):
    t["novelty.joint_calibration"] = t["novelty.joint_calibration"][::-1].copy()


def _joint_short(m, t):
    t["novelty.joint_calibration"] = t["novelty.joint_calibration"][:-1].copy()


def _joint_without_margins(m, t):
    del t["novelty.margin_calibration"]


def _negative_tail(m, t):
    m["novelty_tail"] = -0.1


def _alignment_unsorted(m, t):
    t["novelty.prototype_calibration"] = t["novelty.prototype_calibration"][::-1].copy()


def _alignment_not_cosines(m, t):
    t["novelty.prototype_calibration"] = t["novelty.prototype_calibration"] + 2.0


def _alignment_without_prototypes(m, t):
    del t["prototypes"]


def _clarity_partial(m, t):
    del t["novelty.clarity_intercept"]


def _clarity_unsorted(m, t):
    t["novelty.clarity_calibration"] = t["novelty.clarity_calibration"][::-1].copy()


def _clarity_not_probabilities(m, t):
    t["novelty.clarity_calibration"] = t["novelty.clarity_calibration"] + 1.0


def _clarity_one_class(m, t):
    t["novelty.clarity_coef"] = t["novelty.clarity_coef"][:1].copy()
    t["novelty.clarity_intercept"] = t["novelty.clarity_intercept"][:1].copy()


def _clarity_wrong_features(m, t):
    t["novelty.clarity_coef"] = t["novelty.clarity_coef"][:, :-1].copy()


def _clarity_euclidean_bank(m, t):
    m["novelty_metric"] = "euclidean"


@pytest.mark.parametrize(
    "edit, message",
    [
        (_extra_type, "anchors.*shape"),
        (_three_anchor_rows, "anchors.*shape"),
        (_labels_out_of_range, "ref_labels.*outside"),
        (_missing_key, "no 'novelty_k'"),
        (_huge_n_genes, "n_genes is 1000000000 but the model lists"),
        (_batches_out_of_range, "ref_batches.*outside"),
        (_nan_weights, "NaN"),
        (_short_layer, "net.*shape"),
        (_bank_width, "novelty.bank.*shape"),
        (_fewer_codes, "ref_labels.*shape"),
        (_unassigned_type, "reserved"),
        (_prototype_rows, "prototypes.*shape"),
        (_nan_prototype, "prototypes.*NaN"),
        (_joint_unsorted, "joint_calibration.*sorted"),
        (_joint_short, "one value per calibration cell"),
        (_joint_without_margins, "joint calibration needs its margin calibration"),
        (_negative_tail, "novelty_tail must be a finite number"),
        (_alignment_unsorted, "prototype_calibration.*sorted"),
        (_alignment_not_cosines, "prototype_calibration.*values in \\[-1, 1\\]"),
        (_alignment_without_prototypes, "prototype_calibration.*needs the 'prototypes' tensor"),
        (_clarity_partial, "clarity classifier needs the tensors"),
        (_clarity_unsorted, "clarity classifier needs.*sorted calibration"),
        (_clarity_not_probabilities, "clarity classifier needs.*probabilities in \\[0, 1\\]"),
        (_clarity_one_class, "clarity classifier needs at least two classes"),
        (_clarity_wrong_features, "clarity_coef.*shape"),
        (_clarity_euclidean_bank, "clarity classifier reads the cosine bank"),
    ],
)
def test_inconsistent_model_file_is_refused(model_bytes, tmp_path, edit, message):
    with pytest.raises(schash.ModelFileError, match=message):
        _load_bytes(tmp_path, edited_model_file(model_bytes, edit))


@pytest.mark.parametrize("text", ["{not json", "[" * 100_000 + "]" * 100_000, '"a string"'])
def test_unreadable_metadata_is_refused(model_bytes, tmp_path, text):
    _, t = split_model_file(model_bytes)
    with pytest.raises(schash.ModelFileError, match="metadata"):
        _load_bytes(tmp_path, join_model_file(text, t))


def test_deeply_nested_field_is_refused(model_bytes, tmp_path):
    meta, t = split_model_file(model_bytes)
    meta["params"] = {"x": 1}
    text = json.dumps(meta).replace('"x": 1', '"x": ' + "[" * 50_000 + "]" * 50_000)
    with pytest.raises(schash.ModelFileError, match="metadata"):
        _load_bytes(tmp_path, join_model_file(text, t))


# -- item 4: property-based: a mutated file loads consistently or raises ModelFileError -------------

_json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5), st.sampled_from([0, 1, 2, 8, 64, 10**9, -1, "log", "counts", "batch", "rank"]),
)
_json = st.recursive(_json_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                                              max_size=3), max_leaves=8)


def _paths(obj, prefix=()):
    """Every path into a JSON value (dict keys and list positions)."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list) and len(obj) <= 8:
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _set(obj, path, value, delete):
    for key in path[:-1]:
        obj = obj[key]
    if delete and isinstance(obj, dict):
        del obj[path[-1]]
    else:
        obj[path[-1]] = value


@st.composite
def _mutation(draw, raw):
    kind = draw(st.sampled_from(["flip", "truncate", "meta", "meta", "tensor"]))
    if kind == "flip":
        data = bytearray(raw)
        for _ in range(draw(st.integers(1, 4))):
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] ^= draw(st.integers(1, 255))
        return bytes(data)
    if kind == "truncate":
        return raw[: draw(st.integers(0, len(raw) - 1))]
    meta, t = split_model_file(raw)
    if kind == "meta":
        paths = [p for p in _paths(meta) if p and p[0] not in ("history",)]
        path = draw(st.sampled_from(paths))
        _set(meta, path, draw(_json), draw(st.booleans()))
        try:
            return join_model_file(meta, t)
        except ValueError:  # NaN is not JSON for safetensors' writer either way
            return join_model_file(json.dumps(meta, allow_nan=True), t)
    name = draw(st.sampled_from(sorted(t)))
    a = t[name]
    change = draw(st.sampled_from(["drop", "rows", "dtype", "scale"]))
    if change == "drop":
        del t[name]
    elif change == "rows" and a.ndim:
        t[name] = np.ascontiguousarray(a[: draw(st.integers(0, max(0, a.shape[0] - 1)))])
    elif change == "dtype":
        t[name] = a.astype(np.float64 if a.dtype != np.float64 else np.float32)
    else:
        t[name] = (a * draw(st.sampled_from([-1, 2, 100]))).astype(a.dtype)
    return join_model_file(meta, t)


@settings(derandomize=True, max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_mutated_model_files_load_consistently_or_raise_model_file_error(model_bytes, query, tmp_path, data):
    mutated = data.draw(_mutation(model_bytes))
    try:
        model = _load_bytes(tmp_path, mutated)
    except schash.ModelFileError:
        return
    df = model.predict(query)  # a model that loads must be usable
    assert len(df) == query.n_obs
    assert set(df["label"].astype(str)) <= set(model.cell_types)
    model.predict(query, method="knn", k=min(5, len(model.ref_labels)))


# -- item 3: saving is atomic, never replaces without overwrite, keeps the umask mode -------------

def test_save_keeps_the_umask_mode_and_leaves_no_temp_file(synth_model, tmp_path):
    old = os.umask(0o027)
    try:
        synth_model.save(tmp_path / "m.schash")
    finally:
        os.umask(old)
    assert (tmp_path / "m.schash").stat().st_mode & 0o777 == 0o640
    assert os.listdir(tmp_path) == ["m.schash"]


def test_failed_save_leaves_the_old_file_and_no_temp(synth_model, tmp_path, monkeypatch):
    path = tmp_path / "m.schash"
    synth_model.save(path)
    before = path.read_bytes()

    def full_disk(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        _atomic.write_atomic(path, full_disk, overwrite=True)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["m.schash"]


def test_overwrite_false_never_replaces_a_file_that_appears_meanwhile(tmp_path):
    path = tmp_path / "out.txt"

    def writer(tmp):  # another process creates the target while this one writes
        path.write_text("theirs")
        with open(tmp, "w") as fh:
            fh.write("mine")

    with pytest.raises(FileExistsError, match="overwrite"):
        _atomic.write_atomic(path, writer, overwrite=False)
    assert path.read_text() == "theirs" and os.listdir(tmp_path) == ["out.txt"]


def test_stale_temp_files_are_removed_by_the_next_save(synth_model, tmp_path):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{_atomic.PREFIX}{dead.pid}-abcd1234-m.schash"
    stale.write_bytes(b"half a model")
    live = tmp_path / f"{_atomic.PREFIX}{os.getppid()}-efgh5678-m.schash"  # a running writer's: kept
    live.write_bytes(b"in progress")
    synth_model.save(tmp_path / "m.schash")
    assert sorted(os.listdir(tmp_path)) == sorted(["m.schash", live.name])


def test_load_reads_the_file_once(synth_model, tmp_path, monkeypatch):
    import builtins

    path = tmp_path / "m.schash"
    synth_model.save(path)
    opened = []
    real_open = builtins.open

    def counting_open(file, *args, **kwargs):
        if os.path.abspath(str(file)) == str(path):
            opened.append(file)
        return real_open(file, *args, **kwargs)

    import safetensors.numpy

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(safetensors.numpy, "load_file", lambda *a, **k: pytest.fail("opened the file again"))
    schash.load(path)
    assert len(opened) == 1
