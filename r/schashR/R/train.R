#' Train a schash model on a labelled reference
#'
#' Trains the deep-hashing network of the schash Python package on a reference
#' whose cell types are known.  Raw counts or log-normalised values are both
#' accepted (detected automatically).
#'
#' @param object A `Seurat` object, a `SingleCellExperiment`, or a genes x cells
#'   matrix / `dgCMatrix` with gene names as row names.
#' @param cell_type For objects, the name of the cell-metadata column holding the
#'   cell types (or a vector with one label per cell); for a matrix, the vector of labels.
#'   Label levels: several column names, coarsest first (`c("class", "subclass")`), or a
#'   data.frame / list with one vector of labels per level.  One model learns the finest
#'   level; every finer type must lie in one coarser type (an error names those that do not),
#'   and [schash_annotate()] then calls every level, in agreement.
#' @param batch Optional batches, given like `cell_type`: gene selection is then
#'   batch-aware, the typicality's expression axes are fitted without the batches'
#'   offsets within each cell type, and with `scale = "batch"` each batch is
#'   standardised on its own.
#' @param assay Seurat assay (default: the default assay) or SCE assay (default:
#'   `counts`, else `logcounts`).
#' @param layer Seurat layer / slot (`counts` or `data`; default: `counts` when present).
#'   Seurat v5 assays split by `split()` (layers `counts.A`, `counts.B`, ...) must be
#'   joined first (`object[["RNA"]] <- JoinLayers(object[["RNA"]])`): a layer holding only
#'   some of the cells is refused rather than leaving the other cells unannotated.
#' @param n_bits Length of the hash codes (a multiple of 8).
#' @param seed Random seed; the same seed on the same machine gives the same model.
#' @param reduction Optional reference map: the name of a 2-D dimensional reduction of the
#'   reference (Seurat `Reductions()`, e.g. `"umap"`; SingleCellExperiment `reducedDimNames()`),
#'   or for a matrix a cells x 2 matrix.  The model keeps it, and [schash_annotate()] then
#'   places every query cell on it at the mean position of its nearest reference cells (like
#'   scanpy's ingest), stored as the DimReduc / reducedDim `"ref.<name>"`.
#' @param ... Further arguments of Python's `schash.train()`, e.g. `n_top_genes`,
#'   `max_epochs`, `min_cells_per_type`, `rare_type_cells`, `transform`, `scale`, `device`.
#' @return A `schash_model`.
#' @examples
#' \dontrun{
#' model <- schash_train(pbmc_small, cell_type = "groups", max_epochs = 5)
#' }
#' @export
schash_train <- function(object, cell_type, batch = NULL, assay = NULL, layer = NULL,
                         n_bits = 64, seed = 0, reduction = NULL, ...) {
  UseMethod("schash_train")
}

#' @rdname schash_train
#' @export
schash_train.default <- function(object, cell_type, batch = NULL, assay = NULL, layer = NULL,
                                 n_bits = 64, seed = 0, reduction = NULL, ...) {
  if (!is.null(assay) || !is.null(layer)) {
    stop("assay= and layer= are for Seurat and SingleCellExperiment objects", call. = FALSE)
  }
  m <- as_dgc(object)
  if (is.character(reduction)) {
    stop("for a matrix, reduction must be a cells x 2 matrix of map positions, not a name", call. = FALSE)
  }
  train_matrix(m, cell_type, batch, n_bits, seed, ..., ref_map = map_coords(reduction, ncol(m), "map"))
}

#' @rdname schash_train
#' @export
schash_train.Seurat <- function(object, cell_type, batch = NULL, assay = NULL, layer = NULL,
                                n_bits = 64, seed = 0, reduction = NULL, ...) {
  need("SeuratObject", "for Seurat objects")
  n <- ncol(object)
  labels <- cell_type_values(object, cell_type, n)
  batches <- meta_values(object, batch, "batch", n)
  coords <- NULL
  if (!is.null(reduction)) {
    check_reduction(reduction, SeuratObject::Reductions(object), "Seurat object", "reductions")
    coords <- SeuratObject::Embeddings(object, reduction)[colnames(object), , drop = FALSE]
  }
  train_matrix(seurat_expr(object, assay, layer), labels, batches, n_bits, seed, ...,
               ref_map = map_coords(coords, n, reduction))
}

