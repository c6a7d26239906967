"""The optimiser of the training loop."""

from __future__ import annotations

import torch


class AdamW:
    """AdamW (Loshchilov & Hutter), the same arithmetic as ``torch.optim.AdamW``'s single-tensor path.

    Written out because constructing any ``torch.optim`` optimizer imports ``torch._dynamo``,
    1.2 s per process — a large share of training a model on a few thousand cells — and its
    step wrappers add overhead per step.  The updates are bit-identical to torch's (tested).
    """

    def __init__(self, params: list, lr: float, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.wd, self.betas, self.eps = params, lr, weight_decay, betas, eps
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = 0

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        step_size = self.lr / (1 - b1**self.t)
        bc2_sqrt = (1 - b2**self.t) ** 0.5
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            if p.grad is None:
                continue
            g = p.grad
            p.mul_(1 - self.lr * self.wd)
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            p.addcdiv_(m, (v.sqrt() / bc2_sqrt).add_(self.eps), value=-step_size)
