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

# Evaluate `expr` (a call into Python) and turn a Python exception into a clean R error.
py_call <- function(expr) {
  tryCatch(expr, error = function(e) {
    msg <- conditionMessage(e)
    if (!inherits(e, "Rcpp::exception") && !grepl("py_call_impl|^[A-Za-z_][A-Za-z0-9_.]*(Error|Exception):", msg)) {
      stop(e)
    }
    stop(structure(class = c("schash_error", "error", "condition"),
                   list(message = clean_py_message(msg), call = NULL)))
  })
}

check_available <- function() {
  if (!schash_available()) {
    stop("the schash Python package is not available; run schashR::schash_install() ",
         "or set SCHASH_PYTHON to a Python that has it", call. = FALSE)
  }
}
