# One part of what schash_annotate() stored: Misc(object, "schash") for Seurat,
# metadata(object)$schash for a SummarizedExperiment, an attribute of a data.frame.
.schash_result <- function(object, part) {
  if (inherits(object, "Seurat")) {
    SeuratObject::Misc(object, slot = "schash")[[part]]
  } else if (methods::is(object, "SummarizedExperiment")) {
    S4Vectors::metadata(object)$schash[[part]]
  } else {
    attr(object, part)
  }
}

#' Gene saliency of an annotation
#'
#' @param object What [schash_annotate()] returned (Seurat, SingleCellExperiment or
#'   data.frame), or a genes x types saliency matrix.
#' @return The genes x cell types saliency matrix.
#' @export
schash_saliency <- function(object) {
  sal <- if (is.matrix(object)) object else .schash_result(object, "saliency")
  if (is.null(sal)) {
    stop("no schash saliency found; run schash_annotate(..., saliency = TRUE) first", call. = FALSE)
  }
  sal
}

#' Most salient genes per cell type
#'
#' @param object See [schash_saliency()].
#' @param n Number of genes per cell type.
#' @return A data.frame with columns `cell_type`, `rank`, `gene`, `score`.
#' @export
schash_top_genes <- function(object, n = 10) {
  sal <- schash_saliency(object)
  rows <- lapply(colnames(sal), function(type) {
    s <- sort(sal[, type], decreasing = TRUE)
    s <- utils::head(s, n)
    data.frame(cell_type = type, rank = seq_along(s), gene = names(s), score = unname(s),
               stringsAsFactors = FALSE)
  })
  out <- do.call(rbind, rows)
  out$cell_type <- factor(out$cell_type, levels = colnames(sal))
  rownames(out) <- NULL
  out
}

#' Plot the most salient genes per cell type
#'
#' A dot plot (needs ggplot2): the top `n` genes of every cell type against all
#' cell types, coloured and sized by saliency.
#'
#' @param object See [schash_saliency()].
#' @param n Number of genes per cell type.
#' @return A ggplot.
#' @export
schash_plot_saliency <- function(object, n = 5) {
  need("ggplot2", "for schash_plot_saliency()")
  sal <- schash_saliency(object)
  top <- schash_top_genes(sal, n)
  genes <- unique(top$gene)
  long <- data.frame(
    gene = factor(rep(genes, times = ncol(sal)), levels = rev(genes)),
    cell_type = factor(rep(colnames(sal), each = length(genes)), levels = colnames(sal)),
    score = as.vector(sal[genes, , drop = FALSE])
  )
  long$size <- pmax(long$score, 0)
  ggplot2::ggplot(long, ggplot2::aes(x = cell_type, y = gene)) +
    ggplot2::geom_point(ggplot2::aes(size = size, colour = score)) +
    ggplot2::scale_colour_gradient2(low = "#2166ac", mid = "grey90", high = "#b2182b", name = "saliency") +
    ggplot2::scale_size_area(max_size = 6, guide = "none") +
    ggplot2::labs(x = "cell type", y = NULL, title = "schash gene saliency") +
    ggplot2::theme_bw() +
    ggplot2::theme(axis.text.x = ggplot2::element_text(angle = 45, hjust = 1))
}

#' Neighbour composition of an annotation
#'
#' The composition of each cell's nearest reference cells, stored by
#' `schash_annotate(..., neighbors = k)`.
#'
#' @param object What [schash_annotate()] returned (Seurat, SingleCellExperiment or data.frame).
#' @param by `"cell_type"`, or `"batch"` when the reference was trained with batches.
#' @return A cells x categories data.frame; each row sums to 1.
#' @export
schash_composition <- function(object, by = "cell_type") {
  comp <- .schash_result(object, "composition")
  if (is.null(comp)) {
    stop("no schash neighbour composition found; run schash_annotate(..., neighbors = 15) first",
         call. = FALSE)
  }
  if (!is.character(by) || length(by) != 1 || is.null(comp[[by]])) {
    stop("no '", paste(by, collapse = ", "), "' composition; available: ",
         paste(names(comp), collapse = ", "),
         if (identical(by, "batch")) " (the model's reference had no batches)", call. = FALSE)
  }
  comp[[by]]
}

#' Plot the neighbour composition per group
#'
#' A stacked bar chart (needs ggplot2): for each group of cells (by default the
#' predicted type), the mean composition of the cells' nearest reference cells,
#' by cell type or by batch.
#'
#' @param object See [schash_composition()].
#' @param by `"cell_type"` or `"batch"`.
#' @param group.by A cell-metadata column (a column of the data.frame for matrix
#'   input) to group the cells by.
#' @return A ggplot.
#' @export
schash_plot_composition <- function(object, by = "cell_type", group.by = "schash_label") {
  need("ggplot2", "for schash_plot_composition()")
  comp <- schash_composition(object, by)
  meta <- if (is.data.frame(object)) object else cell_meta(object)
  if (!is.character(group.by) || length(group.by) != 1 || !group.by %in% colnames(meta)) {
    stop("group.by column '", paste(group.by, collapse = ", "), "' is not in the cell metadata; ",
         "available columns: ", paste(colnames(meta), collapse = ", "), call. = FALSE)
  }
  groups <- meta[rownames(comp), group.by]
  groups <- if (is.factor(groups)) droplevels(groups) else factor(groups)
  keep <- !is.na(groups)
  m <- as.matrix(comp[keep, , drop = FALSE])
  mean_comp <- rowsum(m, groups[keep]) / as.vector(table(groups[keep]))
  cats <- colnames(comp)
  long <- data.frame(
    group = factor(rep(rownames(mean_comp), times = length(cats)), levels = rownames(mean_comp)),
    category = factor(rep(cats, each = nrow(mean_comp)), levels = cats),
    fraction = as.vector(mean_comp)
  )
  n <- as.vector(table(groups[keep]))
  lab <- data.frame(group = factor(rownames(mean_comp), levels = rownames(mean_comp)),
                    n = paste0("n=", n))
  what <- if (by == "cell_type") "cell type" else by
  ggplot2::ggplot(long, ggplot2::aes(x = group, y = fraction)) +
    ggplot2::geom_col(ggplot2::aes(fill = category), width = 0.8) +
    ggplot2::geom_text(data = lab, ggplot2::aes(x = group, y = 1.02, label = n),
                       vjust = 0, size = 3) +
    ggplot2::scale_y_continuous(limits = c(0, 1.08), breaks = seq(0, 1, 0.25)) +
    ggplot2::labs(x = group.by, y = "mean fraction of neighbours", fill = paste("neighbour", what),
                  title = "schash nearest-reference composition") +
    ggplot2::theme_bw() +
    ggplot2::theme(axis.text.x = ggplot2::element_text(angle = 45, hjust = 1))
}
