"""Gene identifiers end to end: a model records both kinds, a query named otherwise is mapped."""

import numpy as np
import pandas as pd
import pytest
from conftest import make_counts

import schash
from schash._genes import identifiers


@pytest.fixture(scope="module")
def human(tmp_path_factory):
    """A reference in real human symbols (taken from the shipped table) and its model."""
    from importlib import resources

    with (resources.files("schash") / "data" / "human_genes.tsv.gz").open("rb") as fh:
        table = pd.read_csv(fh, sep="\t", compression="gzip", dtype=str, keep_default_na=False)
    with (resources.files("schash") / "data" / "human_mouse_orthologues.tsv.gz").open("rb") as fh:
        ortho = pd.read_csv(fh, sep="\t", compression="gzip", dtype=str, keep_default_na=False)
    one = ortho[(ortho.one_to_one == "1") | (ortho.one_to_one.str.lower() == "true")]
    # genes whose mouse symbol differs from the human one beyond case: only orthologues can match them
    one = one[one.human.str.upper() != one.mouse.str.upper()].drop_duplicates("human").drop_duplicates("mouse")
    one = one[one.human.isin(table.symbol)]
    adata = make_counts(n_cells=600, n_genes=300, seed=3)
    names = one.human.to_numpy()[:300]
    adata.var_names = pd.Index(names)
    model = schash.train(adata, cell_type_key="cell_type", max_epochs=8, progress=False)
    return adata, model, dict(zip(one.human, one.mouse, strict=True))


def test_the_model_records_both_identifier_kinds_and_its_species(human, tmp_path):
    adata, model, _ = human
    assert model.pre.species == "human"
    assert sum(i is not None for i in model.pre.gene_ids) == len(model.genes)
    assert model.pre.gene_symbols == list(model.genes)
    model.save(tmp_path / "m.schash")
    back = schash.load(tmp_path / "m.schash")
    assert back.pre.gene_ids == model.pre.gene_ids and back.pre.species == "human"


def test_a_query_in_versioned_ensembl_ids_gets_the_same_calls(human, tmp_path):
    adata, model, _ = human
    q = adata[:200].copy()
    base = model.predict(q)
    ids = identifiers(q.var_names)["ensembl_id"]
    q.var_names = pd.Index([f"{i}.12" for i in ids])
    schash.annotate(q, model)
    report = q.uns["schash"]["gene_mapping"]
    assert report["by_id_mapping"] + report["version_stripped"] == len(model.genes) and report["missing"] == 0
    assert (q.obs["schash_label"].to_numpy() == base["label"].to_numpy()).all()
    q.write_h5ad(tmp_path / "q.h5ad")  # the report can be stored


def test_lower_case_symbols_and_plain_ids_get_the_same_calls(human):
    adata, model, _ = human
    q = adata[:150].copy()
    base = model.predict(q)["label"].to_numpy()
    lower = q.copy()
    lower.var_names = pd.Index([g.lower() for g in q.var_names])
    assert (model.predict(lower)["label"].to_numpy() == base).all()
    ids = q.copy()
    ids.var_names = pd.Index(identifiers(q.var_names)["ensembl_id"])
    assert (model.predict(ids)["label"].to_numpy() == base).all()


def test_a_mouse_query_is_mapped_by_orthologues_only_when_asked(human):
    adata, model, to_mouse = human
    q = adata[:200].copy()
    base = model.predict(q)
    q.var_names = pd.Index([to_mouse[g] for g in q.var_names])
    mapped = model.predict(q, species="mouse")
    assert (mapped["label"].to_numpy() == base["label"].to_numpy()).all()
    q.var_names = pd.Index([to_mouse[g] for g in adata.var_names])  # (names differ beyond case)
    with pytest.raises(schash.GeneOverlapError, match="species='mouse'"):
        model.predict(q, species="human")


def test_a_model_saved_without_identifiers_still_maps_ids(human, tmp_path):
    adata, model, _ = human
    from dataclasses import replace

    old = replace(model, pre=replace(model.pre, gene_ids=None, gene_symbols=None, species=None))
    old.save(tmp_path / "old.schash")
    old = schash.load(tmp_path / "old.schash")
    assert old.pre.gene_ids is None
    q = adata[:100].copy()
    base = old.predict(q)
    q.var_names = pd.Index(identifiers(q.var_names)["ensembl_id"])
    np.testing.assert_array_equal(old.predict(q)["label"].to_numpy(), base["label"].to_numpy())


def test_identifiers_of_a_damaged_file_are_refused(human, tmp_path):
    import json
    import struct

    _, model, _ = human
    path = tmp_path / "m.schash"
    model.save(path)
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["schash"])
    meta["preprocessing"]["gene_ids"] = meta["preprocessing"]["gene_ids"][:-1]
    header["__metadata__"]["schash"] = json.dumps(meta)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + data[8 + n :])
    with pytest.raises(schash.ModelFileError, match="gene_ids"):
        schash.load(path)
