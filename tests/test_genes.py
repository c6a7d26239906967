"""Gene identifier mapping (schash._genes): a query named otherwise is renamed to the model's genes."""

import ast
import gzip
import io
import json
import os
import subprocess
import sys
import textwrap
from importlib import resources
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import schash
from schash import _genes
from schash._genes import STEPS, identifiers, map_query, species_of

CD3E, MS4A1, LYZ = "ENSG00000198851", "ENSG00000156738", "ENSG00000090382"
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def shipped(name):
    with (resources.files("schash") / "data" / name).open("rb") as fh:
        return pd.read_csv(fh, sep="\t", compression="gzip", dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def ortho():
    return shipped("human_mouse_orthologues.tsv.gz")


def counts_add_up(report):
    matched = sum(report[s] for s in STEPS)
    assert matched + report["missing"] == report["n_model_genes"]
    assert matched + report["unmatched_query_genes"] == report["n_query_genes"]
    json.dumps(report)  # plain types only: it goes to logs, R and model files
    assert "\n" not in report["summary"]


# --- shipped tables ---------------------------------------------------------------------------

def test_tables_ship_with_the_package_and_are_small():
    data = resources.files("schash") / "data"
    sizes = {n: (data / n).read_bytes() for n in ("human_genes.tsv.gz", "human_mouse_orthologues.tsv.gz")}
    assert sum(len(b) for b in sizes.values()) < 1_500_000
    genes = pd.read_csv(io.BytesIO(gzip.decompress(sizes["human_genes.tsv.gz"])), sep="\t", dtype=str)
    assert list(genes.columns) == ["ensembl_id", "symbol"] and len(genes) > 40_000
    assert genes.set_index("ensembl_id").symbol[CD3E] == "CD3E"
    assert genes.ensembl_id.str.fullmatch(r"ENSG\d{11}").all() and genes.ensembl_id.is_unique
    o = shipped("human_mouse_orthologues.tsv.gz")
    assert list(o.columns) == ["human", "mouse", "one_to_one"] and set(o.one_to_one) == {"0", "1"}
    assert ((o.human == "MS4A1") & (o.mouse == "Ms4a1") & (o.one_to_one == "1")).any()
    assert (data / "README.md").read_text().count("CellTypist") and "GENCODE" in (data / "README.md").read_text()


def test_wheel_declares_the_tables_as_package_data():
    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).resolve().parents[1]
    conf = tomllib.loads((root / "pyproject.toml").read_text())
    patterns = conf["tool"]["setuptools"]["package-data"]["schash"]
    data = root / "python" / "schash" / "data"
    shipped_files = {p.name for pat in patterns for p in (root / "python" / "schash").glob(pat)}
    assert {p.name for p in data.iterdir()} <= shipped_files


def test_module_imports_no_other_schash_module():
    tree = ast.parse(Path(_genes.__file__).read_text())
    local = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level}
    assert local <= {"_errors", "_logging"}
    assert "shared" not in Path(_genes.__file__).read_text()


