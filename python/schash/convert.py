"""SingleCellExperiment / Seurat (R) <-> AnnData, through rpy2 and anndata2ri.

Needs the ``r`` extra: ``pip install "schash-annotate[r]"`` (rpy2, anndata2ri) and an R
with SingleCellExperiment (and Seurat for :func:`seurat_to_anndata`).  Conversions use a
scoped ``localconverter(default_converter + anndata2ri.converter)``, so no global rpy2
conversion rules are changed.

>>> from schash.convert import sce_to_anndata, anndata_to_sce
>>> adata = sce_to_anndata(rpy2.robjects.r["sce"])
"""

from __future__ import annotations

from contextlib import contextmanager

from ._errors import InputError


def _modules():
    try:
        import anndata2ri
        import rpy2.robjects as ro
        from rpy2.robjects.conversion import localconverter
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "schash.convert needs rpy2 and anndata2ri (and R): pip install 'schash-annotate[r]'"
        ) from e
    return ro, anndata2ri, localconverter


@contextmanager
def _converter():
    ro, anndata2ri, localconverter = _modules()
    with localconverter(ro.default_converter + anndata2ri.converter) as cv:
        yield ro, cv


def _rclass(robj) -> list[str]:
    try:
        return list(robj.rclass)
    except AttributeError:
        return []


X_NAME = "X_name"  # uns key: the name of the SCE assay that became X


def sce_to_anndata(robj):
    """An R SingleCellExperiment (rpy2 object) as AnnData: the first assay to ``X`` (its
    name kept in ``uns["X_name"]``), the others to layers, colData to ``obs``, rowData to
    ``var``, reducedDims to ``obsm``."""
    if not any(c in ("SingleCellExperiment", "SummarizedExperiment") for c in _rclass(robj)):
        raise InputError(f"expected an R SingleCellExperiment, got an R object of class {_rclass(robj)}")
    ro, _, _ = _modules()
    names = ro.r("function(x) as.character(SummarizedExperiment::assayNames(x))")(robj)
    with _converter() as (ro, cv):
        adata = cv.rpy2py(robj)
    if len(names):
        adata.uns[X_NAME] = str(names[0])
    return adata


def anndata_to_sce(adata):
    """An AnnData as an R SingleCellExperiment (rpy2 object); ``X`` becomes the assay
    named by ``uns["X_name"]`` (from :func:`sce_to_anndata`), else ``"X"``."""
    if type(adata).__name__ != "AnnData":
        raise InputError(f"expected an AnnData, got {type(adata).__name__}")
    x_name = adata.uns.get(X_NAME)
    with _converter() as (ro, cv):
        sce = cv.py2rpy(adata)
    ro, _, _ = _modules()
    rename = ro.r(
        "function(x, name) { n <- SummarizedExperiment::assayNames(x); "
        "if (!is.null(name) && 'X' %in% n && !name %in% n) { n[n == 'X'] <- name; "
        "SummarizedExperiment::assayNames(x) <- n }; "
        "md <- S4Vectors::metadata(x); md[['X_name']] <- NULL; S4Vectors::metadata(x) <- md; x }"
    )
    return rename(sce, ro.NULL if x_name is None else str(x_name))


def seurat_to_anndata(robj, assay: str | None = None):
    """An R Seurat object as AnnData, via ``Seurat::as.SingleCellExperiment``."""
    if "Seurat" not in _rclass(robj):
        raise InputError(f"expected an R Seurat object, got an R object of class {_rclass(robj)}")
    ro, _, _ = _modules()
    as_sce = ro.r(
        "function(x, assay) { if (!requireNamespace('Seurat', quietly = TRUE)) "
        "stop('seurat_to_anndata needs the R package Seurat'); "
        "if (is.null(assay)) Seurat::as.SingleCellExperiment(x) "
        "else Seurat::as.SingleCellExperiment(x, assay = assay) }"
    )
    sce = as_sce(robj, ro.NULL if assay is None else assay)
    return sce_to_anndata(sce)
