"""The network's first layer on sparse standardised rows, for training on large batches.

A standardised row is ``z = base_g + delta`` where ``delta`` is zero wherever the input is zero,
so ``W z = W base_g + W delta`` costs the input's non-zeros only; the weight gradient comes from
the transposed ``delta`` (see :class:`SparseBatch`).  Used by :mod:`schash._loop` for batches of
at least ``SPARSE_MIN_WORK`` batch × genes.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ._module import HashMLP


def torch_csr(indptr, indices, values: torch.Tensor, shape) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch calls its sparse CSR support "beta"
        return torch.sparse_csr_tensor(torch.from_numpy(np.asarray(indptr, dtype=np.int64)),
                                       torch.from_numpy(np.asarray(indices, dtype=np.int64)), values, size=shape)


class SparseBatch:
    """Standardised rows as the first layer needs them: ``z = base_g + delta`` with ``delta`` as
    sparse as the input (zero wherever the input is zero), so ``W z = W base_g + W delta`` costs
    the non-zeros only.  ``delta_t`` is its transpose, for the weight gradient."""

    def __init__(self, delta, delta_t, groups, base):
        self.delta, self.delta_t, self.groups, self.base = delta, delta_t, groups, base

    def __len__(self) -> int:
        return len(self.groups)


class _SparseLinear(torch.autograd.Function):
    """``delta @ weight.T`` with its weight gradient ``(delta.T @ grad).T`` from a CSR transpose."""

    @staticmethod
    def forward(ctx, weight, delta, delta_t):
        ctx.delta_t = delta_t
        return delta @ weight.detach().t().contiguous()

    @staticmethod
    def backward(ctx, grad):
        return (ctx.delta_t @ grad).t(), None, None


def forward(model: HashMLP, batch) -> torch.Tensor:
    """The network's output (tanh) for dense rows or a :class:`SparseBatch`."""
    if not isinstance(batch, SparseBatch):
        return model(batch)
    first = model.net[0]
    h = _SparseLinear.apply(first.weight, batch.delta, batch.delta_t)
    h = h + (batch.base @ first.weight.t())[batch.groups] + first.bias
    return torch.tanh(model.net[1:](h))
