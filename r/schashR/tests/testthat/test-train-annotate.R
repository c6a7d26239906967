cols <- c("schash_label", "schash_pruned_label", "schash_distance", "schash_delta_next",
          "schash_typicality", "schash_confidence", "schash_top_genes")

test_that("Seurat: train, print, annotate", {
  skip_if_no_schash()
  model <- pbmc_model()
  expect_s3_class(model, "schash_model")
  expect_equal(schash_cell_types(model), c("0", "1", "2"))
  expect_output(print(model), "3 cell types, 230 genes, 64 bits, 80 reference cells")

  p <- pbmc()
  a <- schash_annotate(p, model)
  expect_s4_class(a, "Seurat")
  expect_true(all(cols %in% colnames(a[[]])))
  expect_true(is.factor(a$schash_label))
  expect_equal(levels(a$schash_label), c("0", "1", "2", "Unassigned"))
  expect_gt(mean(as.character(a$schash_label) == as.character(p$RNA_snn_res.1)), 0.7)
  emb <- SeuratObject::Embeddings(a, "schash")
  expect_equal(dim(emb), c(80L, 64L))
  expect_equal(rownames(emb), colnames(p))
  expect_true(all(emb %in% c(-1, 1)))
  expect_equal(SeuratObject::Key(a[["schash"]]), "schash_")
  sal <- SeuratObject::Misc(a, slot = "schash")$saliency
  expect_equal(dim(sal), c(230L, 3L))
  expect_equal(colnames(sal), c("0", "1", "2"))

  top <- schash_top_genes(a, 4)
  expect_equal(nrow(top), 12)
  expect_named(top, c("group", "rank", "gene", "score"))
  skip_if_not_installed("ggplot2")
  expect_s3_class(schash_plot_saliency(a, 3), "ggplot")
})

test_that("Seurat: data slot, knn method, no saliency", {
  skip_if_no_schash()
  a <- schash_annotate(pbmc(), pbmc_model(), layer = "data", method = "knn", saliency = FALSE)
  expect_true("schash_label" %in% colnames(a[[]]))
  expect_false("schash_top_genes" %in% colnames(a[[]]))
  expect_error(schash_saliency(a), "no schash saliency")
})

test_that("Seurat: prototype method, and a clear error for a method that does not exist", {
  skip_if_no_schash()
  p <- pbmc()
  a <- schash_annotate(p, pbmc_model(), method = "prototype", saliency = FALSE)
  expect_equal(levels(a$schash_label), c("0", "1", "2", "Unassigned"))
  expect_gt(mean(as.character(a$schash_label) == as.character(p$RNA_snn_res.1)), 0.7)
  expect_error(schash_annotate(p, pbmc_model(), method = "nearest"), "should be one of")
})

test_that("SingleCellExperiment: train and annotate", {
  skip_if_no_schash()
  sce <- pbmc_sce()
  model <- do.call(schash_train, c(list(sce, cell_type = "groups"), fast_args))
  expect_equal(schash_cell_types(model), c("g1", "g2"))
  a <- schash_annotate(sce, model)
  expect_s4_class(a, "SingleCellExperiment")
  cd <- SummarizedExperiment::colData(a)
  expect_true(all(cols %in% colnames(cd)))
  expect_true(is.factor(cd$schash_pruned_label))
  codes <- SingleCellExperiment::reducedDim(a, "schash")
  expect_equal(dim(codes), c(80L, 64L))
  expect_equal(rownames(codes), colnames(sce))
  expect_equal(dim(S4Vectors::metadata(a)$schash$saliency), c(230L, 2L))
  expect_equal(dim(schash_saliency(a)), c(230L, 2L))
})

test_that("matrix default: labels as a vector, data.frame out, same answer as Seurat", {
  skip_if_no_schash()
  p <- pbmc()
  counts <- assay_data(p, "counts")
  model <- do.call(schash_train, c(list(counts, cell_type = p$RNA_snn_res.1), fast_args))
  res <- schash_annotate(counts, model)
  expect_s3_class(res, "data.frame")
  expect_equal(rownames(res), colnames(counts))
  expect_true(all(cols %in% names(res)))
  expect_equal(dim(attr(res, "codes")), c(80L, 64L))
  # dense base matrix gives the same
  res2 <- schash_annotate(as.matrix(counts), model, saliency = FALSE)
  expect_equal(res2$schash_label, res$schash_label)
  # same seed, same data: same as the Seurat path
  a <- schash_annotate(p, pbmc_model(), saliency = FALSE)
  expect_equal(as.character(res$schash_label), as.character(a$schash_label))
})

