"""Checks of the numeric and choice arguments at the API boundary, and the progress-bar switch.

Each check raises :class:`InputError` with the argument's name, the value given and
what is allowed, before any work is done.  ``0`` is never silently read as "default".
"""

from __future__ import annotations

import math
import numbers
import re
import sys

from ._errors import InputError

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def whole(name: str, value, *, minimum: int = 1, maximum: int | None = None, none_ok: bool = False,
          hint: str = "") -> int | None:
    """``value`` as an int in [minimum, maximum] (``None`` allowed with ``none_ok``)."""
    if value is None and none_ok:
        return None
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or value < minimum or (maximum is not None and value > maximum):
        rng = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        extra = " or None" if none_ok else ""
        raise InputError(f"{name} must be a whole number {rng}{extra}, got {value!r}{hint}")
    return int(value)


def number(name: str, value, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False) -> float:
    """``value`` as a finite float within the given bounds."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        raise InputError(f"{name} must be a number in {left}{lo if lo is not None else '-inf'}, "
                         f"{hi if hi is not None else 'inf'}{right}, got {value!r}")
    return float(value)


def choice(name: str, value, allowed) -> str:
    if value not in allowed:
        raise InputError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
    return value


def neighbours(name: str, k, n_reference: int, *, none_ok: bool = False) -> int | None:
    """A number of nearest reference cells: at least 1 and at most the size of the reference database."""
    return whole(name, k, maximum=n_reference, none_ok=none_ok,
                 hint=f" (the model's reference database holds {n_reference} cells)")


def key_added(value) -> str:
    if not isinstance(value, str) or not _KEY.match(value):
        raise InputError(f"key_added must be a non-empty name of letters, digits and underscores (like 'schash'), "
                         f"got {value!r}")
    return value


def progress(value) -> bool:
    """``None``: bars only when stderr is an interactive terminal; ``True``/``False`` force them on/off."""
    if value is None:
        try:
            return bool(sys.stderr is not None and sys.stderr.isatty())
        except (AttributeError, ValueError):  # replaced or closed stderr
            return False
    if isinstance(value, bool):
        return value
    raise InputError(f"progress must be True, False or None (automatic), got {value!r}")


METHODS = ("auto", "anchor", "knn", "prototype")


def call(n_reference: int, *, method, k, neighbors=None, chunk_size=8192, novelty_alpha=None) -> None:
    """The arguments of a call (predict, annotate, the CLI, R), for a model with ``n_reference`` cells."""
    choice("method", method, METHODS)
    if novelty_alpha is not None:
        number("novelty_alpha", novelty_alpha, lo=0, hi=1)
    if method == "knn":
        neighbours("k", k, n_reference)
    else:
        whole("k", k)
    neighbours("neighbors", neighbors, n_reference, none_ok=True)
    whole("chunk_size", chunk_size)
