"""The BLAS preload (schash._blas) leaves plain Python alone."""

import os
import subprocess
import sys
from pathlib import Path


def test_plain_python_needs_no_preload():
    # a fresh interpreter (this one may have R embedded by rpy2): no foreign sgemm_, nothing preloaded
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1] / "python"),
                                                       os.environ.get("PYTHONPATH", "")]))
    code = "import schash._blas as b, schash; print(b._foreign_blas_visible(), b.PRELOADED)"
    out = subprocess.run([sys.executable, "-c", code],
                         capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == ["False", "None"]
