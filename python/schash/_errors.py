"""Exceptions raised by schash.

Every error a user can trigger with bad input is a :class:`SchashError`; the
subclasses also derive from the built-in exception a Python user would catch
(``ValueError``, ``KeyError``) so existing ``except`` clauses keep working.
"""


class SchashError(Exception):
    """Base class of all schash errors."""


class InputError(SchashError, ValueError):
    """The expression data or labels given to schash cannot be used as they are."""


class GeneOverlapError(InputError):
    """Too few of the model's genes are present in the query."""


class LabelKeyError(SchashError, KeyError):
    """A metadata column named by the user does not exist."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class ModelFileError(SchashError, ValueError):
    """A file is not a schash model, is damaged, or has an unsupported format version."""
