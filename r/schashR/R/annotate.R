#' Annotate cells with a schash model
#'
#' Each cell is hashed and given the cell type whose prototype (the mean of the network's
#' last hidden layer over the type's reference cells) is nearest to its own, or with
#' `method = "anchor"` the type of the nearest anchor, or with `method = "knn"` the
#' majority of its nearest reference cells.
#'
#' Added per cell: `schash_label`, `schash_pruned_label` (factor; `"Unassigned"`
#' where the call is not trusted), `schash_distance` (Hamming distance to the
#' anchor), `schash_delta_next`, `schash_typicality`, `schash_confidence` and, with
#' `saliency = TRUE`, `schash_top_genes` (the cell's most salient genes).
#' For a `Seurat` object these go to the cell metadata, the hash codes (as a
#' cells x n_bits matrix of -1/+1) to the DimReduc `"schash"` (key `schash_`),
#' the per-type scores to the assay `"schash_scores"` (types x cells, in `data`;
#' `_` in type names becomes `-`, as Seurat requires) and the per-type gene saliency
#' (genes x types) to `Misc(object, "schash")$saliency`.
#' For a `SingleCellExperiment`: `colData` (the scores as the matrix column
#' `schash_scores`), `reducedDim(object, "schash")` and
#' `metadata(object)$schash$saliency`.  A matrix gives a data.frame with the same
#' columns, with attributes `"codes"`, `"scores"` and `"saliency"`.
#'
#' When the model keeps a reference map (`schash_train(..., reduction = "umap")`), each
#' cell is also placed on it, at the mean position of its nearest reference cells (like
#' scanpy's ingest; neighbours in the PCA of the reference's standardised expression),
#' as the DimReduc (Seurat) / reducedDim (SingleCellExperiment) `"ref.umap"` or the
#' attribute `"ref_map"` (matrix).
#'
#' The per-type score of a cell is `1 - d / n_bits`, with `d` the Hamming distance
#' between its code and the type's anchor: 1 on the anchor, about 0.5 for unrelated
#' codes.  The nearest-anchor call (`method = "anchor"`) is a best-scoring type; the
#' default call by type prototype may be another (its `schash_distance` is to its own
#' type's anchor).  See [schash_scores()] and
#' [schash_plot_scores()].
#'
#' With `neighbors = k`, each cell's `k` nearest reference cells by Hamming
#' distance are looked up (in the same encoding pass) and their composition is
#' stored: by cell type and, when the model was trained with `batch`, by batch
#' (cells x categories data.frames whose rows sum to 1), in
#' `Misc(object, "schash")$composition$cell_type` / `$batch` (Seurat),
#' `metadata(object)$schash$composition` (SingleCellExperiment) or the attribute
#' `"composition"` (matrix).  With batches, the column `schash_neighbor_batch` (the
#' majority batch among the neighbours) is added too.  See [schash_composition()]
#' and [schash_plot_composition()].
#'
#' With `over_clustering`, majority voting as CellTypist does it: each cell also gets
#' `schash_majority_label` (the most frequent pruned call in its cluster; `"Unassigned"`
#' only where that is the strict majority) and `schash_majority_share` (its share of the
#' cluster).  Give the name of a cell-metadata column of clusters (`"seurat_clusters"`), a
#' vector with one cluster per cell, or `TRUE` to over-cluster the cells by their hash codes
#' first (also when the named column does not exist, with a message; the clusters are
#' added as `schash_over_clustering`).
#'
#' A model trained on label levels (`schash_train(x, c("class", "subclass"))`) adds, for each
#' level, `schash_label_<level>`, `schash_pruned_label_<level>` and `schash_confidence_<level>`
#' (the coarser calls are the parents of the finest call, so the levels always agree; a coarse
#' call stays trusted where the code lies clearly nearer its parent's types than any other's,
#' e.g. between two sibling types), and `schash_resolved_label` / `schash_resolved_level`: the
#' call at the finest trusted level and the name of that level (`"Unassigned"` where none is).
#' `schash_label` and `schash_pruned_label` remain the finest level's calls.
#'
#' With `batch`, the query's batches (for example samples or donors) are scaled
#' each on its own before encoding, as Python's `annotate(batch_key=)` does; use it
#' when the query mixes batches, as the reference's batches were in [schash_train()].
#'
#' @param object A `Seurat` object, a `SingleCellExperiment`, or a genes x cells
#'   matrix / `dgCMatrix` with gene names as row names.
#' @param model A `schash_model`.
#' @param batch `NULL`, or the query's batches: the name of a cell-metadata column
#'   (Seurat, SingleCellExperiment) or a vector with one value per cell.
#' @param ... `assay`, `layer` as in [schash_train()]; `k` (neighbours for `"knn"`);
#'   `species` (`"mouse"` for a mouse query on a human model, or the reverse: genes are
#'   mapped by one-to-one orthologues); `novelty_alpha` (calls whose `schash_typicality` is
#'   below it are `"Unassigned"`; default the model's own, 0.018 unless set at training: raise
#'   it, e.g. to 0.05, to catch more cells of types the reference lacks, at the cost of more
#'   known-type cells; only `schash_pruned_label` changes).  Genes named otherwise than the
#'   model's (Ensembl IDs vs symbols, version suffixes, case) are mapped automatically; how they
#'   matched is in
#'   `Misc(object, "schash")$gene_mapping` (Seurat) / `metadata(object)$schash$gene_mapping`.
#' @param method `"auto"` (the default: `"prototype"` where the model keeps type
#'   prototypes, else `"anchor"`), `"prototype"`, `"anchor"` or `"knn"`.
#' @param saliency Compute per-type and per-cell gene saliency.
#' @param neighbors `NULL`, or the number of nearest reference cells whose
#'   composition is stored for each cell.
#' @param over_clustering `NULL`, a cell-metadata column of clusters, a vector of
#'   clusters, or `TRUE` (clusters computed from the codes): majority voting over them.
#' @return The annotated object (a data.frame for a matrix).
#' @export
schash_annotate <- function(object, model, ..., batch = NULL, method = "auto", saliency = TRUE,
                            neighbors = NULL, over_clustering = NULL) {
  UseMethod("schash_annotate")
}

