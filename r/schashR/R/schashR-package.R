#' schashR: deep-hashing cell-type annotation for Seurat and Bioconductor
#'
#' An R interface to the schash Python package. Point it at a Python with schash
#' installed with the `SCHASH_PYTHON` environment variable, or run [schash_install()].
#'
#' @keywords internal
"_PACKAGE"

utils::globalVariables(c("cell_type", "gene", "size", "score", "group", "fraction", "category", "n",
                         "cell", "predicted", "truth"))
