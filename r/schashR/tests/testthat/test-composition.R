test_that("Seurat: neighbour composition by cell type", {
  skip_if_no_schash()
  p <- pbmc()
  a <- schash_annotate(p, pbmc_model(), neighbors = 10, saliency = FALSE)
  comp <- SeuratObject::Misc(a, slot = "schash")$composition
  expect_named(comp, "cell_type")
  ct <- comp$cell_type
  expect_s3_class(ct, "data.frame")
  expect_equal(dim(ct), c(80L, 3L))
  expect_equal(rownames(ct), colnames(p))
  expect_equal(colnames(ct), schash_cell_types(pbmc_model()))
  expect_equal(unname(rowSums(ct)), rep(1, 80))
  expect_true(all(as.matrix(ct) >= 0 & as.matrix(ct) <= 1))  # tied neighbours share equally
  expect_identical(schash_composition(a), ct)
  expect_false("schash_neighbor_batch" %in% colnames(a[[]]))
  expect_error(schash_composition(a, "batch"), "no 'batch' composition.*no batches")
  # without neighbors= there is none
  b <- schash_annotate(p, pbmc_model(), saliency = FALSE)
  expect_null(SeuratObject::Misc(b, slot = "schash")$composition)
  expect_error(schash_composition(b), "run schash_annotate\\(\\.\\.\\., neighbors = 15\\) first")
  expect_error(schash_annotate(p, pbmc_model(), neighbors = 0), "neighbors must be")
  expect_error(schash_annotate(p, pbmc_model(), neighbors = "a"), "neighbors must be")

  skip_if_not_installed("ggplot2")
  expect_s3_class(schash_plot_composition(a), "ggplot")
  expect_s3_class(schash_plot_composition(a, group.by = "RNA_snn_res.1"), "ggplot")
  expect_error(schash_plot_composition(b), "run schash_annotate\\(\\.\\.\\., neighbors = 15\\) first")
  expect_error(schash_plot_composition(a, group.by = "nope"), "group.by column 'nope'")
})

test_that("SingleCellExperiment with batches: batch composition and neighbour batch", {
  skip_if_no_schash()
  sce <- pbmc_sce()
  sce$batch <- rep(c("b1", "b2"), length.out = ncol(sce))
  model <- do.call(schash_train, c(list(sce, cell_type = "groups", batch = "batch"), fast_args))
  a <- schash_annotate(sce, model, neighbors = 12)
  comp <- S4Vectors::metadata(a)$schash$composition
  expect_setequal(names(comp), c("cell_type", "batch"))
  expect_equal(colnames(comp$cell_type), c("g1", "g2"))
  expect_equal(colnames(comp$batch), c("b1", "b2"))
  for (x in comp) {
    expect_equal(rownames(x), colnames(sce))
    expect_equal(unname(rowSums(x)), rep(1, ncol(sce)))
  }
  cd <- SummarizedExperiment::colData(a)
  expect_true(is.factor(cd$schash_neighbor_batch))
  expect_equal(levels(cd$schash_neighbor_batch), c("b1", "b2"))
  expect_equal(as.character(cd$schash_neighbor_batch),
               colnames(comp$batch)[max.col(as.matrix(comp$batch), ties.method = "first")])
  skip_if_not_installed("ggplot2")
  expect_s3_class(schash_plot_composition(a, by = "batch"), "ggplot")
})

test_that("matrix input: composition attribute", {
  skip_if_no_schash()
  p <- pbmc()
  counts <- assay_data(p, "counts")
  res <- schash_annotate(counts, pbmc_model(), neighbors = 5, saliency = FALSE)
  ct <- attr(res, "composition")$cell_type
  expect_equal(dim(ct), c(80L, 3L))
  expect_equal(unname(rowSums(ct)), rep(1, 80))
  expect_equal(colnames(ct), c("0", "1", "2"))
  # the same as Python's SchashModel.composition() on the same cells
  model <- pbmc_model()
  x <- to_py_cells(counts)
  adata <- schash_bridge()$`_anndata`(x$X, x$genes, x$cells)
  py_ct <- model$py$composition(adata, by = "cell_type", k = 5L)
  expect_equal(unname(as.matrix(ct)), unname(as.matrix(py_ct)))
  skip_if_not_installed("ggplot2")
  expect_s3_class(schash_plot_composition(res), "ggplot")
})
