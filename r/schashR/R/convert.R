# R -> Python: genes x cells dgCMatrix -> cells x genes SciPy sparse matrix, never dense.
# Matrix::t() keeps it sparse and reticulate's r_to_py() maps a dgCMatrix to a
# scipy.sparse.csc_matrix; cell and gene names travel as lists.
to_py_cells <- function(m) {
  if (is.null(rownames(m))) stop("the expression matrix has no gene (row) names", call. = FALSE)
  if (ncol(m) == 0) stop("the expression matrix has no cells", call. = FALSE)
  cells <- colnames(m) %||% paste0("cell_", seq_len(ncol(m)))
  list(X = reticulate::r_to_py(Matrix::t(m)), genes = as.list(rownames(m)), cells = as.list(cells))
}

# A vector of labels for n cells, checked, as a list of strings for Python.
label_list <- function(x, n, what) {
  if (is.null(x)) return(NULL)
  if (is.factor(x)) x <- as.character(x)
  if (length(x) != n) {
    stop("there are ", length(x), " ", what, " values for ", n, " cells", call. = FALSE)
  }
  if (anyNA(x)) {
    stop(sum(is.na(x)), " cells have a missing ", what, " (NA); remove those cells or give them a ",
         what, call. = FALSE)
  }
  empty <- !nzchar(trimws(as.character(x)))
  if (any(empty)) {
    stop(sum(empty), " cells have an empty ", what, " (\"\"); remove those cells or give them a ",
         what, call. = FALSE)
  }
  as.list(as.character(x))
}

# Label levels: a data.frame or list of label vectors (coarsest first) -> a named list of
# label_list()s for Python (a dict there); one vector -> label_list().
level_list <- function(x, n) {
  if (!length(x)) {
    stop("cell_type must be a vector of labels, or a data.frame / list with one vector per level",
         call. = FALSE)
  }
  if (length(x) == 1) return(label_list(x[[1]], n, "cell type"))
  nms <- names(x) %||% rep("", length(x))
  nms[!nzchar(nms)] <- paste0("level", seq_along(x))[!nzchar(nms)]
  if (anyDuplicated(nms)) stop("the label levels have repeated names: ", paste(nms, collapse = ", "), call. = FALSE)
  stats::setNames(lapply(seq_along(x), function(i) label_list(x[[i]], n, paste0("'", nms[i], "' cell type"))), nms)
}

# Python -> R: the bridge's per-cell columns -> data.frame with schash_ columns and factors
# (`factors`: the label levels' columns, each with its factor levels).
py_table <- function(tab, cells, levels, factors = NULL) {
  tab <- lapply(tab, function(v) if (is.list(v)) unlist(v) else as.vector(v))
  df <- as.data.frame(tab, stringsAsFactors = FALSE)
  rownames(df) <- unlist(cells)
  for (col in intersect(c("label", "pruned_label", "majority_label"), names(df))) {
    df[[col]] <- factor(as.character(df[[col]]), levels = unlist(levels))
  }
  for (col in intersect(names(factors), names(df))) {
    df[[col]] <- factor(as.character(df[[col]]), levels = unlist(factors[[col]]))
  }
  if ("over_clustering" %in% names(df)) {
    df$over_clustering <- factor(df$over_clustering, levels = unique(df$over_clustering[order(
      as.integer(df$over_clustering))]))
  }
  names(df) <- paste0("schash_", names(df))
  df
}

# A dict(values, rows, cols) from the bridge -> a named numeric matrix.
py_matrix <- function(d) {
  if (is.null(d)) return(NULL)
  m <- as.matrix(d$values)
  storage.mode(m) <- "double"
  dimnames(m) <- list(unlist(d$rows), unlist(d$cols))
  m
}
