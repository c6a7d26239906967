#' Gene saliency of an annotation
#'
#' @param object What [schash_annotate()] returned (Seurat, SingleCellExperiment or
#'   data.frame), or a genes x types saliency matrix.
#' @return The genes x cell types saliency matrix.
#' @export
schash_saliency <- function(object) {
  sal <- if (is.matrix(object)) {
    object
  } else if (inherits(object, "Seurat")) {
    SeuratObject::Misc(object, slot = "schash")$saliency
  } else if (methods::is(object, "SummarizedExperiment")) {
    S4Vectors::metadata(object)$schash$saliency
  } else {
    attr(object, "saliency")
  }
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
