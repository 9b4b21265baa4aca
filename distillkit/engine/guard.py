"""Divergence checks for one outer iteration, run before anything is updated.

Trajectory matching diverges in known ways (NaN losses and runaway step sizes are
recurring reports on the issue trackers of the public trajectory-matching code): the matching loss
becomes NaN/inf or explodes, a gradient becomes non-finite, the pixels blow up
(too large ``lr_img``), or the learned step size α leaves (0, ∞).
``DivergenceGuard`` names the symptom; the engine rolls back to its last good
state and lowers the learning rates.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import torch

#: Recent good losses kept for the explosion test.
LOSS_WINDOW = 20
#: The explosion test needs at least this many good losses to compare against.
MIN_HISTORY = 5


class Diverged(Exception):
    """This iteration must not be applied; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class DivergenceGuard:
    """``max_loss_ratio``: a loss above this × the median of recent good losses counts as exploding.

    ``max_abs_pixel``: synthetic pixels (normalised units) beyond this count as diverged (0: off).
    """

    max_loss_ratio: float
    max_abs_pixel: float = 0.0
    recent: list[float] = field(default_factory=list)

    def check_loss(self, loss: torch.Tensor) -> float:
        value = float(loss.detach())
        if value != value or value in (float("inf"), float("-inf")):
            raise Diverged(f"matching loss is {value}")
        if self.max_loss_ratio > 0 and len(self.recent) >= MIN_HISTORY:
            median = statistics.median(self.recent)
            if value > self.max_loss_ratio * median:
                limit = f"{self.max_loss_ratio:g} × recent median {median:.4g}"
                raise Diverged(f"matching loss {value:.4g} exploded (> {limit})")
        return value

    def check_grads(self, **tensors: torch.Tensor | None) -> None:
        for name, grad in tensors.items():
            if grad is not None and not bool(torch.isfinite(grad).all()):
                raise Diverged(f"gradient of {name} is not finite")

    def check_images(self, images: torch.Tensor) -> None:
        largest = float(images.detach().abs().max())
        if largest != largest or (self.max_abs_pixel > 0 and largest > self.max_abs_pixel):
            raise Diverged(f"synthetic pixels diverged (max |x| = {largest:.4g})")

    def check_alpha(self, alpha: torch.Tensor) -> None:
        value = float(alpha.detach())
        if not (value > 0 and value != float("inf")):
            raise Diverged(f"learned step size α left (0, ∞): {value:.4g}")

    def accept(self, loss: float) -> None:
        self.recent = [*self.recent, loss][-LOSS_WINDOW:]