test_that("bad input gives clear R errors", {
  skip_if_no_schash()
  p <- pbmc()
  expect_error(schash_train(p, cell_type = "no_such_column"),
               "cell type column 'no_such_column' is not in the cell metadata")
  expect_error(schash_train(p, cell_type = "groups", batch = "nope"), "batch column 'nope'")
  p$with_na <- p$groups
  p$with_na[1:3] <- NA
  expect_error(schash_train(p, cell_type = "with_na"), "3 cells have a missing cell type")
  counts <- assay_data(p, "counts")
  expect_error(schash_train(counts, cell_type = p$groups[1:10]), "10 cell type values for 80 cells")
  bad <- counts
  rownames(bad) <- paste0("X_", rownames(bad))
  err <- expect_error(schash_annotate(bad, pbmc_model()), class = "schash_error")
  expect_match(conditionMessage(err), "of the model's 230 genes")
  expect_false(grepl("Traceback|GeneOverlapError", conditionMessage(err)))
  tiny <- do.call(cbind, rep(list(counts[, 1:3]), 1))
  expect_warning(
    expect_error(schash_train(tiny, cell_type = c("a", "b", "c"), min_cells_per_type = 10), "at least two", class = "schash_error"),
    "fewer than 10 cells are left out", class = "schash_warning")
  expect_error(schash_annotate(p, "not a model"), "must be a schash_model")
})

test_that("save and load round-trip, and the file loads in Python", {
  skip_if_no_schash()
  model <- pbmc_model()
  path <- tempfile(fileext = ".schash")
  schash_save(model, path)
  expect_true(file.exists(path))
  expect_error(schash_save(model, path), class = "schash_error")
  schash_save(model, path, overwrite = TRUE)
  m2 <- schash_load(path)
  expect_equal(m2$info, model$info)
  p <- pbmc()
  a1 <- schash_annotate(p, model, saliency = FALSE)
  a2 <- schash_annotate(p, m2, saliency = FALSE)
  expect_equal(SeuratObject::Embeddings(a1, "schash"), SeuratObject::Embeddings(a2, "schash"))
  expect_equal(a1$schash_label, a2$schash_label)

  # the same file read by Python's schash.load()
  py_model <- reticulate::import("schash")$load(path)
  expect_equal(unlist(py_model$cell_types), schash_cell_types(model))
  expect_equal(py_model$n_bits, 64L)
  expect_error(schash_load(tempfile()), "no such file")
  junk <- tempfile(); writeLines("not a model", junk)
  expect_error(schash_load(junk), class = "schash_error")
})

test_that("Seurat v5: train and annotate Assay5 objects like v4 ones; split layers refused", {
  skip_if_no_schash()
  obj <- pbmc_v5()
  v4 <- schash_annotate(pbmc(), pbmc_model(), saliency = FALSE)
  a <- schash_annotate(obj, pbmc_model(), saliency = FALSE)
  expect_equal(as.character(a$schash_label), as.character(v4$schash_label))
  expect_equal(SeuratObject::Embeddings(a, "schash"), SeuratObject::Embeddings(v4, "schash"))
  # data-only Assay5: the log-normalised layer is used
  d <- schash_annotate(pbmc_v5(data_only = TRUE), pbmc_model(), saliency = FALSE)
  expect_gt(mean(as.character(d$schash_label) == as.character(d$RNA_snn_res.1)), 0.7)
  model <- do.call(schash_train, c(list(obj, cell_type = "RNA_snn_res.1"), fast_args))
  expect_equal(schash_cell_types(model), c("0", "1", "2"))
  obj[["RNA"]] <- split(obj[["RNA"]], f = obj$groups)
  expect_error(schash_annotate(obj, pbmc_model()), "JoinLayers")
  expect_error(schash_train(obj, cell_type = "RNA_snn_res.1"), "JoinLayers")
  expect_error(schash_annotate(obj, pbmc_model(), layer = "counts.g2"), "holds .* of the object's 80 cells")
})

