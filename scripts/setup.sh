#!/usr/bin/env bash
# Set up schash from nothing in ./.venv (Python >= 3.10).
#   bash scripts/setup.sh            Python package, CPU torch, test tools
#   bash scripts/setup.sh --with-r   also R 4.x with Seurat/SingleCellExperiment (Debian/Ubuntu packages,
#                                    needs root or sudo), rpy2 + anndata2ri, and the R package schashR
#   bash scripts/setup.sh --bench    also the benchmark peers (CellTypist, faiss)
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_R=0 BENCH=0
for arg in "$@"; do
  case "$arg" in
    --with-r) WITH_R=1 ;;
    --bench) BENCH=1 ;;
    *) echo "setup.sh: unknown option $arg (use --with-r, --bench)" >&2; exit 2 ;;
  esac
done

if [ "$WITH_R" = 1 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq r-base-core r-cran-seurat r-cran-seuratobject r-bioc-singlecellexperiment \
    r-cran-reticulate r-cran-testthat r-cran-matrix r-cran-ggplot2 r-cran-knitr r-base-dev libffi-dev >/dev/null
  [ "$BENCH" = 1 ] && $SUDO apt-get install -y -qq r-bioc-singler >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
# A CPU build of torch: the wheel on local disk where there is one, else PyTorch's CPU index
# (a plain `pip install torch` on Linux pulls a CUDA build of several GB).
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if ls /opt/wheels/torch-2.13.0* >/dev/null 2>&1; then
    "${PIP[@]}" --find-links /opt/wheels "torch==2.13.0"
  else
    "${PIP[@]}" torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
EXTRAS="test"
[ "$WITH_R" = 1 ] && EXTRAS="$EXTRAS,r"
[ "$BENCH" = 1 ] && EXTRAS="$EXTRAS,bench"
# numpy<2 throughout: R's reticulate older than 1.36 (Debian ships 1.28) cannot load NumPy 2,
# and R uses this same environment.
"${PIP[@]}" "numpy<2" -e ".[$EXTRAS]"

if [ "$WITH_R" = 1 ]; then
  R CMD INSTALL --no-test-load r/schashR >/dev/null
fi
echo "schash is set up in .venv ($(.venv/bin/python -c 'import schash; print(schash.__version__)'))"
