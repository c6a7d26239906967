test_that("Seurat v4 accessors: counts by default, data on request, bad names fail clearly", {
  p <- pbmc()
  m <- schashR:::seurat_expr(p)
  expect_s4_class(m, "dgCMatrix")
  expect_equal(dim(m), c(230L, 80L))
  expect_equal(colnames(m), colnames(p))
  expect_true(all(m@x == round(m@x)))  # counts
  d <- schashR:::seurat_expr(p, layer = "data")
  expect_false(all(d@x == round(d@x)))
  expect_error(schashR:::seurat_expr(p, assay = "ADT"), "assay 'ADT' is not in this Seurat object")
  expect_error(schashR:::seurat_expr(p, layer = "scale.data"), "not scale.data")
  expect_error(schashR:::seurat_expr(p, layer = "nope"), "not one of")
})

test_that("Seurat v5 Assay5: counts by default, data on request, data-only assays", {
  obj <- pbmc_v5()
  expect_true(inherits(obj[["RNA"]], "Assay5"))
  m <- schashR:::seurat_expr(obj)
  expect_s4_class(m, "dgCMatrix")
  expect_equal(m, schashR:::seurat_expr(pbmc()))
  expect_true(all(m@x == round(m@x)))
  d <- schashR:::seurat_expr(obj, layer = "data")
  expect_equal(d, schashR:::seurat_expr(pbmc(), layer = "data"))
  expect_error(schashR:::seurat_expr(obj, layer = "nope"),
               "layer 'nope' is not in assay 'RNA'; its layers are: counts, data")
  data_only <- pbmc_v5(data_only = TRUE)
  expect_equal(SeuratObject::Layers(data_only[["RNA"]]), "data")
  expect_equal(schashR:::seurat_expr(data_only), d)  # no counts: data
})

test_that("Seurat v5 split layers: the JoinLayers() hint, partial layers refused, joined order kept", {
  obj <- pbmc_v5()
  split_obj <- obj
  split_obj[["RNA"]] <- split(split_obj[["RNA"]], f = split_obj$groups)
  # the default layer (counts, now counts.g1 and counts.g2) points to JoinLayers()
  expect_error(schashR:::seurat_expr(split_obj),
               "layer 'counts' of assay 'RNA' is split into 2 layers.*JoinLayers\\(object")
  expect_error(schashR:::seurat_expr(split_obj, layer = "data"), "split into 2 layers.*JoinLayers")
  # one layer of the split holds only some cells: a clear error, not NA for the others
  n1 <- sum(obj$groups == "g1")
  expect_error(schashR:::seurat_expr(split_obj, layer = "counts.g1"),
               paste0("layer 'counts.g1' holds ", n1, " of the object's 80 cells.*subset\\(object"))
  # after JoinLayers() the cells come back in the object's order (the metadata's order)
  joined <- split_obj
  joined[["RNA"]] <- SeuratObject::JoinLayers(joined[["RNA"]])
  expect_equal(schashR:::seurat_expr(joined), schashR:::seurat_expr(obj))
})

test_that("SingleCellExperiment accessors prefer counts and accept logcounts", {
  sce <- pbmc_sce()
  m <- schashR:::sce_expr(sce)
  expect_s4_class(m, "dgCMatrix")
  expect_true(all(m@x == round(m@x)))
  lc <- SummarizedExperiment::assay(sce, "counts")
  lc@x <- log1p(lc@x)
  sce2 <- SingleCellExperiment::SingleCellExperiment(assays = list(logcounts = lc))
  expect_equal(schashR:::sce_expr(sce2)@x, lc@x)
  expect_error(schashR:::sce_expr(sce, assay = "nope"), "assay 'nope' is not in")
})

test_that("conversion to Python keeps the matrix sparse and the names", {
  skip_if_no_schash()
  m <- schashR:::seurat_expr(pbmc())
  x <- schashR:::to_py_cells(m)
  expect_true(reticulate::import("scipy.sparse")$issparse(x$X))
  expect_equal(unlist(reticulate::py_to_r(x$X$shape)), c(80L, 230L))
  expect_equal(unlist(x$genes), rownames(m))
  expect_equal(unlist(x$cells), colnames(m))
})
