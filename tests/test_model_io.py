import json
import pickle
import struct

import numpy as np
import pytest

import schash


def test_round_trip_gives_identical_codes_and_calls(synth_model, synth, tmp_path):
    path = tmp_path / "m.schash"
    synth_model.save(path)
    loaded = schash.load(path)
    np.testing.assert_array_equal(loaded.encode(synth), synth_model.encode(synth))
    np.testing.assert_array_equal(loaded.ref_codes, synth_model.ref_codes)
    assert loaded.cell_types == synth_model.cell_types and loaded.threshold == synth_model.threshold
    assert loaded.novelty_alpha == synth_model.novelty_alpha
    for name in ("calibration", "margin_calibration", "joint_calibration"):  # the typicality's calibrations
        np.testing.assert_array_equal(getattr(loaded.novelty, name), getattr(synth_model.novelty, name))
    a, b = loaded.predict(synth), synth_model.predict(synth)
    for col in ["label", "distance", "delta_next"]:
        assert a[col].equals(b[col]), col
    # typicality is a rank among calibration distances; BLAS may round the last bit differently
    # for arrays at other memory alignments, which can move a cell by one calibration step
    np.testing.assert_allclose(a["typicality"], b["typicality"], atol=0.02)
    assert (a["pruned_label"] == b["pruned_label"]).mean() >= 0.99


def test_save_refuses_to_overwrite(synth_model, tmp_path):
    path = tmp_path / "m.schash"
    synth_model.save(path)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        synth_model.save(path)
    synth_model.save(path, overwrite=True)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    for name, dump in [("p.schash", lambda f, o: pickle.dump(o, f))]:
        path = tmp_path / name
        with open(path, "wb") as fh:
            dump(fh, _Payload(marker))
        with pytest.raises(schash.ModelFileError, match="pickle"):
            schash.load(path)
    torch = pytest.importorskip("torch")
    path = tmp_path / "t.pt"
    torch.save({"x": _Payload(marker)}, path)
    with pytest.raises(schash.ModelFileError, match="torch.save"):
        schash.load(path)
    assert not marker.exists()


def test_truncated_and_foreign_files(synth_model, tmp_path):
    path = tmp_path / "m.schash"
    synth_model.save(path)
    data = path.read_bytes()
    (tmp_path / "cut.schash").write_bytes(data[: len(data) // 2])
    with pytest.raises(schash.ModelFileError, match="truncated"):
        schash.load(tmp_path / "cut.schash")
    (tmp_path / "tiny").write_bytes(b"abc")
    with pytest.raises(schash.ModelFileError, match="not a schash model"):
        schash.load(tmp_path / "tiny")
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(3, np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(schash.ModelFileError, match="no schash metadata"):
        schash.load(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError):
        schash.load(tmp_path / "missing.schash")


def _rewrite_meta(src, dst, **changes):
    raw = src.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["schash"])
    meta.update(changes)
    header["__metadata__"]["schash"] = json.dumps(meta)
    new = json.dumps(header).encode()
    new += b" " * ((8 - len(new) % 8) % 8)
    dst.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])


def test_other_format_version_is_a_clear_error(synth_model, tmp_path):
    path = tmp_path / "m.schash"
    synth_model.save(path)
    _rewrite_meta(path, tmp_path / "v99.schash", format_version=99, schash_version="9.9")
    with pytest.raises(schash.ModelFileError, match="format version 99.*schash 9.9.*reads version 1"):
        schash.load(tmp_path / "v99.schash")
