"""SGD on stacked parameters: each network of a packed ensemble follows its own ``torch.optim.SGD``.

Kept apart from :mod:`distillkit.ensemble` because it is plain optimiser arithmetic, tested on its
own against ``torch.optim.SGD`` per network. A single evaluation network trains with it too (a pack of
one, :func:`distillkit.evaluate.train_on_set`): constructing a torch optimiser imports ``torch._dynamo``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class PackedSGD:
    """``torch.optim.SGD`` (momentum, weight decay, no dampening or Nesterov) on stacked parameters.

    The same tensor operations in the same order as ``torch.optim.SGD``'s single-tensor step, so each
    network's slice follows its own SGD exactly: ``d = g + wd·p``; with momentum ≠ 0, ``buf = d`` on
    the first such step, else ``buf = momentum·buf + d``, and ``d = buf``; then ``p -= lr·d``, with
    ``lrs[k]`` for network k. ``lrs`` and ``momentum`` may change between steps, as a param group's
    may (momentum 0 skips the buffers and leaves them as they are, as torch does).
    """

    def __init__(
        self, params: Sequence[Tensor], lrs: Sequence[float], momentum: float, weight_decay: float
    ) -> None:
        self.params = list(params)
        self.lrs = list(lrs)
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.buffers: list[Tensor | None] = [None] * len(self.params)

    @torch.no_grad()
    def step(self, grads: Sequence[Tensor]) -> None:
        spans = _runs(self.lrs)
        for i, (param, grad) in enumerate(zip(self.params, grads, strict=True)):
            if self.weight_decay != 0:
                grad = grad.add(param, alpha=self.weight_decay)
            if self.momentum != 0:
                buffer = self.buffers[i]
                if buffer is None:
                    buffer = self.buffers[i] = torch.clone(grad).detach()
                else:
                    buffer.mul_(self.momentum).add_(grad)
                grad = buffer
            for start, stop, lr in spans:
                if start == 0 and stop == len(param):
                    param.add_(grad, alpha=-lr)
                else:
                    param[start:stop].add_(grad[start:stop], alpha=-lr)


def _runs(values: Sequence[float]) -> list[tuple[int, int, float]]:
    """Maximal runs of equal values as (start, stop, value): one in-place update per run."""
    runs: list[tuple[int, int, float]] = []
    for index, value in enumerate(values):
        if runs and runs[-1][2] == value:
            runs[-1] = (runs[-1][0], index + 1, value)
        else:
            runs.append((index, index + 1, value))
    return runs
