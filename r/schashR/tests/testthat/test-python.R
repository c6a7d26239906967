test_that("Python error messages lose the class name and the traceback", {
  expect_equal(schashR:::clean_py_message("ValueError: bad input"), "bad input")
  expect_equal(schashR:::clean_py_message("schash._errors.InputError: no genes\n"), "no genes")
  msg <- "Error in py_call_impl(callable, dots$args, dots$keywords) : \n  ValueError: 3 cells\n\nDetailed traceback:\n  File \"x.py\", line 1"
  expect_equal(schashR:::clean_py_message(msg), "3 cells")
})

test_that("schash_python() follows SCHASH_PYTHON", {
  withr_set <- function(v) { old <- Sys.getenv("SCHASH_PYTHON", NA); Sys.setenv(SCHASH_PYTHON = v); old }
  old <- withr_set("/some/python")
  on.exit(if (is.na(old)) Sys.unsetenv("SCHASH_PYTHON") else Sys.setenv(SCHASH_PYTHON = old))
  expect_equal(schash_python(), "/some/python")
})

test_that("a Python exception becomes a clean schash_error", {
  skip_if_no_schash()
  err <- expect_error(schashR:::py_call(reticulate::py_eval("int('x')")), class = "schash_error")
  expect_false(grepl("Traceback|py_call_impl|ValueError", conditionMessage(err)))
  expect_match(conditionMessage(err), "invalid literal")
})

test_that("inside R, torch uses its own BLAS, not R's (training speed)", {
  skip_if_no_schash()
  skip_if_not(Sys.info()[["sysname"]] == "Linux", "the BLAS interposition is a Linux (ELF) matter")
  blas <- reticulate::import("schash._blas")
  # R's BLAS exports sgemm_ into the global scope, so schash preloaded torch's library
  expect_true(blas$`_foreign_blas_visible`())
  expect_match(blas$PRELOADED, "libtorch_cpu")
  torch <- reticulate::import("torch")
  torch$set_num_threads(1L)
  a <- torch$randn(1000L, 1000L)
  t <- system.time(for (i in 1:3) a$matmul(a))[["elapsed"]]
  expect_lt(t, 2)  # about 0.15 s with torch's MKL; over 3 s with R's reference BLAS
})

test_that("SCHASH_PYTHON set after Python started: a warning says to restart R", {
  skip_if_no_schash()
  old <- Sys.getenv("SCHASH_PYTHON", NA)
  on.exit(if (is.na(old)) Sys.unsetenv("SCHASH_PYTHON") else Sys.setenv(SCHASH_PYTHON = old))
  Sys.setenv(SCHASH_PYTHON = "/no/such/python")
  expect_warning(ok <- schash_available(), "already runs Python .*SCHASH_PYTHON \\(/no/such/python\\).*restart R")
  expect_true(ok)  # the running Python still has schash
  # the same Python by another path is no reason to warn
  Sys.setenv(SCHASH_PYTHON = schashR:::bound_python())
  expect_silent(schash_available())
})

test_that("an unusable Python is named, with the reason and R advice", {
  msg <- schashR:::unavailable_message("/opt/py/bin/python", "SCHASH_PYTHON", "No module named 'schash'")
  expect_match(msg, "cannot be used from Python /opt/py/bin/python \\(chosen by SCHASH_PYTHON\\): No module named 'schash'")
  expect_match(msg, "schash_install\\(\\)")
  expect_match(msg, "/opt/py/bin/python -m pip install schash-annotate")
  msg <- schashR:::unavailable_message("/a/python", "SCHASH_PYTHON", "x", restart = "restart R to use it")
  expect_match(msg, "restart R to use it")
})

test_that("schash_install() offline fails fast, names the Python and leaves no virtualenv", {
  skip_on_cran()
  py <- Sys.getenv("SCHASH_PYTHON", unset = Sys.which("python3"))
  skip_if(!nzchar(py), "no Python")
  home <- tempfile("workon")
  dir.create(home)
  old <- Sys.getenv(c("WORKON_HOME", "PIP_INDEX_URL", "PIP_QUIET"), unset = NA)
  on.exit({
    for (v in names(old)) if (is.na(old[[v]])) Sys.unsetenv(v) else do.call(Sys.setenv, as.list(old[v]))
    unlink(home, recursive = TRUE)
  })
  # an index that refuses connections at once stands for "offline"
  Sys.setenv(WORKON_HOME = home, PIP_INDEX_URL = "http://127.0.0.1:9/simple", PIP_QUIET = "2")
  t <- system.time(err <- expect_error(suppressMessages(utils::capture.output(
    schash_install("schash-test-env", package = "schash-annotate==0.0.0.dev0", python = py)))))[["elapsed"]]
  expect_match(conditionMessage(err), paste0("from Python ", py, "\\) failed"), fixed = FALSE)
  expect_match(conditionMessage(err), "schash-annotate")
  expect_match(conditionMessage(err), "was removed again")
  expect_false(reticulate::virtualenv_exists("schash-test-env"))
  expect_false(dir.exists(file.path(home, "schash-test-env")))
  expect_lt(t, 90)
  expect_error(schash_install("x", python = "/no/such/python3"), "cannot run Python /no/such/python3")
})
