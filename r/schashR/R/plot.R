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
#' @return A data.frame with columns `group`, `rank`, `gene`, `score` (the same columns as
#'   Python's `schash.top_genes()`).
#' @export
schash_top_genes <- function(object, n = 10) {
  sal <- schash_saliency(object)
  rows <- lapply(colnames(sal), function(type) {
    s <- sort(sal[, type], decreasing = TRUE)
    s <- utils::head(s, n)
    data.frame(group = type, rank = seq_along(s), gene = names(s), score = unname(s),
               stringsAsFactors = FALSE)
  })
  out <- do.call(rbind, rows)
  out$group <- factor(out$group, levels = colnames(sal))
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
#' by cell type or by batch.  Groups are horizontal bars labelled with their number
#' of cells, so many types stay readable; cell types keep the colours of
#' [schash_colors()] in every plot.
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
  n <- as.vector(table(groups[keep]))
  mean_comp <- rowsum(m, groups[keep]) / n
  cats <- colnames(comp)
  glab <- paste0(rownames(mean_comp), "  (", n, ")")
  long <- data.frame(
    group = factor(rep(glab, times = length(cats)), levels = rev(glab)),
    category = factor(rep(cats, each = nrow(mean_comp)), levels = cats),
    fraction = as.vector(mean_comp)
  )
  long <- long[long$fraction > 0, , drop = FALSE]
  what <- if (by == "cell_type") "cell type" else by
  cols <- schash_colors(cats)[cats]
  ggplot2::ggplot(long, ggplot2::aes(x = fraction, y = group)) +
    ggplot2::geom_col(ggplot2::aes(fill = category), width = 0.8,
                      position = ggplot2::position_stack(reverse = TRUE)) +
    ggplot2::scale_fill_manual(values = cols, breaks = cats, drop = FALSE) +
    ggplot2::scale_x_continuous(limits = c(0, 1.0001), breaks = seq(0, 1, 0.25), expand = c(0, 0)) +
    ggplot2::labs(y = paste0(group.by, " (cells)"), x = "mean fraction of nearest reference cells",
                  fill = paste("neighbour", what), title = "schash nearest-reference composition") +
    ggplot2::theme_bw() +
    ggplot2::guides(fill = ggplot2::guide_legend(ncol = if (length(cats) > 15) 2 else 1))
}

#' Per-type scores of an annotation
#'
#' The score of a cell for a cell type is `1 - d / n_bits`, `d` being the Hamming
#' distance between the cell's code and the type's anchor: 1 on the anchor, about 0.5
#' for unrelated codes.  The nearest-anchor call (`method = "anchor"`) is a best-scoring
#' type; the default call by type prototype may be another.  Stored by
#' [schash_annotate()] as the assay `"schash_scores"` (Seurat), the `colData` matrix
#' column `schash_scores` (SingleCellExperiment) or the attribute `"scores"`
#' (data.frame); Python writes the same to `obsm["schash_scores"]`.
#'
#' @param object What [schash_annotate()] returned.
#' @return A cells x cell types matrix (`NA` for cells without expression).
#' @export
schash_scores <- function(object) {
  sc <- NULL
  if (inherits(object, "Seurat")) {
    if ("schash_scores" %in% SeuratObject::Assays(object)) {
      a <- object[["schash_scores"]]
      m <- if (seurat_v5_api()) seurat_fun("LayerData")(a, layer = "data") else
        SeuratObject::GetAssayData(a, slot = "data")
      sc <- t(as.matrix(m))
      types <- SeuratObject::Misc(object, slot = "schash")$score_types
      if (length(types) == ncol(sc)) colnames(sc) <- types
    }
  } else if (methods::is(object, "SummarizedExperiment")) {
    sc <- SummarizedExperiment::colData(object)$schash_scores
    if (!is.null(sc)) rownames(sc) <- colnames(object)
  } else {
    sc <- attr(object, "scores")
  }
  if (is.null(sc)) stop("no schash scores found; run schash_annotate() first", call. = FALSE)
  sc
}

#' Colours for cell types
#'
#' One distinct colour per cell type of a model (in the model's order) and grey for
#' `"Unassigned"`, named, so that every plot (label, pruned label, composition,
#' scores; `Seurat::DimPlot(..., cols = schash_colors(x))`) gives a type the same colour.
#'
#' @param x A `schash_model`, what [schash_annotate()] returned, or a character vector
#'   of cell types.
#' @return A named character vector of colours.
#' @export
schash_colors <- function(x) {
  types <- if (inherits(x, "schash_model")) {
    schash_cell_types(x)
  } else if (is.character(x) || is.factor(x)) {
    unique(as.character(x))
  } else {
    lv <- levels(cell_meta_or_df(x)$schash_label)
    if (is.null(lv)) stop("no schash_label column; run schash_annotate() first", call. = FALSE)
    lv
  }
  types <- setdiff(types, "Unassigned")
  n <- length(types)
  pal <- if (n <= 8) {
    grDevices::palette.colors(8, "Okabe-Ito")[c(2:8, 1)][seq_len(n)]
  } else if (n <= 36) {
    grDevices::palette.colors(36, "Polychrome 36")[seq_len(n)]
  } else {
    grDevices::hcl.colors(n, "Dark 3")
  }
  stats::setNames(c(unname(pal), "grey75"), c(types, "Unassigned"))
}

