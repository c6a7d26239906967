"""R <-> Python: the schashR wrapper (driven through rpy2) against the Python API.

Skipped where rpy2 or R is absent.  schashR is used from the R library when installed,
else installed from r/schashR into a temporary library.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# R embedded by rpy2 runs without the GIL (cffi releases it around calls into R), and
# reticulate 1.28's finalizers release Python objects without taking it back: an R garbage
# collection that frees a reticulate object aborts the interpreter ("PyThreadState_Get: ...
# the GIL is released").  A large initial R heap (read when R starts, just below) keeps R from
# collecting during these short tests; whether a collection falls inside a test otherwise
# depends on how much R allocates.
os.environ.setdefault("R_NSIZE", "20000000")
os.environ.setdefault("R_VSIZE", "4000M")
ro = pytest.importorskip("rpy2.robjects")
pytest.importorskip("anndata2ri")

import schash  # noqa: E402
from schash import _hamming  # noqa: E402
from schash.convert import anndata_to_sce, sce_to_anndata, seurat_to_anndata  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(max_epochs=5, min_cells_per_type=5, seed=0)


def _r_has(pkg: str) -> bool:
    return bool(ro.r(f'isTRUE(requireNamespace("{pkg}", quietly = TRUE))')[0])


@pytest.fixture(scope="module")
def r(tmp_path_factory):
    for pkg in ("SeuratObject", "SingleCellExperiment"):
        if not _r_has(pkg):
            pytest.skip(f"R package {pkg} is not installed")
    os.environ["SCHASH_PYTHON"] = sys.executable
    if not _r_has("schashR"):
        lib = tmp_path_factory.mktemp("rlib")
        if shutil.which("R") is None:
            pytest.skip("R is not on PATH to install schashR")
        subprocess.run(["R", "CMD", "INSTALL", "--no-docs", f"--library={lib}", str(ROOT / "r" / "schashR")],
                       check=True, capture_output=True)
        ro.r(f'.libPaths(c("{lib}", .libPaths()))')
    ro.r("""
        suppressMessages({library(schashR); library(SingleCellExperiment)})
        data("pbmc_small", package = "SeuratObject")
        pbmc <- suppressMessages(suppressWarnings(SeuratObject::UpdateSeuratObject(pbmc_small)))
        counts <- SeuratObject::GetAssayData(pbmc, slot = "counts")
        sce <- SingleCellExperiment(assays = list(counts = counts), colData = S4Vectors::DataFrame(pbmc[[]]))
    """)
    yield ro.r
    # rpy2 ends R at exit (atexit), and R's exit finalizers then release reticulate's
    # Python objects without a Python thread state, which aborts the interpreter
    # (reticulate 1.28 has no GIL handling; an R gc() here aborts the same way).  The OS
    # reclaims the embedded R at exit, so skip that hook.
    import atexit

    from rpy2.rinterface_lib import embedded

    atexit.unregister(embedded.endr)


@pytest.fixture(scope="module")
def adata(r):
    return sce_to_anndata(r["sce"])


@pytest.fixture(scope="module")
def r_model(r):
    r("""r_model <- schash_train(sce, cell_type = "RNA_snn_res.1", max_epochs = 5, min_cells_per_type = 5,
                                 seed = 0)""")
    return r["r_model"]


def _r_codes(r, expr: str) -> np.ndarray:
    return np.asarray(r(expr), dtype=np.int64)


def test_converters_round_trip_sce(r, adata):
    assert adata.shape == (80, 230)
    assert adata.uns["X_name"] == "counts"
    assert list(adata.obs_names) == list(r("colnames(sce)"))
    assert list(adata.var_names) == list(r("rownames(sce)"))
    r.assign("back", anndata_to_sce(adata))
    assert r('identical(assayNames(back), "counts")')[0]
    assert r('isTRUE(all.equal(as.matrix(assay(back, "counts")), as.matrix(counts), check.attributes = FALSE))')[0]
    assert r("identical(colnames(back), colnames(sce)) && identical(rownames(back), rownames(sce))")[0]
    assert r("identical(as.character(back$RNA_snn_res.1), as.character(sce$RNA_snn_res.1))")[0]


def test_seurat_to_anndata(r):
    if not _r_has("Seurat"):
        pytest.skip("R package Seurat is not installed")
    ad = seurat_to_anndata(r["pbmc"])
    assert ad.shape == (80, 230)
    assert "RNA_snn_res.1" in ad.obs


def test_r_and_python_give_identical_codes_and_labels(r, adata, r_model):
    py_model = schash.train(adata, cell_type_key="RNA_snn_res.1", progress=False, **FAST)
    pred = py_model.predict(adata)
    codes = _hamming.unpack(py_model.encode(adata), py_model.n_bits).astype(np.int64)
    r("ann <- schash_annotate(sce, r_model, saliency = FALSE)")
    r_codes = _r_codes(r, 'reducedDim(ann, "schash")')
    np.testing.assert_array_equal(r_codes, codes)
    assert list(r("as.character(ann$schash_label)")) == list(pred["label"].astype(str))
    assert list(r("as.character(ann$schash_pruned_label)")) == list(pred["pruned_label"].astype(str))
    np.testing.assert_allclose(np.asarray(r("ann$schash_confidence")), pred["confidence"].to_numpy())
    # the reference databases match too
    r_ref = np.asarray(r("r_model$py$ref_codes"))
    np.testing.assert_array_equal(r_ref, py_model.ref_codes)


def test_r_saved_model_loads_in_python(r, adata, r_model, tmp_path):
    path = tmp_path / "r_model.schash"
    r(f'schash_save(r_model, "{path}")')
    m = schash.load(path)
    assert m.cell_types == ["0", "1", "2"]
    r("ann <- schash_annotate(sce, r_model, saliency = FALSE)")
    assert list(m.predict(adata)["label"].astype(str)) == list(r("as.character(ann$schash_label)"))


def test_python_saved_model_loads_in_r(r, adata, tmp_path):
    py_model = schash.train(adata, cell_type_key="groups", progress=False, **FAST)
    path = tmp_path / "py_model.schash"
    py_model.save(path)
    r(f'm <- schash_load("{path}"); ann <- schash_annotate(counts, m, saliency = FALSE)')
    assert list(r("schash_cell_types(m)")) == ["g1", "g2"]
    assert list(r("as.character(ann$schash_label)")) == list(py_model.predict(adata)["label"].astype(str))


def test_r_scores_composition_and_query_batches_match_python(r, adata, r_model, tmp_path):
    """R's schash_annotate(batch=, neighbors=) and schash_scores() against Python's annotate()."""
    if not r('exists("schash_scores", envir = asNamespace("schashR"))')[0]:
        pytest.skip("the installed schashR predates schash_scores(); reinstall r/schashR")
    path = tmp_path / "m.schash"
    r(f'schash_save(r_model, "{path}")')
    m = schash.load(path)
    r('ann <- schash_annotate(sce, r_model, saliency = FALSE, neighbors = 10, batch = "groups")')
    a = adata.copy()
    schash.annotate(a, m, neighbors=10, batch_key="groups")
    assert list(r("as.character(ann$schash_label)")) == list(a.obs["schash_label"].astype(str))
    np.testing.assert_allclose(np.asarray(r("schash_scores(ann)")), a.obsm["schash_scores"].to_numpy())
    np.testing.assert_allclose(np.asarray(r('as.matrix(schash_composition(ann, "cell_type"))')),
                               a.obsm["schash_cell_type_composition"].to_numpy())
