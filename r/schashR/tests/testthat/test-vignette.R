# Runs the code of the repository's Seurat vignette (vignettes/schashR_seurat.Rmd) so it
# cannot rot.  Found relative to r/schashR/tests/testthat, or through SCHASHR_VIGNETTE;
# skipped where the source tree is not around (e.g. inside R CMD check).
test_that("the Seurat vignette runs", {
  skip_if_no_schash()
  skip_if_not_installed("Seurat")
  skip_if_not_installed("knitr")
  skip_if_not_installed("ggplot2")
  rmd <- Sys.getenv("SCHASHR_VIGNETTE",
                    file.path(test_path(), "..", "..", "..", "..", "vignettes", "schashR_seurat.Rmd"))
  skip_if_not(file.exists(rmd), "vignette source not found (run the tests from the repository)")
  script <- tempfile(fileext = ".R")
  knitr::purl(rmd, output = script, quiet = TRUE)
  env <- new.env()
  grDevices::pdf(NULL)
  on.exit(grDevices::dev.off(), add = TRUE)
  expect_no_error(suppressMessages(utils::capture.output(
    source(script, local = env, echo = FALSE, print.eval = TRUE)
  )))
  expect_true(all(c("schash_label", "schash_pruned_label") %in% colnames(env$query[[]])))
  expect_equal(dim(SeuratObject::Embeddings(env$query, "schash")), c(ncol(env$query), 64L))
})