test_that("query batches: a metadata column or a vector, the same as Python's batch_key=", {
  skip_if_no_schash()
  p <- pbmc()
  model <- pbmc_model()
  a <- schash_annotate(p, model, batch = "groups", saliency = FALSE)
  expect_true(SeuratObject::Misc(a, slot = "schash")$batch)
  # Python: annotate(batch_key=) on the same cells
  counts <- assay_data(p, "counts")
  x <- schashR:::to_py_cells(counts)
  adata <- schashR:::schash_bridge()$`_anndata`(x$X, x$genes, x$cells)
  adata$obs[["grp"]] <- as.character(p$groups)
  pred <- model$py$predict(adata, batch_key = "grp")
  expect_equal(as.character(a$schash_label), as.character(pred$label))
  expect_equal(unname(a$schash_confidence), pred$confidence)
  # a vector, for Seurat, SingleCellExperiment and matrices alike
  b <- schash_annotate(p, model, batch = p$groups, saliency = FALSE)
  expect_equal(b$schash_label, a$schash_label)
  m <- schash_annotate(counts, model, batch = as.character(p$groups))
  expect_equal(m$schash_label, unname(a$schash_label))
  sce <- schash_annotate(pbmc_sce(), model, batch = "groups", saliency = FALSE)
  expect_equal(sce$schash_label, unname(a$schash_label))
  # errors in R terms
  expect_error(schash_annotate(p, model, batch = "nope"), "batch column 'nope' is not in the cell metadata")
  expect_error(schash_annotate(counts, model, batch = "groups"), "for a matrix, batch must be a vector")
  expect_error(schash_annotate(counts, model, batch = p$groups[1:5]), "5 batch values for 80 cells")
  bad <- as.character(p$groups); bad[1:2] <- NA
  expect_error(schash_annotate(counts, model, batch = bad), "2 cells have a missing batch")
  bad[1:2] <- ""
  expect_error(schash_annotate(counts, model, batch = bad), "2 cells have an empty batch")
  p$empty_type <- as.character(p$RNA_snn_res.1); p$empty_type[1] <- ""
  expect_error(schash_train(p, cell_type = "empty_type"), "1 cells have an empty cell type")
})

test_that("majority voting over Seurat clusters, or clusters computed from the codes", {
  skip_if_no_schash()
  p <- pbmc()
  a <- schash_annotate(p, pbmc_model(), over_clustering = "RNA_snn_res.0.8", saliency = FALSE)
  expect_true(is.factor(a$schash_majority_label))
  expect_equal(levels(a$schash_majority_label), c("0", "1", "2", "Unassigned"))
  per_cluster <- tapply(as.character(a$schash_majority_label), a$RNA_snn_res.0.8, function(v) length(unique(v)))
  expect_true(all(per_cluster == 1))
  expect_true(all(a$schash_majority_share > 0 & a$schash_majority_share <= 1))
  expect_message(b <- schash_annotate(p, pbmc_model(), over_clustering = "no_such", saliency = FALSE),
                 "over-clustering the cells by their schash codes")
  expect_true(is.factor(b$schash_over_clustering))
  expect_error(schash_annotate(p, pbmc_model(), over_clustering = rep("a", 3)), "3 over_clustering cluster values")
})

test_that("a query in Ensembl IDs is mapped onto a model trained on symbols", {
  skip_if_no_schash()
  p <- pbmc()
  m <- as.matrix(schashR:::seurat_expr(p, "RNA", NULL))
  ids <- reticulate::import("schash._genes")$identifiers(rownames(m))$ensembl_id
  ids <- vapply(seq_along(ids), function(i) if (is.null(ids[[i]])) rownames(m)[i] else paste0(ids[[i]], ".3"),
                character(1))
  by_name <- schash_annotate(m, pbmc_model(), saliency = FALSE)
  rownames(m) <- make.unique(ids)
  expect_message(by_id <- schash_annotate(m, pbmc_model(), saliency = FALSE), "through the ID/symbol table")
  expect_equal(by_id$schash_label, by_name$schash_label)
})

test_that("novelty_alpha at annotation changes only the pruned calls", {
  skip_if_no_schash()
  p <- pbmc()
  model <- pbmc_model()
  a <- schash_annotate(p, model, saliency = FALSE)
  b <- schash_annotate(p, model, saliency = FALSE, novelty_alpha = 0.6)
  expect_identical(a$schash_label, b$schash_label)
  expect_identical(a$schash_typicality, b$schash_typicality)
  un_a <- as.character(a$schash_pruned_label) == "Unassigned"
  un_b <- as.character(b$schash_pruned_label) == "Unassigned"
  expect_true(all(un_b[un_a]))
  expect_gt(sum(un_b), sum(un_a))
  expect_true(all(un_b == (un_a | b$schash_typicality < 0.6)))
  expect_error(schash_annotate(p, model, novelty_alpha = 2), "novelty_alpha must be NULL .* between 0 and 1")
  expect_error(schash_annotate(p, model, novelty_alpha = c(0.1, 0.2)), "novelty_alpha must be")
})
