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
