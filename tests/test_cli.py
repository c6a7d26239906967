import anndata as ad
import pandas as pd
import pytest

import schash
from schash._cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory, synth):
    d = tmp_path_factory.mktemp("cli")
    synth.write_h5ad(d / "ref.h5ad")
    return d


def test_train_annotate_info(files, capsys):
    model = files / "m.schash"
    assert main(["train", str(files / "ref.h5ad"), "--cell-type-key", "cell_type", "--batch-key", "batch",
                 "--max-epochs", "5", "-o", str(model), "--no-progress"]) == 0
    assert model.exists()
    out = files / "out.h5ad"
    assert main(["annotate", str(model), str(files / "ref.h5ad"), "-o", str(out), "--csv",
                 str(files / "out.csv"), "--no-progress"]) == 0
    res = ad.read_h5ad(out)
    assert "schash_pruned_label" in res.obs and "X_schash" in res.obsm
    table = pd.read_csv(files / "out.csv", index_col=0)
    assert list(table.index) == list(res.obs_names) and "schash_confidence" in table
    assert main(["info", str(model)]) == 0
    info = capsys.readouterr().out
    assert "4 cell types" in info and "novelty_alpha=0.018" in info  # the default that --novelty-alpha overrides
    # an existing model is not overwritten silently
    assert main(["train", str(files / "ref.h5ad"), "--cell-type-key", "cell_type", "-o", str(model)]) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "{d}/ref.h5ad", "--cell-type-key", "nope", "-o", "{d}/x.schash"], "'nope' is not in obs"),
        (["annotate", "{d}/ref.h5ad", "{d}/ref.h5ad", "-o", "{d}/y.h5ad"], "not a schash model file"),
        (["info", "{d}/missing.schash"], "no model file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(files, capsys, argv, message):
    assert main([a.format(d=files) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any(line.startswith("schash: error:") and message in line for line in err)
    assert not any("Traceback" in line for line in err)


def test_train_rare_type_cells(files, tmp_path):
    model = tmp_path / "rare.schash"
    assert main(["train", str(files / "ref.h5ad"), "--cell-type-key", "cell_type", "--max-epochs", "2",
                 "--rare-type-cells", "1000", "-o", str(model), "--no-progress"]) == 0
    m = schash.load(model)
    assert m.params["rare_type_cells"] == 1000 and len(m.rare.rare) == len(m.cell_types)  # every type is rare


def test_annotate_novelty_alpha(files, synth_model, synth, capsys):
    model = files / "alpha.schash"
    synth_model.save(model)
    for alpha in ("0.3", None):
        out = files / f"alpha_{alpha}.csv"
        argv = ["annotate", str(model), str(files / "ref.h5ad"), "--csv", str(out), "--no-progress"]
        assert main(argv + (["--novelty-alpha", alpha] if alpha else [])) == 0
        got = pd.read_csv(out, index_col=0)["schash_pruned_label"].astype(str).to_numpy()
        want = synth_model.predict(synth, novelty_alpha=float(alpha) if alpha else None)["pruned_label"]
        assert (got == want.astype(str).to_numpy()).all()
    assert (pd.read_csv(files / "alpha_0.3.csv")["schash_pruned_label"] == "Unassigned").sum() > \
        (pd.read_csv(files / "alpha_None.csv")["schash_pruned_label"] == "Unassigned").sum()
    capsys.readouterr()
    assert main(["annotate", str(model), str(files / "ref.h5ad"), "--csv", str(files / "bad.csv"),
                 "--novelty-alpha", "2"]) == 2
    assert "novelty_alpha must be a number in [0, 1], got 2.0" in capsys.readouterr().err
    assert not (files / "bad.csv").exists()
