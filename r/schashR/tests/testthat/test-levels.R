# Label levels: one model, calls at every level (schash_train(x, c("coarse", "fine"))).

# pbmc_small with a coarse level: its three clusters (RNA_snn_res.1) grouped into two.
pbmc_levels <- function() {
  p <- pbmc()
  fine <- as.character(p$RNA_snn_res.1)
  p$fine <- fine
  p$coarse <- ifelse(fine == "2", "B", "A")
  p
}

parent <- c("0" = "A", "1" = "A", "2" = "B")

level_model <- function() {
  if (is.null(.cache$levels) || reticulate::py_is_null_xptr(.cache$levels$py)) {
    .cache$levels <- do.call(schash_train, c(list(pbmc_levels(), c("coarse", "fine")), fast_args))
  }
  .cache$levels
}

level_cols <- c("schash_label_coarse", "schash_pruned_label_coarse", "schash_confidence_coarse",
                "schash_label_fine", "schash_pruned_label_fine", "schash_confidence_fine",
                "schash_resolved_label", "schash_resolved_level")

check_levels <- function(meta) {
  expect_true(all(level_cols %in% colnames(meta)))
  expect_true(is.factor(meta$schash_label_coarse))
  expect_equal(levels(meta$schash_label_coarse), c("A", "B", "Unassigned"))
  expect_equal(levels(meta$schash_resolved_level), c("coarse", "fine", "Unassigned"))
  fine <- as.character(meta$schash_label)
  # the levels always agree: the coarse call is the parent of the fine call
  expect_equal(as.character(meta$schash_label_coarse), unname(parent[fine]))
  expect_equal(as.character(meta$schash_label_fine), fine)
  # a trusted fine call is a trusted coarse call
  fine_kept <- meta$schash_pruned_label != "Unassigned"
  expect_true(all(meta$schash_pruned_label_coarse[fine_kept] != "Unassigned"))
  expect_true(all(meta$schash_confidence_coarse >= meta$schash_confidence - 1e-12))
  expect_equal(as.character(meta$schash_resolved_level[fine_kept]), rep("fine", sum(fine_kept)))
}

test_that("Python is this worktree's schash", {
  skip_if_no_schash()
  expect_true(reticulate::py_has_attr(reticulate::import("schash._levels"), "Hierarchy"))
})

test_that("Seurat: train on two levels, annotate every level", {
  skip_if_no_schash()
  model <- level_model()
  expect_output(print(model), "label levels: coarse > fine")
  expect_equal(unlist(model$info$levels), c("coarse", "fine"))
  a <- schash_annotate(pbmc_levels(), model, saliency = FALSE)
  meta <- a[[]]
  check_levels(meta)
  expect_gt(mean(as.character(meta$schash_label_coarse) == meta$coarse), 0.8)
})

test_that("SingleCellExperiment and matrix: levels as columns, a data.frame or a list", {
  skip_if_no_schash()
  sce <- pbmc_sce()
  sce$coarse <- ifelse(as.character(sce$RNA_snn_res.1) == "2", "B", "A")
  sce$fine <- as.character(sce$RNA_snn_res.1)
  model <- do.call(schash_train, c(list(sce, c("coarse", "fine")), fast_args))
  a <- schash_annotate(sce, model, saliency = FALSE)
  check_levels(as.data.frame(SummarizedExperiment::colData(a)))

  p <- pbmc_levels()
  m <- assay_data(p, "counts")
  labels <- data.frame(coarse = p$coarse, fine = p$fine)
  model2 <- do.call(schash_train, c(list(m, labels), fast_args))
  expect_equal(unlist(model2$info$levels), c("coarse", "fine"))
  model3 <- do.call(schash_train, c(list(m, list(p$coarse, p$fine)), fast_args))
  expect_equal(unlist(model3$info$levels), c("level1", "level2"))
  out <- schash_annotate(m, model2, saliency = FALSE)
  check_levels(out)
})

test_that("levels that do not nest are refused, naming the types and cells", {
  skip_if_no_schash()
  p <- pbmc_levels()
  p$coarse[which(p$fine == "0")[1]] <- "B"  # one cell of cluster 0 now in B
  expect_error(do.call(schash_train, c(list(p, c("coarse", "fine")), fast_args)),
               "do not nest.*'0' lies in 'A'.*and 'B' \\(1 cells, e.g. ")
  expect_error(schash_train(p, c("coarse", "nope")), "'nope' not in the cell metadata")
})

test_that("levels survive save and load", {
  skip_if_no_schash()
  model <- level_model()
  path <- tempfile(fileext = ".schash")
  schash_save(model, path)
  back <- schash_load(path)
  expect_equal(unlist(back$info$levels), c("coarse", "fine"))
  p <- pbmc_levels()
  a1 <- schash_annotate(p, model, saliency = FALSE)[[]]
  a2 <- schash_annotate(p, back, saliency = FALSE)[[]]
  expect_identical(a1[level_cols], a2[level_cols])
})
