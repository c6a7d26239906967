"""schash: deep-hashing cell-type annotation for single-cell RNA-seq.

>>> import schash
>>> model = schash.train(reference, cell_type_key="cell_type", batch_key="batch")
>>> schash.annotate(query, model)        # writes obs["schash_label"], ...
>>> model.save("model.schash"); model = schash.load("model.schash")
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("schash-annotate")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+unknown"

from ._blas import prefer_torch_blas as _prefer_torch_blas

_prefer_torch_blas()  # before torch is imported: inside R, torch must not use R's BLAS

from ._api import annotate, train  # noqa: E402
from ._errors import GeneOverlapError, InputError, LabelKeyError, ModelFileError, SchashError
from ._io import load_model as load
from ._model import UNASSIGNED, SchashModel
from ._saliency import top_genes
from . import pl

__all__ = [
    "train", "annotate", "load", "top_genes", "pl", "SchashModel", "UNASSIGNED", "__version__",
    "SchashError", "InputError", "GeneOverlapError", "LabelKeyError", "ModelFileError",
]