def test_tables_are_read_from_the_package_never_from_shared(tmp_path):
    """In a fresh interpreter started elsewhere, every file opened lies outside ../shared and
    the tables come from the imported package."""
    script = textwrap.dedent(f"""
        import sys
        opened = []
        sys.addaudithook(lambda ev, a: opened.append(str(a[0])) if ev == "open" and a and a[0] else None)
        from schash import _genes
        names, report = _genes.map_query(["Cd3e", "ENSG00000156738.3", "lyz", "mt-Cytb"],
                                         ["CD3E", "MS4A1", "LYZ", "MT-CYB"], species="mouse")
        _genes.identifiers(["CD3E"])
        assert report["missing"] == 0 and report["orthologue_one_to_one"] == 1, report
        shared = {str(SHARED)!r}
        bad = [p for p in opened if p.startswith(shared) or "/shared/genes" in p]
        tables = [p for p in opened if p.endswith(".tsv.gz")]
        print(len(bad), len(tables), all(p.startswith(_genes.__file__.rsplit("/", 1)[0]) for p in tables))
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(schash.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "2", "True"]


# --- identifiers ------------------------------------------------------------------------------

def test_identifiers_of_a_mix_of_ids_and_symbols():
    got = identifiers(["CD3E", f"{MS4A1}.18", "lyz", "ENSG00000290826", "NOTAGENE1", "Y_RNA"])
    assert list(got.index) == ["CD3E", f"{MS4A1}.18", "lyz", "ENSG00000290826", "NOTAGENE1", "Y_RNA"]
    assert got.loc["CD3E"].tolist() == [CD3E, "CD3E"]
    assert got.loc[f"{MS4A1}.18"].tolist() == [MS4A1, "MS4A1"]  # version dropped, symbol from GENCODE
    assert got.loc["lyz"].tolist() == [LYZ, "LYZ"]  # any case, GENCODE's spelling
    assert got.loc["ENSG00000290826"].tolist() == ["ENSG00000290826", None]  # an ID without a symbol
    assert got.loc["NOTAGENE1"].tolist() == [None, "NOTAGENE1"]
    assert got.loc["Y_RNA", "ensembl_id"] == min(shipped("human_genes.tsv.gz").query("symbol == 'Y_RNA'").ensembl_id)
    assert got.loc["NOTAGENE1", "ensembl_id"] is None  # None, not NaN: stored in model files


def test_identifiers_keep_mouse_symbols_as_they_are():
    got = identifiers(["Cd3e", "Ms4a1", "ENSMUSG00000032093.5"])  # guessed mouse
    assert got.symbol.tolist() == ["Cd3e", "Ms4a1", None]
    assert got.ensembl_id.tolist() == [None, None, "ENSMUSG00000032093"]
    assert identifiers(["Cd3e"], species="human").loc["Cd3e"].tolist() == [CD3E, "CD3E"]


# --- species ----------------------------------------------------------------------------------

@pytest.mark.parametrize("genes, expected", [
    (["CD3E", "MS4A1", "LYZ", "C1orf112", "MT-CO1"], "human"),
    ([CD3E, f"{MS4A1}.18", LYZ], "human"),
    (["Cd3e", "Ms4a1", "Lyz2", "mt-Co1", "0610010K14Rik"], "mouse"),
    (["ENSMUSG00000032093", "ENSMUSG00000024673.9"], "mouse"),
    (["CD3E", "MS4A1", "Cd3e", "Ms4a1"], None),  # mixed
    (["cd3e", "ms4a1", "lyz"], None),  # all lower case: not the form of either
    (["ENSRNOG00000012345"], None),
    (["1", "2", "3"], None),
    ([], None),
])
def test_species_is_guessed_from_the_names(genes, expected):
    assert species_of(genes) == expected


def test_unknown_species_is_an_input_error_naming_the_choices():
    for call in (lambda: map_query(["CD3E"], ["CD3E"], species="rat"),
                 lambda: map_query(["CD3E"], ["CD3E"], model_species="Human"),
                 lambda: identifiers(["CD3E"], species="zebrafish")):
        with pytest.raises(schash.InputError, match="None.*'human' or 'mouse'"):
            call()


# --- map_query --------------------------------------------------------------------------------

def test_query_symbols_onto_model_ids_and_back():
    model = [f"{CD3E}.9", MS4A1, LYZ]
    rec = identifiers(model)
    names, rep = map_query(["LYZ", "MS4A1", "CD3E", "GAPDH"], model, rec.ensembl_id, rec.symbol)
    assert list(names) == [LYZ, MS4A1, f"{CD3E}.9", "GAPDH"]
    assert rep["by_id_mapping"] == 3 and rep["missing"] == 0
    names, rep = map_query([f"{LYZ}.4", CD3E, "ENSG00000111640"], ["CD3E", "MS4A1", "LYZ"])  # ids derived
    assert list(names) == ["LYZ", "CD3E", "ENSG00000111640"]
    assert rep["by_id_mapping"] == 2 and rep["missing"] == 1 and rep["examples"]["missing"] == ["MS4A1"]
    counts_add_up(rep)


def test_versions_are_stripped_on_both_sides():
    names, rep = map_query([f"{CD3E}.12", f"{MS4A1}.3", LYZ], [f"{CD3E}.9", MS4A1, LYZ])
    assert list(names) == [f"{CD3E}.9", MS4A1, LYZ]
    assert (rep["direct"], rep["version_stripped"]) == (1, 2)
    assert rep["examples"]["version_stripped"][0] == f"{CD3E}.12 -> {CD3E}.9"
    counts_add_up(rep)


def test_case_differences_are_matched_last_among_human_steps():
    names, rep = map_query(["cd3e", "Ms4a1", "LYZ"], ["CD3E", MS4A1, "LYZ"], species="human")
    assert list(names) == ["CD3E", MS4A1, "LYZ"]
    assert (rep["direct"], rep["by_case"]) == (1, 2)
    # the model's recorded symbols count too, in any case
    names, rep = map_query(["Cd3e"], ["gene_1"], ["ENSG_unknown"], ["CD3E"], species="human")
    assert list(names) == ["gene_1"] and rep["by_case"] == 1


def test_mouse_query_onto_human_genes_through_real_orthologues(ortho):
    one = ortho[(ortho.one_to_one == "1") & ortho.human.isin(identifiers(ortho.human).dropna().index)]
    one = one.iloc[::40].head(200)  # real one-to-one pairs spread over the table
    renamed = one[one.mouse.str.upper() != one.human.str.upper()]
    assert len(renamed) >= 5  # e.g. mt-Cytb / MT-CYB: only the table can match these
    human = one.human.tolist()
    rec = identifiers(human)
    model = rec.ensembl_id.tolist()  # the model is named by ID: orthologue, then ID table
    query = one.mouse.tolist()[::-1] + ["Gm99999x"]
    names, rep = map_query(query, model, rec.ensembl_id, rec.symbol)
    assert rep["species"] == "mouse"  # guessed from the names
    expected = dict(zip(one.mouse, rec.ensembl_id))
    assert [names[i] for i in range(len(query) - 1)] == [expected[m] for m in query[:-1]]
    assert names[-1] == "Gm99999x" and rep["missing"] == 0
    assert rep["orthologue_one_to_one"] == len(renamed)
    assert rep["by_case"] + rep["by_id_mapping"] == len(one) - len(renamed)  # same name: recorded symbol, any case
    assert "mouse-human orthologues" in rep["summary"]
    counts_add_up(rep)
    names, rep = map_query(["mt-Cytb", "Cd3e"], ["MT-CYB", "CD3E"], species="mouse")
    assert list(names) == ["MT-CYB", "CD3E"]


def test_orthologues_that_are_not_one_to_one_are_dropped_and_counted(ortho):
    partners = ortho[ortho.mouse == "Zfy1"]
    assert len(partners) > 1 and (partners.one_to_one == "0").all()
    model = partners.human.tolist() + ["CD3E"]
    names, rep = map_query(["Zfy1", "Cd3e", "Zfy2"], model, species="mouse")
    assert list(names) == ["Zfy1", "CD3E", "Zfy2"]  # never guessed among the partners
    assert rep["orthologue_one_to_many_dropped"] == 2 and rep["examples"]["orthologue_one_to_many_dropped"] == [
        "Zfy1", "Zfy2"]
    assert "without a one-to-one orthologue dropped" in rep["summary"]
    # human query onto a mouse model: the other direction of the same table
    names, rep = map_query(["ZNF837", "MT-CYB", f"{CD3E}.2"], ["Zfy1", "Zfy2", "mt-Cytb", "Cd3e"],
                           species="human", model_species="mouse")
    assert list(names) == ["ZNF837", "mt-Cytb", "Cd3e"]  # a human ID stands for its symbol
    assert (rep["orthologue_one_to_many_dropped"], rep["orthologue_one_to_one"], rep["by_case"]) == (1, 1, 1)
    counts_add_up(rep)


def test_competing_query_genes_are_resolved_the_same_way_every_time():
    a, b = f"{CD3E}.3", f"{CD3E}.7"
    for query in ([a, b], [b, a]):
        results = {tuple(map_query(query, [CD3E])[0]) for _ in range(3)}
        assert results == {(CD3E, query[1])}  # the first in query order wins, every time
    _, rep = map_query([a, b], [CD3E])
    assert rep["ambiguous_resolved"] == 1 and rep["examples"]["ambiguous_resolved"] == [b]
    # across steps the earlier step wins, whatever the order: ID table (c) before case (d)
    for query in (["cd3e", CD3E], [CD3E, "cd3e"]):
        names, rep = map_query(query, ["CD3E"], species="human")
        assert dict(zip(query, names)) == {CD3E: "CD3E", "cd3e": "cd3e"}
        assert rep["ambiguous_resolved"] == 1
    # one symbol with several IDs in the model: the first in model order
    ids = sorted(shipped("human_genes.tsv.gz").query("symbol == 'U6'").ensembl_id)[:3]
    names, rep = map_query(["U6"], ids[::-1])
    assert list(names) == [ids[-1]] and rep["ambiguous_resolved"] == 1
    counts_add_up(rep)


POOL = ["CD3E", CD3E, f"{CD3E}.5", "cd3e", "Cd3e", "MS4A1", MS4A1, "ms4a1", "LYZ", f"{LYZ}.1", "mt-Cytb",
        "MT-CYB", "Zfy1", "ZNF837", "GAPDH", "NOTAGENE", "U6", "ENSG00000290826.2"]


@settings(max_examples=60, deadline=None)
@given(query=st.lists(st.sampled_from(POOL), unique=True), model=st.lists(st.sampled_from(POOL), unique=True),
       species=st.sampled_from([None, "human", "mouse"]))
def test_new_names_are_unique_and_unmatched_genes_never_collide(query, model, species):
    names, rep = map_query(query, model, species=species)
    assert len(names) == len(query) and names.is_unique
    matched = [n for q, n in zip(query, names) if n in model]
    unmatched = [(q, n) for q, n in zip(query, names) if n not in model]
    assert all(q == n for q, n in unmatched)  # an unmatched gene keeps its own name...
    assert len(matched) == len(set(matched)) == len(query) - rep["unmatched_query_genes"]  # ...never a model's
    assert {q for q in query if q in model} <= {q for q, n in zip(query, names) if q == n}  # exact first
    counts_add_up(rep)


def test_bad_input_is_refused_with_the_fix():
    with pytest.raises(schash.InputError, match="more than once.*var_names_make_unique"):
        map_query(["CD3E", "CD3E"], ["CD3E"])
    with pytest.raises(schash.InputError, match="model_ids has 1 entries for 2 model genes"):
        map_query(["CD3E"], ["CD3E", "LYZ"], [CD3E], None)
    names, rep = map_query([], ["CD3E"])
    assert len(names) == 0 and rep["missing"] == 1


def test_thirty_thousand_query_genes_onto_two_thousand_mixed_model_genes():
    # (its speed is measured in bench/gene_mapping.py; timing does not belong in unit tests)
    genes = shipped("human_genes.tsv.gz").drop_duplicates("symbol").sample(30_000, random_state=0)
    model_part = genes.sample(2000, random_state=1)
    model = [f"{i}.3" for i in model_part.ensembl_id[:1000]] + model_part.symbol[1000:].tolist()
    rec = identifiers(model)
    query = genes.symbol.str.capitalize().tolist()  # a mouse-style query: steps (a) to (e) all run
    new, rep = map_query(query, model, rec.ensembl_id, rec.symbol)
    assert rep["missing"] < 100, rep["summary"]
    assert rep["by_id_mapping"] + rep["by_case"] > 1900 and new.is_unique
