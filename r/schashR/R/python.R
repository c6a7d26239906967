#' Which Python schashR uses
#'
#' In order: the `SCHASH_PYTHON` environment variable, `RETICULATE_PYTHON`, the
#' virtualenv made by [schash_install()] (`r-schash`). `NULL` when none is set,
#' in which case reticulate chooses.  These are read when Python starts, the first
#' time schashR (or anything else using reticulate) needs it; to switch to another
#' Python afterwards, restart R.
#'
#' @return The path of a Python executable, or `NULL`.
#' @export
schash_python <- function() {
  attr(wanted_python(), "path")
}

# The Python schashR is asked to use: its path (attribute "path") and where that came from.
wanted_python <- function() {
  for (var in c("SCHASH_PYTHON", "RETICULATE_PYTHON")) {
    path <- Sys.getenv(var, unset = "")
    if (nzchar(path)) return(structure(var, path = path))
  }
  env <- schash_envname()
  if (reticulate::virtualenv_exists(env)) {
    return(structure(paste0("the virtualenv '", env, "' of schash_install()"),
                     path = reticulate::virtualenv_python(env)))
  }
  structure("reticulate's default", path = NULL)
}

schash_envname <- function() getOption("schash.envname", "r-schash")

# The Python that reticulate runs in this R session, or NULL before one has started.
bound_python <- function() {
  if (!reticulate::py_available(initialize = FALSE)) return(NULL)
  tryCatch(reticulate::py_exe(), error = function(e) reticulate::py_config()$python)
}

# Do two Python executables belong to the same installation (same sys.prefix)?
same_python <- function(a, b) {
  if (identical(path.expand(a), path.expand(b))) return(TRUE)
  key <- paste(a, b, sep = "\r")
  if (!is.null(.schash$same[[key]])) return(.schash$same[[key]])
  prefix <- function(p) {
    out <- tryCatch(suppressWarnings(system2(p, c("-c", shQuote("import sys; print(sys.prefix)")),
                                             stdout = TRUE, stderr = FALSE)),
                    error = function(e) character())
    if (length(out) && is.null(attr(out, "status"))) normalizePath(out[1], mustWork = FALSE) else NA
  }
  pa <- prefix(a)
  same <- !is.na(pa) && identical(pa, prefix(b))
  .schash$same[[key]] <- same
  same
}

# A note when the Python asked for is not the one reticulate already runs (NULL if none).
restart_note <- function() {
  bound <- bound_python()
  wanted <- wanted_python()
  path <- attr(wanted, "path")
  if (is.null(bound) || is.null(path) || same_python(path, bound)) return(NULL)
  paste0("this R session already runs Python ", bound, "; ", wanted, " (", path,
         ") is only read before Python starts: restart R to use it")
}

use_schash_python <- function() {
  if (reticulate::py_available(initialize = FALSE)) {
    note <- restart_note()
    if (!is.null(note) && !identical(.schash$warned, note)) {
      .schash$warned <- note
      warning(note, call. = FALSE)
    }
    return(invisible(FALSE))
  }
  path <- attr(wanted_python(), "path")
  if (!is.null(path)) reticulate::use_python(path, required = TRUE)
  invisible(TRUE)
}