cell_meta_or_df <- function(object) if (is.data.frame(object)) object else cell_meta(object)

#' Heatmap of the per-type scores
#'
#' Like SingleR's `plotScoreHeatmap()`: cell types (rows) against cells (columns),
#' the cells grouped by their label (or any metadata column) and ordered by score
#' within a group.  Needs ggplot2.
#'
#' @param object What [schash_annotate()] returned.
#' @param group.by Column to group the cells by.
#' @param normalize Rescale each cell's scores to 0-1 (as SingleR does), so the
#'   contrast between types shows for every cell.
#' @param max_cells At most this many cells are drawn (a random subset, per group in
#'   proportion), to keep large objects quick.
#' @return A ggplot.
#' @export
schash_plot_scores <- function(object, group.by = "schash_label", normalize = TRUE,
                               max_cells = 5000) {
  need("ggplot2", "for schash_plot_scores()")
  sc <- schash_scores(object)
  meta <- cell_meta_or_df(object)
  check_column(meta, group.by)
  groups <- meta[rownames(sc), group.by]
  groups <- if (is.factor(groups)) droplevels(groups) else factor(groups)
  keep <- which(!is.na(groups) & stats::complete.cases(sc))
  if (length(keep) > max_cells) keep <- sort(sample(keep, max_cells))
  sc <- sc[keep, , drop = FALSE]
  groups <- groups[keep]
  if (normalize) {
    lo <- apply(sc, 1, min)
    span <- apply(sc, 1, max) - lo
    sc <- (sc - lo) / ifelse(span > 0, span, 1)
  }
  ord <- order(groups, -apply(sc, 1, max))
  cells <- rownames(sc)[ord]
  long <- data.frame(
    cell = factor(rep(rownames(sc), times = ncol(sc)), levels = cells),
    cell_type = factor(rep(colnames(sc), each = nrow(sc)), levels = rev(colnames(sc))),
    score = as.vector(sc),
    group = rep(groups, times = ncol(sc))
  )
  ggplot2::ggplot(long, ggplot2::aes(x = cell, y = cell_type, fill = score)) +
    ggplot2::geom_raster() +
    ggplot2::facet_grid(~group, scales = "free_x", space = "free_x") +
    ggplot2::scale_fill_viridis_c(name = if (normalize) "score\n(per cell)" else "score") +
    ggplot2::labs(x = paste("cells by", group.by), y = "cell type", title = "schash scores") +
    ggplot2::theme_minimal() +
    ggplot2::theme(axis.text.x = ggplot2::element_blank(), panel.grid = ggplot2::element_blank(),
                   strip.text.x = ggplot2::element_text(angle = 90, hjust = 0),
                   panel.spacing.x = ggplot2::unit(1, "pt"))
}

#' Known against predicted labels
#'
#' A heatmap of the fraction of each known group (rows) given each label (columns),
#' with the fractions written in; needs ggplot2.  Python: `schash.pl.confusion()`.
#'
#' @param object What [schash_annotate()] returned.
#' @param truth Column with the known labels.
#' @param predicted Column with the predicted labels.
#' @return A ggplot.
#' @export
schash_plot_confusion <- function(object, truth, predicted = "schash_label") {
  need("ggplot2", "for schash_plot_confusion()")
  meta <- cell_meta_or_df(object)
  check_column(meta, truth)
  check_column(meta, predicted)
  tab <- table(truth = meta[[truth]], predicted = meta[[predicted]])
  tab <- tab[, colSums(tab) > 0, drop = FALSE]
  frac <- sweep(tab, 1, pmax(rowSums(tab), 1), "/")
  long <- as.data.frame(as.table(frac), stringsAsFactors = FALSE)
  names(long) <- c("truth", "predicted", "fraction")
  long$truth <- factor(long$truth, levels = rev(rownames(frac)))
  long$predicted <- factor(long$predicted, levels = colnames(frac))
  ggplot2::ggplot(long, ggplot2::aes(x = predicted, y = truth, fill = fraction)) +
    ggplot2::geom_tile(colour = "white") +
    ggplot2::geom_text(ggplot2::aes(label = ifelse(fraction >= 0.005, sprintf("%.2f", fraction), "")),
                       size = 2.5, colour = ifelse(long$fraction > 0.6, "white", "black")) +
    ggplot2::scale_fill_gradient(low = "white", high = "#08306b", limits = c(0, 1), name = "fraction\nof row") +
    ggplot2::labs(x = predicted, y = truth, title = "schash labels against known labels") +
    ggplot2::theme_minimal() +
    ggplot2::theme(axis.text.x = ggplot2::element_text(angle = 45, hjust = 1), panel.grid = ggplot2::element_blank())
}

check_column <- function(meta, col) {
  if (!is.character(col) || length(col) != 1 || !col %in% colnames(meta)) {
    stop("column '", paste(col, collapse = ", "), "' is not in the cell metadata; available columns: ",
         paste(colnames(meta), collapse = ", "), call. = FALSE)
  }
}
