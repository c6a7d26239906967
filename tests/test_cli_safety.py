"""Issue 9, items 2, 5 and 7: the command line never destroys its inputs and every error is one line."""

import hashlib
import os

import anndata as ad
import pytest

import schash
from schash import _atomic
from schash._cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory, synth, synth_model):
    d = tmp_path_factory.mktemp("cli_safety")
    synth[:80].copy().write_h5ad(d / "q.h5ad")
    synth_model.save(d / "m.schash")
    return d


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _one_line_error(capsys, message):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("schash: error:"), err
    assert message in err[0], err[0]


def _annotate(files, *extra):
    return main(["annotate", str(files / "m.schash"), str(files / "q.h5ad"), "--no-progress", *extra])


# -- 2: outputs are checked against the inputs and never replace a file without --overwrite --------

@pytest.mark.parametrize("flag, target", [("--csv", "q.h5ad"), ("-o", "q.h5ad"), ("-o", "m.schash"),
                                          ("--csv", "m.schash")])
def test_an_output_that_is_an_input_is_refused(files, capsys, flag, target):
    before = {p: _digest(files / p) for p in ("q.h5ad", "m.schash")}
    assert _annotate(files, flag, str(files / target), "--overwrite") == 2
    _one_line_error(capsys, "is the input")
    assert before == {p: _digest(files / p) for p in ("q.h5ad", "m.schash")}


def test_a_link_to_an_input_is_refused(files, capsys, tmp_path):
    os.link(files / "q.h5ad", tmp_path / "hard.h5ad")
    os.symlink(files / "m.schash", tmp_path / "soft.schash")
    for target in ("hard.h5ad", "soft.schash"):
        assert _annotate(files, "-o", str(tmp_path / target), "--overwrite") == 2
        _one_line_error(capsys, "is the input")
    schash.load(files / "m.schash")


def test_existing_outputs_need_overwrite(files, capsys, tmp_path):
    out, csv = tmp_path / "out.h5ad", tmp_path / "out.csv"
    csv.write_text("mine")
    assert _annotate(files, "-o", str(out), "--csv", str(csv)) == 2
    _one_line_error(capsys, "--overwrite")
    assert csv.read_text() == "mine" and not out.exists()  # checked before anything was written
    assert _annotate(files, "-o", str(out), "--csv", str(csv), "--overwrite") == 0
    assert "schash_label" in ad.read_h5ad(out).obs and csv.read_text() != "mine"
    assert sorted(os.listdir(tmp_path)) == ["out.csv", "out.h5ad"]


def test_help_states_overwrite(capsys):
    with pytest.raises(SystemExit):
        main(["annotate", "--help"])
    assert "--overwrite" in capsys.readouterr().out


def test_a_failed_h5ad_write_keeps_the_old_output_and_no_temp(files, capsys, tmp_path, monkeypatch):
    out, csv = tmp_path / "out.h5ad", tmp_path / "out.csv"
    assert _annotate(files, "-o", str(out), "--csv", str(csv)) == 0
    before = _digest(out), _digest(csv), csv.stat().st_ino

    def disk_full(self, filename, *a, **k):
        with open(filename, "wb") as fh:
            fh.write(b"\x89HDF half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ad.AnnData, "write_h5ad", disk_full)
    assert _annotate(files, "-o", str(out), "--csv", str(csv), "--overwrite") == 2
    _one_line_error(capsys, "No space left")
    # neither file changed (the CSV is placed only after the .h5ad is complete), no temp file left
    assert (_digest(out), _digest(csv), csv.stat().st_ino) == before
    assert sorted(os.listdir(tmp_path)) == ["out.csv", "out.h5ad"]


# -- 5 and 7: bad arguments and every other error: one line, exit 2 ---------------------------------

@pytest.mark.parametrize(
    "extra, message",
    [
        (["-k", "0"], "k must be a whole number"),
        (["-k", "100000", "--method", "knn"], "reference database holds"),
        (["--chunk-size", "0"], "chunk_size must be"),
        (["-k", "abc"], "invalid int value"),
        (["--method", "vote"], "invalid choice"),
    ],
)
def test_bad_annotate_arguments_are_one_line(files, capsys, tmp_path, extra, message):
    assert _annotate(files, "--csv", str(tmp_path / "x.csv"), *extra) == 2
    _one_line_error(capsys, message)
    assert not os.listdir(tmp_path)


def test_train_checks_the_output_folder_before_training(files, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(schash, "train", lambda *a, **k: pytest.fail("trained before checking the output"))
    argv = ["train", str(files / "q.h5ad"), "--cell-type-key", "cell_type", "--no-progress"]
    assert main(argv + ["-o", str(tmp_path / "missing_dir" / "m.schash")]) == 2
    _one_line_error(capsys, "does not exist")
    assert main(argv + ["-o", str(files / "q.h5ad"), "--overwrite"]) == 2
    _one_line_error(capsys, "is the input")
    monkeypatch.undo()
    assert main(argv + ["-o", str(tmp_path / "m.schash"), "--n-top-genes", "0"]) == 2
    _one_line_error(capsys, "n_top_genes must be")
    assert main(argv + ["-o", str(tmp_path / "m.schash"), "--max-epochs", "0"]) == 2
    _one_line_error(capsys, "max_epochs must be")


def test_tampered_model_is_one_line(files, capsys, tmp_path):
    from conftest import edited_model_file
    from test_model_file_safety import _extra_type

    bad = tmp_path / "bad.schash"
    bad.write_bytes(edited_model_file((files / "m.schash").read_bytes(), _extra_type))
    assert main(["annotate", str(bad), str(files / "q.h5ad"), "--csv", str(tmp_path / "x.csv")]) == 2
    _one_line_error(capsys, "damaged or was edited")
    assert main(["info", str(bad)]) == 2
    _one_line_error(capsys, "damaged or was edited")


def test_unexpected_errors_are_one_line_too(files, capsys, tmp_path, monkeypatch):
    import schash._cli as cli

    def boom(path):
        raise RuntimeError("h5py could not\nread this")

    monkeypatch.setattr(cli, "_read_h5ad", boom)
    assert _annotate(files, "-o", str(tmp_path / "o.h5ad")) == 2
    _one_line_error(capsys, "RuntimeError: h5py could not read this")
    assert not os.listdir(tmp_path)


def test_stale_temp_files_of_a_killed_annotate_are_cleaned(files, tmp_path):
    out = tmp_path / "out.h5ad"
    stale = tmp_path / f"{_atomic.PREFIX}999999999-zzzz0000-out.h5ad"
    stale.write_bytes(b"half")
    assert _annotate(files, "-o", str(out)) == 0
    assert os.listdir(tmp_path) == ["out.h5ad"]
