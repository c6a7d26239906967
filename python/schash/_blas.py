"""Keep torch on its own BLAS when Python runs inside a program that exports another one.

torch's CPU library carries MKL and calls the Fortran ``sgemm_`` through the dynamic
linker.  Inside R (reticulate, or R embedded by rpy2) the global symbol scope already holds
R's BLAS (Debian's reference ``libblas.so.3``), which the linker prefers, so every torch
matrix product runs the unoptimised reference code: a 2000 × 2000 product took 7 s inside R
against 0.34 s in Python on the same machine.  Loading ``libtorch_cpu.so`` first with
``RTLD_DEEPBIND`` makes it resolve its own ``sgemm_`` (0.41 s inside R).  This is done only
on Linux, before torch is first imported, and only when a ``sgemm_`` is already visible in
the global scope (so plain Python is untouched).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys

PRELOADED: str | None = None  # the library loaded, for tests and diagnostics


def _foreign_blas_visible() -> bool:
    try:
        ctypes.CDLL(None).sgemm_  # noqa: B018 - the look-up is the test
    except (AttributeError, OSError):
        return False
    return True


def prefer_torch_blas() -> str | None:
    """Preload torch's CPU library with ``RTLD_DEEPBIND`` when another BLAS would interpose.

    Returns the path loaded, or ``None`` when nothing was needed or possible.
    """
    global PRELOADED
    if PRELOADED or "torch" in sys.modules or not hasattr(os, "RTLD_DEEPBIND"):
        return PRELOADED
    if os.environ.get("SCHASH_NO_BLAS_FIX") or not _foreign_blas_visible():
        return None
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin:
        return None
    lib = os.path.join(os.path.dirname(spec.origin), "lib", "libtorch_cpu.so")
    if not os.path.isfile(lib):
        return None
    try:
        ctypes.CDLL(lib, mode=os.RTLD_DEEPBIND | os.RTLD_GLOBAL)
    except OSError:  # pragma: no cover - then torch's own import reports the problem
        return None
    PRELOADED = lib
    return lib