#' @rdname schash_annotate
#' @export
schash_annotate.default <- function(object, model, ..., batch = NULL, method = "auto",
                                    saliency = TRUE, neighbors = NULL, over_clustering = NULL) {
  m <- as_dgc(object)
  if (is.character(batch) && length(batch) == 1 && ncol(m) != 1) {
    stop("for a matrix, batch must be a vector with one value per cell (", ncol(m), "), ",
         "not a column name", call. = FALSE)
  }
  if (is.character(over_clustering) && length(over_clustering) == 1 && ncol(m) != 1) {
    stop("for a matrix, over_clustering must be a vector with one cluster per cell (", ncol(m), ") or TRUE, ",
         "not a column name", call. = FALSE)
  }
  res <- annotate_matrix(m, model, batch = batch, method = method, saliency = saliency,
                         neighbors = neighbors, clusters = over_clustering, ...)
  out <- res$table
  attr(out, "codes") <- res$codes
  attr(out, "scores") <- res$scores
  attr(out, "ref_map") <- res$ref_map
  attr(out, "saliency") <- res$saliency
  attr(out, "composition") <- res$composition
  out
}

#' @rdname schash_annotate
#' @param assay,layer Which expression to use, as in [schash_train()].
#' @export
schash_annotate.Seurat <- function(object, model, ..., batch = NULL, assay = NULL, layer = NULL,
                                   method = "auto", saliency = TRUE, neighbors = NULL,
                                   over_clustering = NULL) {
  need("SeuratObject", "for Seurat objects")
  assay <- assay %||% SeuratObject::DefaultAssay(object)
  batch <- meta_values(object, batch, "batch", ncol(object))
  clusters <- cluster_values(object, over_clustering)
  res <- annotate_matrix(seurat_expr(object, assay, layer), model, batch = batch, method = method,
                         saliency = saliency, neighbors = neighbors, clusters = clusters, ...)
  object <- SeuratObject::AddMetaData(object, res$table)
  object[["schash"]] <- SeuratObject::CreateDimReducObject(
    embeddings = res$codes, key = "schash_", assay = assay, misc = list(method = method)
  )
  SeuratObject::Misc(object, slot = "schash") <- res$misc
  if (!is.null(res$ref_map)) {
    object[[res$ref_map_name]] <- SeuratObject::CreateDimReducObject(
      embeddings = res$ref_map, key = colnames_key(res$ref_map), assay = assay,
      misc = list(schash = "query cells placed on the reference map")
    )
  }
  # (SeuratObject 5 warns that this data-only assay has no counts layer: none is meant)
  suppressWarnings(object[["schash_scores"]] <- scores_assay(res$scores))
  object
}

colnames_key <- function(m) sub("[0-9]+$", "", colnames(m)[1])

# The per-type scores as a (v4-style) assay: types x cells in the data slot.  Seurat does
# not allow "_" in feature names; schash_scores() restores the type names.
scores_assay <- function(scores) {
  m <- t(scores)
  rownames(m) <- gsub("_", "-", rownames(m), fixed = TRUE)
  a <- suppressWarnings(SeuratObject::CreateAssayObject(data = m))
  SeuratObject::Key(a) <- "schashscores_"
  a
}

#' @rdname schash_annotate
#' @export
schash_annotate.SingleCellExperiment <- function(object, model, ..., batch = NULL, assay = NULL,
                                                 method = "auto", saliency = TRUE,
                                                 neighbors = NULL, over_clustering = NULL) {
  need("SingleCellExperiment", "for SingleCellExperiment objects")
  batch <- meta_values(object, batch, "batch", ncol(object))
  clusters <- cluster_values(object, over_clustering)
  res <- annotate_matrix(sce_expr(object, assay), model, batch = batch, method = method,
                         saliency = saliency, neighbors = neighbors, clusters = clusters, ...)
  cd <- SummarizedExperiment::colData(object)
  for (col in names(res$table)) cd[[col]] <- res$table[[col]]
  cd$schash_scores <- res$scores
  SummarizedExperiment::colData(object) <- cd
  SingleCellExperiment::reducedDim(object, "schash") <- res$codes
  if (!is.null(res$ref_map)) SingleCellExperiment::reducedDim(object, res$ref_map_name) <- res$ref_map
  md <- S4Vectors::metadata(object)
  md$schash <- res$misc
  S4Vectors::metadata(object) <- md
  object
}