#' Install the schash Python package for schashR
#'
#' Creates a virtualenv (default `r-schash`) and pip-installs the Python package
#' (distribution `schash-annotate`) into it.  With reticulate older than 1.36, which
#' cannot load NumPy 2, `numpy<2` is pinned.  Restart R afterwards; schashR finds this
#' environment on its own unless `SCHASH_PYTHON` or `RETICULATE_PYTHON` is set.
#'
#' It needs the package index (PyPI) or a local `package`; offline it fails within
#' seconds and removes the virtualenv it created, so that no broken environment is
#' left behind.  pip's own settings (`PIP_INDEX_URL`, `PIP_TIMEOUT`, ...) apply.
#'
#' @param envname Name of the virtualenv.
#' @param package What to pip-install: the PyPI name, a path to a source checkout, or a
#'   wheel file.
#' @param python Python (>= 3.10) to build the virtualenv from (`NULL`: `python3` on the
#'   `PATH`).
#' @param extra_packages Further pip requirements.
#' @return The virtualenv's Python, invisibly.
#' @export
schash_install <- function(envname = schash_envname(), package = "schash-annotate",
                           python = NULL, extra_packages = NULL) {
  python <- python %||% unname(Sys.which("python3"))
  if (!nzchar(python)) {
    stop("no python3 on the PATH; install Python (>= 3.10) or pass ",
         "schash_install(python = \"/path/to/python3\")", call. = FALSE)
  }
  ver <- tryCatch(suppressWarnings(system2(python, c("-c", shQuote(
    "import sys; print('%d.%d' % sys.version_info[:2])")), stdout = TRUE, stderr = TRUE)),
    error = function(e) character())
  if (!length(ver) || !is.null(attr(ver, "status")) || !grepl("^[0-9]+\\.[0-9]+$", ver[1])) {
    stop("cannot run Python ", python, "; pass schash_install(python = \"/path/to/python3\")",
         call. = FALSE)
  }
  if (utils::compareVersion(ver[1], "3.10") < 0) {
    stop("Python ", python, " is version ", ver[1], "; schash needs Python >= 3.10: pass ",
         "schash_install(python = \"/path/to/python3.10-or-newer\")", call. = FALSE)
  }
  existed <- reticulate::virtualenv_exists(envname)
  pkgs <- c(package, extra_packages)
  if (utils::packageVersion("reticulate") < "1.36") pkgs <- c(pkgs, "numpy<2")
  # fail fast offline: pip retries a lost connection 5 times with 15 s time-outs by default
  pip_env <- c(PIP_RETRIES = "1", PIP_TIMEOUT = "10", PIP_DISABLE_PIP_VERSION_CHECK = "1")
  pip_env <- pip_env[!nzchar(Sys.getenv(names(pip_env)))]
  if (length(pip_env)) {
    do.call(Sys.setenv, as.list(pip_env))
    on.exit(Sys.unsetenv(names(pip_env)), add = TRUE)
  }
  ok <- FALSE
  on.exit(if (!ok && !existed && reticulate::virtualenv_exists(envname)) {
    reticulate::virtualenv_remove(envname, confirm = FALSE)
  }, add = TRUE)
  tryCatch({
    if (!existed) {
      # packages = FALSE: no upgrade of pip/setuptools/numpy from the index, the venv's own pip
      reticulate::virtualenv_create(envname, python = python, packages = FALSE)
    }
    reticulate::virtualenv_install(envname, pkgs, ignore_installed = FALSE)
  }, error = function(e) {
    stop("installing ", paste(pkgs, collapse = ", "), " into the virtualenv '", envname,
         "' (from Python ", python, ") failed: ", conditionMessage(e),
         if (!existed) paste0("\nThe virtualenv '", envname, "' was removed again."),
         "\nIs this machine offline? Then install from a local copy: ",
         "schash_install(package = \"/path/to/schash_annotate-<version>.whl\" or a source checkout), ",
         "or point SCHASH_PYTHON at a Python that has schash-annotate.", call. = FALSE)
  })
  ok <- TRUE
  message("schash-annotate installed in virtualenv '", envname, "'; restart R to use it.")
  invisible(reticulate::virtualenv_python(envname))
}

#' Is the schash Python package usable?
#'
#' @return `TRUE` when Python can be started and imports `schash`.  When it was
#'   started before with another Python than `SCHASH_PYTHON` now names, a warning says
#'   to restart R.
#' @export
schash_available <- function() {
  is.null(schash_unavailable())
}

# NULL when schash imports, else why not (a message for R users).
schash_unavailable <- function() {
  wanted <- wanted_python()
  reason <- tryCatch({
    use_schash_python()
    reticulate::import("schash")
    NULL
  }, error = function(e) clean_py_message(conditionMessage(e)))
  if (is.null(reason)) return(NULL)
  python <- bound_python() %||% attr(wanted, "path") %||% "(none found)"
  unavailable_message(python, wanted, reason, restart_note())
}

unavailable_message <- function(python, source, reason, restart = NULL) {
  paste0(
    "the schash Python package (distribution schash-annotate) cannot be used from Python ",
    python, " (chosen by ", source, "): ", reason, "\n",
    if (!is.null(restart)) paste0(restart, "\n"),
    "Run schashR::schash_install(), or install it there (", python,
    " -m pip install schash-annotate), or set SCHASH_PYTHON to a Python that has it",
    if (is.null(restart)) " before schashR starts Python (else restart R)" else "", "."
  )
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
  c("query is cells \u00d7 genes and", "query is genes \u00d7 cells (genes as row names) and"),
  c("pass species='mouse'", "pass species = \"mouse\""),
  c("pass labels= \\(a vector\\) or cell_type_key= \\(an obs column\\)",
    "pass cell_type = (a cell-metadata column name or a vector)"),
  c("lower min_cells_per_type to keep them", "lower min_cells_per_type (e.g. min_cells_per_type = 3) to keep them"),
  c("\\(\\) got an unexpected keyword argument '([^']+)'", "(): unused argument '\\1'"),
  c("cells \u00d7 genes", "genes \u00d7 cells")
)

# A message from Python with its Python advice replaced by R advice.
r_advice <- function(msg) {
  n <- length(.r_advice)
  out <- msg
  for (rule in .r_advice[-n]) out <- gsub(rule[[1]], rule[[2]], out, perl = TRUE)
  if (identical(out, msg)) {  # the generic shape rule only where nothing more specific applied
    out <- gsub(.r_advice[[n]][[1]], .r_advice[[n]][[2]], msg, perl = TRUE)
  }
  out
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
  why <- schash_unavailable()
  if (!is.null(why)) stop(why, call. = FALSE)
}
