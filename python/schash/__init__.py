"""schash: deep-hashing cell-type annotation for single-cell RNA-seq.

>>> import schash
>>> model = schash.train(reference, cell_type_key="cell_type", batch_key="batch")
>>> schash.annotate(query, model)        # writes obs["schash_label"], ...
>>> model.save("model.schash"); model = schash.load("model.schash")
"""

from ._blas import prefer_torch_blas as _prefer_torch_blas
from ._version import __version__

_prefer_torch_blas()  # before torch is imported: inside R, torch must not use R's BLAS

from . import _dask, pl  # noqa: E402, F401  (_dask: Dask input for Source; Dask itself is imported only when used)
from ._annotate import annotate  # noqa: E402
from ._errors import GeneOverlapError, InputError, LabelKeyError, ModelFileError, SchashError  # noqa: E402
from ._model import UNASSIGNED, SchashModel  # noqa: E402
from ._saliency import top_genes  # noqa: E402
from ._train import train  # noqa: E402

load = SchashModel.load

__all__ = [
    "train", "annotate", "load", "top_genes", "pl", "SchashModel", "UNASSIGNED", "__version__",
    "SchashError", "InputError", "GeneOverlapError", "LabelKeyError", "ModelFileError",
]
