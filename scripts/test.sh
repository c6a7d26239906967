#!/usr/bin/env bash
# Run every test: the R package's testthat suite (when R is installed), then pytest,
# whose cross-language tests drive R through rpy2.
set -euo pipefail
cd "$(dirname "$0")/.."
export SCHASH_PYTHON="$PWD/.venv/bin/python"
if command -v Rscript >/dev/null 2>&1; then
  Rscript -e 'res <- as.data.frame(testthat::test_local("r/schashR", reporter = "summary", stop_on_failure = TRUE))'
fi
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
