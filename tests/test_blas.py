"""The BLAS preload (schash._blas) leaves plain Python alone."""

import schash._blas as blas


def test_plain_python_needs_no_preload():
    # torch was imported with schash, before any R: nothing was preloaded, nothing is now
    assert blas.PRELOADED is None
    assert blas.prefer_torch_blas() is None
