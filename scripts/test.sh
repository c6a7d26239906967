#!/usr/bin/env bash
# Run every test: ruff, the R package's testthat suite (when R is installed), a second time against
# SeuratObject 5 when scripts/setup.sh built it into .rlib5, then pytest, whose
# cross-language tests drive R through rpy2.
set -euo pipefail
cd "$(dirname "$0")/.."
export SCHASH_PYTHON="$PWD/.venv/bin/python"
# the linter first: its rules are chosen in pyproject.toml ([tool.ruff])
.venv/bin/ruff check python tests bench
R_TESTS='res <- as.data.frame(testthat::test_local("r/schashR", reporter = "summary", stop_on_failure = TRUE))'
if command -v Rscript >/dev/null 2>&1; then
  Rscript -e "$R_TESTS"
  if [ -d .rlib5/SeuratObject ]; then
    echo "R tests again, against SeuratObject $(R_LIBS=.rlib5 Rscript -e 'cat(format(packageVersion("SeuratObject")))') (.rlib5)"
    R_LIBS=.rlib5 Rscript -e "$R_TESTS"
  else
    echo "skipping the Seurat v5 R tests: no .rlib5 (scripts/setup.sh --with-r builds it from ../shared/r-src)"
  fi
fi
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
