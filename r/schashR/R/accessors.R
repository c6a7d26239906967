# Expression matrices (genes x cells, dgCMatrix) and cell metadata from Seurat
# and SingleCellExperiment objects.

`%||%` <- function(a, b) if (is.null(a)) b else a

# A genes x cells dgCMatrix from a matrix, Matrix or DelayedArray, keeping dimnames.
as_dgc <- function(m, what = "the expression matrix") {
  if (inherits(m, "dgCMatrix")) return(m)
  if (is.data.frame(m)) m <- as.matrix(m)
  if (!is.matrix(m) && !methods::is(m, "Matrix")) {
    m <- tryCatch(methods::as(m, "dgCMatrix"), error = function(e) {
      stop(what, " must be a matrix or sparse Matrix (genes x cells), not ", class(m)[1], call. = FALSE)
    })
    return(m)
  }
  if (is.matrix(m) && !is.numeric(m)) {
    stop(what, " must be numeric, not ", typeof(m), call. = FALSE)
  }
  m <- methods::as(m, "CsparseMatrix")
  m <- methods::as(m, "generalMatrix")
  methods::as(m, "dMatrix")
}

is_seurat_v5_assay <- function(a) inherits(a, "Assay5")

# SeuratObject >= 5 functions, looked up at run time so that this package also
# installs and checks against SeuratObject 4.
seurat_v5_api <- function() {
  "LayerData" %in% getNamespaceExports("SeuratObject")
}
seurat_fun <- function(name) getExportedValue("SeuratObject", name)

# Expression of a Seurat object: v5 Assay5 layers via LayerData(layer=), v4 Assay via
# GetAssayData(slot=).  Default: counts when present (or split into counts.*), else data.
# A layer holding only some cells (one of a split() assay) is refused.
seurat_expr <- function(object, assay = NULL, layer = NULL) {
  assay <- assay %||% SeuratObject::DefaultAssay(object)
  if (!assay %in% SeuratObject::Assays(object)) {
    stop("assay '", assay, "' is not in this Seurat object; its assays are: ",
         paste(SeuratObject::Assays(object), collapse = ", "), call. = FALSE)
  }
  a <- object[[assay]]
  if (is_seurat_v5_assay(a)) {
    if (!seurat_v5_api()) {
      stop("this object has a Seurat v5 assay; install SeuratObject >= 5", call. = FALSE)
    }
    layers <- seurat_fun("Layers")(a)
    split_of <- function(l) grep(paste0("^", l, "\\."), layers, value = TRUE)
    if (is.null(layer)) {
      # counts when present (also when split by split()), else data
      layer <- if ("counts" %in% layers || length(split_of("counts"))) "counts" else "data"
    }
    if (!layer %in% layers) {
      split <- split_of(layer)
      if (length(split)) {
        stop("layer '", layer, "' of assay '", assay, "' is split into ", length(split),
             " layers (", paste(utils::head(split, 3), collapse = ", "),
             if (length(split) > 3) ", ...", "); ",
             "join them first: object[['", assay, "']] <- JoinLayers(object[['", assay, "']])",
             call. = FALSE)
      }
      stop("layer '", layer, "' is not in assay '", assay, "'; its layers are: ",
           paste(layers, collapse = ", "), call. = FALSE)
    }
    m <- seurat_fun("LayerData")(object, assay = assay, layer = layer)
    if (ncol(m) != ncol(object)) {
      # one layer of a split() assay: the other cells would silently stay unannotated
      stop("layer '", layer, "' holds ", ncol(m), " of the object's ", ncol(object),
           " cells; schash uses all cells of the object: join the layers ",
           "(object[['", assay, "']] <- JoinLayers(object[['", assay, "']])) or keep only ",
           "those cells (subset(object, cells = colnames(LayerData(object, layer = '", layer,
           "'))))", call. = FALSE)
    }
  } else {
    slots <- c("counts", "data", "scale.data")
    get <- if (seurat_v5_api()) {
      function(l) seurat_fun("LayerData")(object, assay = assay, layer = l)
    } else {
      function(l) SeuratObject::GetAssayData(object, slot = l, assay = assay)
    }
    if (is.null(layer)) {
      counts <- get("counts")
      layer <- if (prod(dim(counts)) > 0) "counts" else "data"
    }
    if (!layer %in% slots) {
      stop("layer '", layer, "' is not one of ", paste(slots, collapse = ", "),
           " (a Seurat v4 assay)", call. = FALSE)
    }
    if (layer == "scale.data") {
      stop("schash needs counts or log-normalised data, not scale.data", call. = FALSE)
    }
    m <- get(layer)
    if (prod(dim(m)) == 0) {
      stop("the '", layer, "' slot of assay '", assay, "' is empty", call. = FALSE)
    }
  }
  m <- as_dgc(m)
  # JoinLayers() after split() orders cells by layer: put them back in the object's order,
  # which the metadata (cell types, batches) follows
  if (!is.null(colnames(m)) && !identical(colnames(m), colnames(object)) &&
      setequal(colnames(m), colnames(object))) {
    m <- m[, colnames(object), drop = FALSE]
  }
  m
}

# Expression of a SingleCellExperiment: counts preferred, logcounts accepted.
sce_expr <- function(object, assay = NULL) {
  have <- SummarizedExperiment::assayNames(object)
  if (is.null(assay)) {
    assay <- intersect(c("counts", "logcounts"), have)[1]
    if (is.na(assay)) {
      stop("the SingleCellExperiment has neither a 'counts' nor a 'logcounts' assay ",
           "(it has: ", paste(have, collapse = ", "), "); pass assay=", call. = FALSE)
    }
  } else if (!assay %in% have) {
    stop("assay '", assay, "' is not in this SingleCellExperiment; its assays are: ",
         paste(have, collapse = ", "), call. = FALSE)
  }
  m <- SummarizedExperiment::assay(object, assay, withDimnames = TRUE)
  as_dgc(m)
}

cell_meta <- function(object) {
  if (inherits(object, "Seurat")) return(object[[]])
  as.data.frame(SummarizedExperiment::colData(object))
}

# The cell types for schash_train(): a metadata column, several (label levels, coarsest
# first: a named list of their values), or the labels themselves (a vector, data.frame or list).
cell_type_values <- function(object, cell_type, n) {
  if (is.character(cell_type) && length(cell_type) > 1 && length(cell_type) != n) {
    have <- colnames(cell_meta(object))
    missing <- setdiff(cell_type, have)
    if (length(missing)) {
      stop("cell type column(s) ", paste0("'", missing, "'", collapse = ", "), " not in the cell metadata; ",
           "available columns: ", paste(have, collapse = ", "), call. = FALSE)
    }
    return(stats::setNames(lapply(cell_type, function(k) cell_meta(object)[[k]]), cell_type))
  }
  if (is.list(cell_type)) return(cell_type)
  meta_values(object, cell_type, "cell type", n)
}

# A per-cell vector from a metadata column name, or the vector itself.
meta_values <- function(object, key, what, n) {
  if (is.null(key)) return(NULL)
  if (is.character(key) && length(key) == 1 && n != 1) {
    meta <- cell_meta(object)
    if (!key %in% colnames(meta)) {
      stop(what, " column '", key, "' is not in the cell metadata; available columns: ",
           paste(colnames(meta), collapse = ", "), call. = FALSE)
    }
    return(meta[[key]])
  }
  key
}

need <- function(pkg, why) {
  if (!requireNamespace(pkg, quietly = TRUE)) {
    stop("package '", pkg, "' is needed ", why, call. = FALSE)
  }
}
