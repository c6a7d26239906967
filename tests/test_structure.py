"""The package's shape: no import cycles, small modules, one input layer behind every entry point."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import schash

PKG = Path(schash.__file__).parent


def _imports(path: Path) -> set[str]:
    """The package modules a module imports, anywhere in it (function-level imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.add(node.module.split(".")[0])
            else:  # from . import _args, pl
                out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("schash."))
    return out


def _graph() -> dict[str, set[str]]:
    mods = {p.stem for p in PKG.glob("*.py") if p.stem != "__init__"}
    return {m: _imports(PKG / f"{m}.py") & mods for m in mods}


def _cycle(graph):
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path + [node, nxt]
            if nxt not in state:
                found = visit(nxt, path + [node])
                if found:
                    return found
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [])
            if found:
                return found
    return None


def test_no_import_cycles():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()))


def test_the_cycle_check_finds_a_cycle():  # the check itself can fail
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) is not None
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_module_is_long():
    long = {p.name: n for p in PKG.glob("*.py") if (n := len(p.read_text().splitlines())) > 420}
    assert not long, long


def test_model_file_io_knows_nothing_of_the_model():
    assert "_model" not in _imports(PKG / "_io.py") and "SchashModel" not in (PKG / "_io.py").read_text()


@pytest.fixture(scope="module")
def four_forms(synth, tmp_path_factory):
    """The same query as a sparse matrix with gene names, an AnnData, a backed AnnData and a path."""
    import anndata as ad

    q = synth[:150].copy()
    path = tmp_path_factory.mktemp("forms") / "q.h5ad"
    q.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    forms = {"matrix": (q.X, {"genes": list(q.var_names)}), "anndata": (q, {}), "backed": (backed, {}),
             "path": (str(path), {})}
    yield q, forms
    backed.file.close()


def test_every_entry_point_reads_every_form_alike(synth_model, four_forms):
    q, forms = four_forms
    base = {}
    for name, (data, kw) in forms.items():
        out = {
            "codes": synth_model.encode(data, **kw),
            "predict": synth_model.predict(data, **kw).reset_index(drop=True),
            "neighbors": synth_model.neighbors(data, k=5, **kw),
            "composition": synth_model.composition(data, by="cell_type", k=7, **kw).reset_index(drop=True),
            "saliency": synth_model.saliency(data, chunk_size=64, **kw),
        }
        if not base:
            base = out
            continue
        np.testing.assert_array_equal(out["codes"], base["codes"], err_msg=name)
        assert out["predict"].equals(base["predict"]), name
        for a, b in zip(out["neighbors"], base["neighbors"], strict=True):
            np.testing.assert_array_equal(a, b, err_msg=name)
        assert out["composition"].equals(base["composition"]), name
        np.testing.assert_allclose(out["saliency"].to_numpy(), base["saliency"].to_numpy(), rtol=1e-6, atol=1e-7)


def test_saliency_does_not_depend_on_the_chunk_size(synth_model, four_forms):
    q, _ = four_forms
    a = synth_model.saliency(q, chunk_size=7)
    b = synth_model.saliency(q, chunk_size=4096)
    assert list(a.columns) == list(b.columns)
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-5, atol=1e-6)


def test_add_reference_and_training_accept_a_path(synth, tmp_path):
    path = tmp_path / "ref.h5ad"
    synth.write_h5ad(path)
    from_path = schash.train(str(path), cell_type_key="cell_type", max_epochs=2, progress=False)
    in_memory = schash.train(synth, cell_type_key="cell_type", max_epochs=2, progress=False)
    np.testing.assert_array_equal(from_path.ref_codes, in_memory.ref_codes)
    n = len(from_path.ref_labels)
    from_path.add_reference(str(path), cell_type_key="cell_type")
    assert len(from_path.ref_labels) == 2 * n
    np.testing.assert_array_equal(from_path.ref_codes[n:], from_path.ref_codes[:n])
