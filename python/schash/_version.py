"""The installed package's version (a module of its own, so that any module may import it)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("schash-annotate")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+unknown"
