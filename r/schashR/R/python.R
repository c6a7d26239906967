#' Which Python schashR uses
#'
#' In order: the `SCHASH_PYTHON` environment variable, `RETICULATE_PYTHON`, the
#' virtualenv made by [schash_install()] (`r-schash`). `NULL` when none is set,
#' in which case reticulate chooses.
#'
#' @return The path of a Python executable, or `NULL`.
#' @export
schash_python <- function() {
  for (var in c("SCHASH_PYTHON", "RETICULATE_PYTHON")) {
    path <- Sys.getenv(var, unset = "")
    if (nzchar(path)) return(path)
  }
  env <- schash_envname()
  if (reticulate::virtualenv_exists(env)) {
    return(reticulate::virtualenv_python(env))
  }
  NULL
}

schash_envname <- function() getOption("schash.envname", "r-schash")

use_schash_python <- function() {
  if (reticulate::py_available(initialize = FALSE)) return(invisible(FALSE))
  path <- schash_python()
  if (!is.null(path)) reticulate::use_python(path, required = TRUE)
  invisible(TRUE)
}

#' Install the schash Python package for schashR
#'
#' Creates a virtualenv (default `r-schash`) and pip-installs schash into it.
#' With reticulate older than 1.36, which cannot load NumPy 2, `numpy<2` is pinned.
#' Restart R afterwards; schashR finds this environment on its own unless
#' `SCHASH_PYTHON` or `RETICULATE_PYTHON` is set.
#'
#' @param envname Name of the virtualenv.
#' @param package What to pip-install: the PyPI name, a path to a source checkout, or a URL.
#' @param python Python to build the virtualenv from (`NULL`: reticulate's choice).
#' @param extra_packages Further pip requirements.
#' @return The virtualenv's Python, invisibly.
#' @export
schash_install <- function(envname = schash_envname(), package = "schash-annotate",
                           python = NULL, extra_packages = NULL) {
  if (!reticulate::virtualenv_exists(envname)) {
    reticulate::virtualenv_create(envname, python = python)
  }
  pkgs <- c(package, extra_packages)
  if (utils::packageVersion("reticulate") < "1.36") pkgs <- c(pkgs, "numpy<2")
  reticulate::virtualenv_install(envname, pkgs, ignore_installed = FALSE)
  message("schash installed in virtualenv '", envname, "'; restart R to use it.")
  invisible(reticulate::virtualenv_python(envname))
}

#' Is the schash Python package usable?
#'
#' @return `TRUE` when Python can be started and imports `schash`.
#' @export
schash_available <- function() {
  tryCatch({
    use_schash_python()
    reticulate::py_module_available("schash")
  }, error = function(e) FALSE)
}

# A Python exception's message without the class name and traceback.
clean_py_message <- function(msg) {
  msg <- paste(msg, collapse = "\n")
  msg <- sub("(?s)\\n*Detailed traceback:.*$", "", msg, perl = TRUE)
  msg <- sub("(?s)\\n*Run `reticulate::py_last_error\\(\\)`.*$", "", msg, perl = TRUE)
  msg <- sub("(?s)^Error in py_call_impl\\([^)]*\\) *: *\\n? *", "", msg, perl = TRUE)
  msg <- sub("^[A-Za-z_][A-Za-z0-9_.]*(Error|Exception|Warning|Interrupt|Exit): *", "", msg)
  trimws(msg)
}

# Python's advice in schash messages, in R terms: (pattern, replacement) pairs keyed on
# recognisable parts of the messages of the Python package (python/schash/_data.py, _io.py,
# _api.py).  A message that matches none is passed on unchanged.
.r_advice <- list(
  c("pass overwrite=True to replace it", "use overwrite = TRUE to replace it"),
  c("make them unique first, e\\.g\\. adata\\.var_names_make_unique\\(\\)",
    "make them unique first, e.g. rownames(x) <- make.unique(rownames(x))"),
  c("pass layer='counts', or adata\\.raw\\.to_adata\\(\\)",
    paste0("use counts or log-normalised data, not scaled or integrated values: ",
           "assay = \"RNA\" (and layer = \"counts\") for Seurat, ",
           "assay = \"counts\" for a SingleCellExperiment")),
  c("it looks like genes \u00d7 cells; schash wants cells \u00d7 genes, so pass its transpose \\(X\\.T\\)",
    "it looks like cells \u00d7 genes; schashR wants genes \u00d7 cells (genes in rows), so pass t(x)"),
  c("is the matrix genes \u00d7 cells\\? pass X\\.T", "is the matrix cells \u00d7 genes? pass t(x)"),
  c("and is cells \u00d7 genes", "and is genes \u00d7 cells (genes as row names)"),
  c("pass labels= \\(a vector\\) or cell_type_key= \\(an obs column\\)",
    "pass cell_type = (a cell-metadata column name or a vector)"),
  c("lower min_cells_per_type to keep them", "lower min_cells_per_type (e.g. min_cells_per_type = 3) to keep them"),
  c("\\(\\) got an unexpected keyword argument '([^']+)'", "(): unused argument '\\1'"),
  c("cells \u00d7 genes", "genes \u00d7 cells")
)

# A message from Python with its Python advice replaced by R advice.
r_advice <- function(msg) {
  for (rule in .r_advice) {
    out <- gsub(rule[[1]], rule[[2]], msg, perl = TRUE)
    if (!identical(out, msg)) {
      # the generic shape rule only where nothing more specific applied
      return(out)
    }
  }
  msg
}

# Python warnings recorded by the bridge during the last call, as R warnings (class
# schash_warning), so that suppressWarnings() and warnings() see them.
raise_py_warnings <- function() {
  msgs <- tryCatch(unlist(schash_bridge()$take_warnings()), error = function(e) NULL)
  for (m in msgs) {
    warning(structure(class = c("schash_warning", "warning", "condition"),
                      list(message = r_advice(m), call = NULL)))
  }
  invisible(length(msgs))
}

# Evaluate `expr` (a call into Python) and turn a Python exception into a clean R error,
# and Python warnings into R warnings.
py_call <- function(expr) {
  value <- tryCatch(expr, error = function(e) {
    msg <- conditionMessage(e)
    if (!inherits(e, "Rcpp::exception") && !grepl("py_call_impl|^[A-Za-z_][A-Za-z0-9_.]*(Error|Exception):", msg)) {
      stop(e)
    }
    raise_py_warnings()
    stop(structure(class = c("schash_error", "error", "condition"),
                   list(message = r_advice(clean_py_message(msg)), call = NULL)))
  })
  raise_py_warnings()
  value
}

check_available <- function() {
  if (!schash_available()) {
    stop("the schash Python package is not available; run schashR::schash_install() ",
         "or set SCHASH_PYTHON to a Python that has it", call. = FALSE)
  }
}