annotate_matrix <- function(m, model, batch = NULL, method = "auto", saliency = TRUE, k = 15,
                            neighbors = NULL, clusters = NULL, species = NULL, novelty_alpha = NULL, ...) {
  extra <- list(...)
  if (length(extra)) {
    stop("unused argument(s): ", paste(names(extra), collapse = ", "), call. = FALSE)
  }
  method <- match.arg(method, c("auto", "anchor", "knn", "prototype"))
  neighbors <- check_neighbors(neighbors)
  if (!is.null(novelty_alpha) && !(is.numeric(novelty_alpha) && length(novelty_alpha) == 1 &&
                                   isTRUE(novelty_alpha >= 0 && novelty_alpha <= 1))) {
    stop("novelty_alpha must be NULL (the model's own) or one number between 0 and 1, e.g. novelty_alpha = 0.05",
         call. = FALSE)
  }
  batch <- label_list(batch, ncol(m), "batch")
  if (isTRUE(clusters)) {
    clusters <- "codes"
  } else if (!is.null(clusters)) {
    if (isFALSE(clusters)) stop("over_clustering must be NULL, TRUE, a column name or a vector", call. = FALSE)
    clusters <- label_list(clusters, ncol(m), "over_clustering cluster")
  }
  py <- model_py(model)
  x <- to_py_cells(m)
  res <- py_call(schash_bridge()$annotate_matrix(py, x$X, x$genes, x$cells, method = method,
                                                 k = as.integer(k), saliency = isTRUE(saliency),
                                                 neighbors = neighbors, batches = batch,
                                                 clusters = clusters, species = species,
                                                 novelty_alpha = novelty_alpha))
  gm <- res$gene_mapping
  if (!is.null(gm$by_id_mapping)) message("schash: ", gm$summary)  # genes were matched otherwise than by name
  table <- py_table(res$table, x$cells, res$levels, res$factors)
  if ("schash_neighbor_batch" %in% names(table)) {
    table$schash_neighbor_batch <- factor(as.character(table$schash_neighbor_batch),
                                          levels = unlist(res$batch_levels))
  }
  comp <- NULL
  if (!is.null(res$composition)) {
    comp <- lapply(res$composition, function(d) {
      df <- as.data.frame(py_matrix(d), check.names = FALSE)
      rownames(df) <- rownames(table)
      df
    })
  }
  codes <- as.matrix(res$codes)
  storage.mode(codes) <- "double"
  dimnames(codes) <- list(rownames(table), paste0("schash_", seq_len(ncol(codes))))
  sal <- py_matrix(res$saliency)
  scores <- py_matrix(res$scores)
  rownames(scores) <- rownames(table)
  misc <- list(saliency = sal, score_types = colnames(scores), method = method, batch = !is.null(batch),
               n_genes_matched = res$n_genes_matched, n_genes_model = model$info$n_genes, gene_mapping = gm)
  if (!is.null(comp)) {
    misc$composition <- comp
    misc$neighbors <- neighbors
  }
  ref_map <- NULL
  ref_map_name <- NULL
  if (!is.null(res$ref_map)) {
    ref_map_name <- paste0("ref.", res$ref_map$name)
    key <- paste0("ref", gsub("[^A-Za-z0-9]", "", res$ref_map$name), "_")
    ref_map <- as.matrix(res$ref_map$values)
    storage.mode(ref_map) <- "double"
    dimnames(ref_map) <- list(rownames(table), paste0(key, 1:2))
  }
  list(table = table, codes = codes, saliency = sal, composition = comp, scores = scores, misc = misc,
       ref_map = ref_map, ref_map_name = ref_map_name)
}

# Clusters for majority voting: a metadata column's values, a vector, or TRUE (from the codes).
# A name that is not a column means "compute them", as in Python's annotate(over_clustering=).
cluster_values <- function(object, over_clustering) {
  if (is.character(over_clustering) && length(over_clustering) == 1 && ncol(object) != 1) {
    meta <- cell_meta(object)
    if (!over_clustering %in% colnames(meta)) {
      message("no cell-metadata column '", over_clustering, "': over-clustering the cells by their schash codes")
      return(TRUE)
    }
    return(meta[[over_clustering]])
  }
  over_clustering
}

check_neighbors <- function(neighbors) {
  if (is.null(neighbors)) return(NULL)
  if (!is.numeric(neighbors) || length(neighbors) != 1 || is.na(neighbors) ||
      neighbors < 1 || neighbors != round(neighbors)) {
    stop("neighbors must be NULL or one positive whole number", call. = FALSE)
  }
  as.integer(neighbors)
}
