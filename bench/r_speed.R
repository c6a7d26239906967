#!/usr/bin/env Rscript
# Training from R against training from Python, on the same data.
#
#   SCHASH_PYTHON=.venv/bin/python Rscript bench/r_speed.R [cells] [repeats] [out.md]
#
# Generates one count matrix (negative-binomial, 2,000 genes, 10 types with marker genes),
# writes it to a temporary MatrixMarket file, then trains on it, each run in its own fresh
# process: Python (`schash.train` on the matrix), R (`schash_train` through reticulate),
# and R with the BLAS fix switched off (SCHASH_NO_BLAS_FIX=1: torch's matrix products then
# run on R's BLAS).  Only the train call is timed.  Writes bench/results/r_speed.md.
args <- commandArgs(trailingOnly = TRUE)
n_cells <- if (length(args) >= 1) as.integer(args[1]) else 5000L
repeats <- if (length(args) >= 2) as.integer(args[2]) else 3L
out <- if (length(args) >= 3) args[3] else file.path("bench", "results", "r_speed.md")
py <- Sys.getenv("SCHASH_PYTHON", ".venv/bin/python")
n_genes <- 2000L
n_types <- 10L
dir <- tempfile("schash-r-speed-")
dir.create(dir)

set.seed(0)
types <- sample(n_types, n_cells, replace = TRUE)
base <- rgamma(n_genes, 0.3, 2)
mu <- matrix(base, n_genes, n_cells)
for (t in seq_len(n_types)) {
  markers <- ((t - 1) * 30 + seq_len(30))
  mu[markers, types == t] <- mu[markers, types == t] * 8
}
mu <- sweep(mu, 2, rlnorm(n_cells, 0, 0.3), "*")
counts <- Matrix::Matrix(matrix(rnbinom(length(mu), size = 2, mu = mu), n_genes, n_cells), sparse = TRUE)
dimnames(counts) <- list(paste0("g", seq_len(n_genes)), paste0("c", seq_len(n_cells)))
invisible(Matrix::writeMM(counts, file.path(dir, "counts.mtx")))
writeLines(paste0("type_", types), file.path(dir, "labels.txt"))
writeLines(rownames(counts), file.path(dir, "genes.txt"))

py_script <- file.path(dir, "train.py")
writeLines(c(
  "import sys, time",
  "import numpy as np, scipy.io",
  "import schash",
  "d = sys.argv[1]",
  "X = scipy.io.mmread(d + '/counts.mtx').T.tocsr()",
  "genes = open(d + '/genes.txt').read().split()",
  "labels = np.array(open(d + '/labels.txt').read().split())",
  "t = time.perf_counter()",
  "schash.train(X, labels, genes=genes, progress=False, seed=0)",
  "print(time.perf_counter() - t)"
), py_script)

r_script <- file.path(dir, "train.R")
writeLines(c(
  "d <- commandArgs(trailingOnly = TRUE)[1]",
  "if (dir.exists('r/schashR') && requireNamespace('pkgload', quietly = TRUE)) {",
  "  suppressMessages(pkgload::load_all('r/schashR', quiet = TRUE))",
  "} else library(schashR)",
  "counts <- methods::as(Matrix::readMM(file.path(d, 'counts.mtx')), 'CsparseMatrix')",
  "rownames(counts) <- readLines(file.path(d, 'genes.txt'))",
  "colnames(counts) <- paste0('c', seq_len(ncol(counts)))",
  "labels <- readLines(file.path(d, 'labels.txt'))",
  "invisible(schash_available())",
  "t <- proc.time()[['elapsed']]",
  "m <- schash_train(counts, cell_type = labels, seed = 0)",
  "cat(proc.time()[['elapsed']] - t, '\\n')"
), r_script)

run <- function(cmd, args, env = character()) {
  res <- suppressWarnings(system2(cmd, args, stdout = TRUE, stderr = FALSE, env = env))
  as.numeric(utils::tail(res, 1))
}
rscript <- file.path(R.home("bin"), "Rscript")
times <- list(python = numeric(), r = numeric(), r_no_fix = numeric())
for (i in seq_len(repeats)) {
  times$python <- c(times$python, run(py, c(py_script, dir)))
  times$r <- c(times$r, run(rscript, c(r_script, dir), env = paste0("SCHASH_PYTHON=", py)))
  if (i == 1) {  # slow; once is enough
    times$r_no_fix <- run(rscript, c(r_script, dir),
                          env = c(paste0("SCHASH_PYTHON=", py), "SCHASH_NO_BLAS_FIX=1"))
  }
  cat(sprintf("repeat %d: python %.1f s, R %.1f s\n", i, utils::tail(times$python, 1),
              utils::tail(times$r, 1)))
}
med <- vapply(times, stats::median, numeric(1))
# the machine is shared: each R run is compared with the Python run just before it
ratio <- stats::median(times$r / times$python)
lines <- c(
  "# Training from R against training from Python",
  "",
  sprintf("%s, %d cores; `Rscript bench/r_speed.R %d %d`: %d cells x %d genes, %d types (generated counts),",
          format(Sys.Date()), parallel::detectCores(), n_cells, repeats, n_cells, n_genes, n_types),
  "each run in a fresh process, R and Python alternating; only the train call is timed (from R:",
  "including the hand-over of the matrix to Python); medians of the repeats; the ratio is the",
  "median of each R run over the Python run just before it.",
  "",
  "| trained from | seconds (median) | runs | ratio to Python |",
  "|---|---:|---|---:|",
  sprintf("| Python `schash.train()` | %.1f | %s | 1.00 |", med[["python"]],
          paste(sprintf("%.1f", times$python), collapse = ", ")),
  sprintf("| R `schash_train()` | %.1f | %s | %.2f |", med[["r"]],
          paste(sprintf("%.1f", times$r), collapse = ", "), ratio),
  sprintf("| R, BLAS fix off (`SCHASH_NO_BLAS_FIX=1`) | %.1f | %s | %.2f |", med[["r_no_fix"]],
          paste(sprintf("%.1f", times$r_no_fix), collapse = ", "), med[["r_no_fix"]] / times$python[1]),
  "",
  "Inside R, torch's `sgemm_` calls resolve to R's BLAS (Debian's reference BLAS) unless",
  "schash preloads torch's own library with RTLD_DEEPBIND (python/schash/_blas.py).",
  sprintf("Load average while measuring: %s (other jobs share the cores).",
          if (file.exists("/proc/loadavg")) {
            paste(strsplit(readLines("/proc/loadavg"), " ")[[1]][1:3], collapse = ", ")
          } else "unknown")
)
writeLines(lines, out)
cat(lines, sep = "\n")
unlink(dir, recursive = TRUE)
