# Tests need Python with schash: set SCHASH_PYTHON (e.g. to the repository's .venv/bin/python).
skip_if_no_schash <- function() {
  skip_if_not(schash_available(), "the schash Python package is not available (set SCHASH_PYTHON)")
}

skip_if_no_seurat <- function() skip_if_not_installed("SeuratObject")

pbmc <- function() {
  skip_if_no_seurat()
  e <- new.env()
  utils::data("pbmc_small", package = "SeuratObject", envir = e)
  suppressMessages(suppressWarnings(SeuratObject::UpdateSeuratObject(e$pbmc_small)))
}

pbmc_sce <- function() {
  skip_if_not_installed("SingleCellExperiment")
  p <- pbmc()
  counts <- SeuratObject::GetAssayData(p, slot = "counts", assay = "RNA")
  SingleCellExperiment::SingleCellExperiment(
    assays = list(counts = counts),
    colData = S4Vectors::DataFrame(p[[]])
  )
}

# Small and fast: few epochs; pbmc_small has 80 cells in 3 clusters (RNA_snn_res.1).
fast_args <- list(max_epochs = 5, min_cells_per_type = 5)

.cache <- new.env()
pbmc_model <- function() {
  if (is.null(.cache$model) || reticulate::py_is_null_xptr(.cache$model$py)) {
    .cache$model <- do.call(schash_train, c(list(pbmc(), cell_type = "RNA_snn_res.1"), fast_args))
  }
  .cache$model
}