#' @rdname schash_train
#' @export
schash_train.SingleCellExperiment <- function(object, cell_type, batch = NULL, assay = NULL,
                                              layer = NULL, n_bits = 64, seed = 0, reduction = NULL, ...) {
  need("SummarizedExperiment", "for SingleCellExperiment objects")
  if (!is.null(layer)) stop("layer= is for Seurat objects; use assay=", call. = FALSE)
  n <- ncol(object)
  labels <- cell_type_values(object, cell_type, n)
  batches <- meta_values(object, batch, "batch", n)
  coords <- NULL
  if (!is.null(reduction)) {
    check_reduction(reduction, SingleCellExperiment::reducedDimNames(object), "SingleCellExperiment",
                    "reducedDims")
    coords <- SingleCellExperiment::reducedDim(object, reduction)
  }
  train_matrix(sce_expr(object, assay), labels, batches, n_bits, seed, ...,
               ref_map = map_coords(coords, n, reduction))
}

# Reference-map positions (cells x 2, numeric) with their name, checked; NULL for none.
map_coords <- function(coords, n, name) {
  if (is.null(coords)) return(NULL)
  coords <- as.matrix(coords)
  if (!is.numeric(coords) || nrow(coords) != n || ncol(coords) < 2) {
    stop("the reference map must be a numeric cells x 2 matrix (", n, " rows); got ",
         paste(dim(coords), collapse = " x "), call. = FALSE)
  }
  structure(unname(coords[, 1:2, drop = FALSE]), name = name %||% "map")
}

train_matrix <- function(m, labels, batches, n_bits, seed, ..., ref_map = NULL) {
  if (missing(labels) || is.null(labels)) stop("cell_type is required", call. = FALSE)
  labels <- if (is.list(labels)) level_list(labels, ncol(m)) else label_list(labels, ncol(m), "cell type")
  batches <- label_list(batches, ncol(m), "batch")
  check_available()
  x <- to_py_cells(m)
  args <- c(list(x$X, x$genes, x$cells, labels, batches = batches,
                 n_bits = as.integer(n_bits), seed = as.integer(seed)), list(...))
  if (!is.null(ref_map)) {
    args$ref_map <- matrix(as.double(ref_map), nrow(ref_map))
    args$ref_map_name <- attr(ref_map, "name")
  }
  py <- py_call(do.call(schash_bridge()$train_matrix, args))
  new_schash_model(py)
}

new_schash_model <- function(py) {
  info <- py_call(schash_bridge()$model_info(py))
  structure(list(py = py, info = info), class = "schash_model")
}

model_py <- function(model) {
  if (!inherits(model, "schash_model")) {
    stop("model must be a schash_model (from schash_train() or schash_load())", call. = FALSE)
  }
  if (reticulate::py_is_null_xptr(model$py)) {
    stop("this schash_model's Python object is gone (was it restored with readRDS()?); ",
         "save models with schash_save() and read them with schash_load()", call. = FALSE)
  }
  model$py
}

#' @export
print.schash_model <- function(x, ...) {
  cat(x$info$description, "\n", sep = "")  # Python's description of the model, one wording for both
  invisible(x)
}

#' Cell types and genes of a schash model
#'
#' @param model A `schash_model`.
#' @return `schash_cell_types()`: the cell types; `schash_genes()`: the genes the model uses.
#' @export
schash_cell_types <- function(model) unlist(model$info$cell_types)

#' @rdname schash_cell_types
#' @export
schash_genes <- function(model) unlist(model$info$genes)

#' Save and load schash models
#'
#' The file is the same single safetensors file that Python's `model.save()` writes
#' and `schash.load()` reads, so models move freely between R and Python.
#'
#' @param model A `schash_model`.
#' @param path File path.
#' @param overwrite Replace an existing file.
#' @return `schash_save()`: `path`, invisibly; `schash_load()`: a `schash_model`.
#' @export
schash_save <- function(model, path, overwrite = FALSE) {
  py <- model_py(model)
  py_call(schash_bridge()$save(py, path.expand(path), overwrite = isTRUE(overwrite)))
  invisible(path)
}

#' @rdname schash_save
#' @export
schash_load <- function(path) {
  if (!file.exists(path)) stop("no such file: ", path, call. = FALSE)
  check_available()
  new_schash_model(py_call(schash_bridge()$load(normalizePath(path))))
}

# A reduction name that the object holds, or an error naming the ones it has.
check_reduction <- function(reduction, have, what, kind) {
  if (!is.character(reduction) || length(reduction) != 1 || !reduction %in% have) {
    stop("reduction '", paste(reduction, collapse = ", "), "' is not in this ", what, "; its ", kind,
         " are: ", paste(have, collapse = ", "), call. = FALSE)
  }
  invisible(reduction)
}
