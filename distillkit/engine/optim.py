"""Heavy-ball SGD on a single tensor, for the synthetic images and the learned step size α.

Why not ``torch.optim.SGD``: constructing any ``torch.optim`` optimiser imports
``torch._dynamo`` (and with it sympy, triton and the inductor), which costs about
130 MiB of resident memory and a second of start-up in every distillation process —
a quarter of the whole ipc-1 footprint. The update here is the one ``torch.optim.SGD``
computes with ``dampening=0``, ``nesterov=False`` and no weight decay, bit for bit
(``tests/test_optim.py`` checks it against torch).
"""

from __future__ import annotations

import torch


class MomentumSGD:
    """``b ← μ·b + g`` (``b = g`` on the first step), ``p ← p − lr·b``; ``momentum = 0`` is plain SGD."""

    def __init__(self, param: torch.Tensor, lr: float, momentum: float = 0.0) -> None:
        self.param = param
        self.lr = lr
        self.momentum = momentum
        self.buffer: torch.Tensor | None = None

    def zero_grad(self) -> None:
        self.param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """Apply ``param.grad``; no gradient means no update (and no momentum decay), as in torch."""
        grad = self.param.grad
        if grad is None:
            return
        if self.momentum != 0.0:
            if self.buffer is None:
                self.buffer = grad.detach().clone()
            else:
                self.buffer.mul_(self.momentum).add_(grad)
            grad = self.buffer
        self.param.add_(grad, alpha=-self.lr)
