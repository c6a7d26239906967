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

# A layer of a Seurat object with SeuratObject 4 (slot=) or 5 (layer=; slot= is defunct there).
assay_data <- function(p, layer = "counts", assay = "RNA") {
  if (utils::packageVersion("SeuratObject") >= "5.0.0") {
    SeuratObject::GetAssayData(p, layer = layer, assay = assay)
  } else {
    SeuratObject::GetAssayData(p, slot = layer, assay = assay)
  }
}

skip_if_no_seurat_v5 <- function() {
  skip_if_no_seurat()
  skip_if(utils::packageVersion("SeuratObject") < "5.0.0",
          "SeuratObject < 5: no Assay5 (scripts/test.sh runs these against SeuratObject 5)")
}

# pbmc_small rebuilt with a Seurat v5 assay (Assay5): counts and data layers, or data only.
pbmc_v5 <- function(data_only = FALSE) {
  skip_if_no_seurat_v5()
  p <- pbmc()
  counts <- methods::as(assay_data(p, "counts"), "dgCMatrix")
  data <- methods::as(assay_data(p, "data"), "dgCMatrix")
  a <- if (data_only) {
    SeuratObject::CreateAssay5Object(data = data)
  } else {
    SeuratObject::CreateAssay5Object(counts = counts, data = data)
  }
  # a data-only assay makes CreateSeuratObject() warn that it finds no counts layer
  suppressWarnings(SeuratObject::CreateSeuratObject(a, meta.data = p[[]]))
}

pbmc_sce <- function() {
  skip_if_not_installed("SingleCellExperiment")
  p <- pbmc()
  counts <- assay_data(p, "counts")
  SingleCellExperiment::SingleCellExperiment(
    assays = list(counts = counts),
    colData = S4Vectors::DataFrame(p[[]])
  )
}

# pbmc_small's counts and its clusters (RNA_snn_res.1) with two cells relabelled "rare": a type of 2 cells.
counts_with_rare_type <- function() {
  p <- pbmc()
  labels <- as.character(p$RNA_snn_res.1)
  labels[1:2] <- "rare"
  list(counts = assay_data(p, "counts"), labels = labels)
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
