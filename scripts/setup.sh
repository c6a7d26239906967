#!/usr/bin/env bash
# Set up schash from nothing in ./.venv (Python >= 3.10).
#   bash scripts/setup.sh            Python package, CPU torch, test tools, the Dask extra
#   bash scripts/setup.sh --with-r   also R 4.x with Seurat/SingleCellExperiment (Debian/Ubuntu packages,
#                                    needs root or sudo), rpy2 + anndata2ri, and the R package schashR
#   bash scripts/setup.sh --bench    also the benchmark peers (CellTypist, faiss)
# With --with-r, when ../shared/r-src holds the sources of Matrix >= 1.6.4 and SeuratObject 5
# (see its README), they are also built into the private library .rlib5 (ignored by git;
# the system library is untouched), against which scripts/test.sh runs the R tests a second
# time, for Seurat v5 objects.  Without that folder this step is skipped with a message.
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
EXTRAS="test,dask"  # the Dask extra too, so that the LocalCluster tests (tests/test_dask.py) run
[ "$WITH_R" = 1 ] && EXTRAS="$EXTRAS,r"
[ "$BENCH" = 1 ] && EXTRAS="$EXTRAS,bench"
# numpy<2 throughout: R's reticulate older than 1.36 (Debian ships 1.28) cannot load NumPy 2,
# and R uses this same environment; so pyarrow<21 (26 refuses NumPy 1; 20 is checked with 1.26).
"${PIP[@]}" "numpy<2" "pyarrow<21" -e ".[$EXTRAS]"

if [ "$WITH_R" = 1 ]; then
  R CMD INSTALL --no-test-load r/schashR >/dev/null
  RSRC=../shared/r-src
  if ls "$RSRC"/Matrix_*.tar.gz "$RSRC"/SeuratObject_5*.tar.gz >/dev/null 2>&1; then
    if R_LIBS=.rlib5 Rscript -e 'quit(status = !isTRUE(packageVersion("SeuratObject", lib.loc = ".rlib5") >= "5.0.0"))' \
        >/dev/null 2>&1; then
      echo "Seurat v5 test library .rlib5 is already built"
    else
      echo "building Matrix and SeuratObject 5 from $RSRC into .rlib5 (a few minutes)"
      mkdir -p .rlib5
      if ! { R CMD INSTALL -l .rlib5 "$(ls "$RSRC"/Matrix_*.tar.gz | tail -1)" &&
             R_LIBS=.rlib5 R CMD INSTALL -l .rlib5 "$(ls "$RSRC"/SeuratObject_5*.tar.gz | tail -1)"; } \
           >.rlib5.log 2>&1; then
        tail -20 .rlib5.log >&2; echo "setup.sh: building the Seurat v5 test library failed (.rlib5.log)" >&2
        rm -rf .rlib5; exit 1
      fi
    fi
  else
    echo "no Matrix/SeuratObject 5 sources in $RSRC: the R tests will not be run against Seurat v5"
  fi
fi
echo "schash is set up in .venv ($(.venv/bin/python -c 'import schash; print(schash.__version__)'))"
