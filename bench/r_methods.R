#!/usr/bin/env Rscript
# Peer methods in R for bench/accuracy.py: SingleR and Seurat label transfer.
# Usage: Rscript r_methods.R WORKDIR METHOD[,METHOD]
# WORKDIR holds ref.mtx and query.mtx (genes x cells, log-normalised), genes.txt and
# ref_labels.txt (one per line).  Writes <method>.csv (label per query cell, score)
# and <method>_time.csv (fit_s, predict_s) or <method>_error.txt.
args <- commandArgs(trailingOnly = TRUE)
wd <- args[1]
methods <- strsplit(args[2], ",")[[1]]
suppressPackageStartupMessages(library(Matrix))
genes <- readLines(file.path(wd, "genes.txt"))
genes <- make.unique(gsub("_", "-", genes))  # Seurat forbids underscores
labels <- readLines(file.path(wd, "ref_labels.txt"))
ref <- as(readMM(file.path(wd, "ref.mtx")), "CsparseMatrix")
qry <- as(readMM(file.path(wd, "query.mtx")), "CsparseMatrix")
dimnames(ref) <- list(genes, paste0("r", seq_len(ncol(ref))))
dimnames(qry) <- list(genes, paste0("q", seq_len(ncol(qry))))

write_err <- function(m, e) {
  msg <- gsub("[\r\n]+", " ", conditionMessage(e))
  writeLines(substr(msg, 1, 300), file.path(wd, paste0(m, "_error.txt")))
}

run_singler <- function() {
  suppressPackageStartupMessages(library(SingleR))
  t0 <- proc.time()[["elapsed"]]
  trained <- trainSingleR(ref, labels = labels)
  t1 <- proc.time()[["elapsed"]]
  pred <- classifySingleR(qry, trained)
  t2 <- proc.time()[["elapsed"]]
  sc <- pred$scores
  top <- apply(sc, 1, max)
  write.csv(data.frame(label = pred$labels, score = top), file.path(wd, "singler.csv"), row.names = FALSE)
  write.csv(data.frame(fit_s = t1 - t0, predict_s = t2 - t1), file.path(wd, "singler_time.csv"), row.names = FALSE)
}

run_seurat <- function() {
  suppressPackageStartupMessages(library(Seurat))
  t0 <- proc.time()[["elapsed"]]
  r <- CreateSeuratObject(counts = ref, meta.data = data.frame(celltype = labels, row.names = colnames(ref)))
  r <- SetAssayData(r, slot = "data", new.data = ref)
  q <- CreateSeuratObject(counts = qry)
  q <- SetAssayData(q, slot = "data", new.data = qry)
  if (nrow(ref) > 2000) {
    r <- FindVariableFeatures(r, nfeatures = 2000, verbose = FALSE)
    feats <- VariableFeatures(r)
  } else {
    feats <- rownames(ref)
  }
  nd <- max(2, min(30, ncol(ref) - 1, ncol(qry) - 1, length(feats) - 1))
  r <- ScaleData(r, features = feats, verbose = FALSE)
  r <- RunPCA(r, features = feats, npcs = nd, verbose = FALSE)
  anchors <- FindTransferAnchors(reference = r, query = q, features = feats, dims = 1:nd,
                                 reference.reduction = "pca", k.filter = min(200, ncol(qry) - 1),
                                 k.score = min(30, nd - 1), verbose = FALSE)
  t1 <- proc.time()[["elapsed"]]
  na <- nrow(anchors@anchors)
  # TransferData weights each query cell by its k.weight nearest query cells that carry an anchor:
  # k.weight may not exceed their number (small queries)
  nq <- length(unique(anchors@anchors[, "cell2"]))
  kw <- max(2, min(50, floor(na / 2), ncol(ref) - 1, nq))
  pred <- TransferData(anchorset = anchors, refdata = r$celltype, dims = 1:nd, k.weight = kw, verbose = FALSE)
  t2 <- proc.time()[["elapsed"]]
  write.csv(data.frame(label = pred$predicted.id, score = pred$prediction.score.max),
            file.path(wd, "seurat.csv"), row.names = FALSE)
  write.csv(data.frame(fit_s = t1 - t0, predict_s = t2 - t1), file.path(wd, "seurat_time.csv"), row.names = FALSE)
}

for (m in methods) {
  f <- switch(m, singler = run_singler, seurat = run_seurat, NULL)
  if (is.null(f)) next
  tryCatch(f(), error = function(e) write_err(m, e))
}
