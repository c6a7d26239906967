test_that("Python's advice is translated for R users", {
  adv <- schashR:::r_advice
  expect_equal(adv("/tmp/m.schash exists; pass overwrite=True to replace it"),
               "/tmp/m.schash exists; use overwrite = TRUE to replace it")
  expect_match(adv("2 gene names occur more than once (e.g. ['A']); make them unique first, e.g. adata.var_names_make_unique()"),
               "make.unique\\(rownames\\(x\\)\\)")
  neg <- adv(paste("the expression matrix holds 5 negative values: it looks scaled or centred.",
                   "schash needs raw counts or log-normalised values: pass layer='counts', or adata.raw.to_adata()"))
  expect_match(neg, 'assay = "RNA"', fixed = TRUE)
  expect_false(grepl("adata|layer='counts'", neg))
  shape <- adv("it looks like genes \u00d7 cells; schash wants cells \u00d7 genes, so pass its transpose (X.T)")
  expect_match(shape, "genes \u00d7 cells \\(genes in rows\\), so pass t\\(x\\)")
  expect_match(adv("Check that the query uses the same gene identifiers ... and is cells \u00d7 genes"),
               "is genes \u00d7 cells")
  overlap <- adv(paste("Check that the query is cells \u00d7 genes and of the reference's species",
                       "(a mouse query on a human model: pass species='mouse')"))
  expect_match(overlap, "query is genes \u00d7 cells (genes as row names) and", fixed = TRUE)
  expect_match(overlap, 'pass species = "mouse"', fixed = TRUE)
  expect_match(adv("no cell types given: pass labels= (a vector) or cell_type_key= (an obs column)"),
               "pass cell_type =")
  expect_equal(adv("train() got an unexpected keyword argument 'foo'"), "train(): unused argument 'foo'")
  expect_equal(adv("nothing Python here"), "nothing Python here")
})

test_that("Python warnings become R warnings: once, without paths, suppressible", {
  skip_if_no_schash()
  x <- counts_with_rare_type()
  counts <- x$counts
  labels <- x$labels
  w <- expect_warning(m <- schash_train(counts, cell_type = labels, max_epochs = 2, min_cells_per_type = 5),
                      "cell types with fewer than 5 cells are left out: rare \\(2\\)",
                      class = "schash_warning")
  expect_false(grepl("\\.py|UserWarning", conditionMessage(w)))
  # exactly one warning, and suppressWarnings() silences it
  ws <- list()
  withCallingHandlers(
    schash_train(counts, cell_type = labels, max_epochs = 2, min_cells_per_type = 5),
    warning = function(w) { ws[[length(ws) + 1]] <<- w; invokeRestart("muffleWarning") }
  )
  expect_length(ws, 1)
  expect_silent(suppressWarnings(schash_train(counts, cell_type = labels, max_epochs = 2,
                                              min_cells_per_type = 5)))
  # a query missing some of the model's genes
  expect_warning(schash_annotate(counts[-(1:10), ], pbmc_model(), saliency = FALSE),
                 "220 of 230 model genes found", class = "schash_warning")
})

test_that("errors give R advice", {
  skip_if_no_schash()
  p <- pbmc()
  counts <- assay_data(p, "counts")
  path <- tempfile(fileext = ".schash")
  schash_save(pbmc_model(), path)
  expect_error(schash_save(pbmc_model(), path), "use overwrite = TRUE", class = "schash_error")
  scaled <- counts
  scaled@x <- scaled@x - 3
  expect_error(schash_annotate(scaled, pbmc_model()), 'assay = "RNA"', fixed = TRUE)
  dup <- counts
  rownames(dup)[2] <- rownames(dup)[1]
  expect_error(schash_annotate(dup, pbmc_model()), "make.unique", fixed = TRUE)
  # cells x genes by mistake: the R orientation is asked for
  err <- expect_error(schash_annotate(Matrix::t(counts), pbmc_model()), class = "schash_error")
  expect_match(conditionMessage(err), "genes \u00d7 cells")
  expect_error(schash_train(counts, cell_type = p$groups, no_such_option = 1), "unused argument 'no_such_option'")
  expect_error(schash_train(counts, cell_type = p$groups, rare_type_cells = -1), "rare_type_cells must be a whole number",
               class = "schash_error")
})

test_that("rare_type_cells reaches Python: a type of 2 cells gets the rare types' contest, 0 turns it off", {
  skip_if_no_schash()
  x <- counts_with_rare_type()
  with_rare <- schash_train(x$counts, cell_type = x$labels, max_epochs = 2)
  expect_equal(unlist(with_rare$py$cell_types)[with_rare$py$rare$rare + 1], "rare")
  without <- schash_train(x$counts, cell_type = x$labels, max_epochs = 2, rare_type_cells = 0)
  expect_null(without$py$rare)
  expect_equal(without$py$params$rare_type_cells, 0L)
})
