"""The inner loop and the matching loss, kept as separate functions.

Keeping ``unroll``, ``matching_loss`` and the optimiser step apart leaves room for
a constant-memory backward or sharded unrolls without touching the outer loop.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from distillkit.engine.student import FlatStudent
from distillkit.labels import label_loss

#: Denominators below this are treated as a degenerate (stagnant) expert segment.
MIN_DENOMINATOR = 1e-12


def normalised_distance(theta: torch.Tensor, target: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """‖θ − target‖² / ‖reference − target‖² (MTT's scale-free parameter distance)."""
    denominator = (reference - target).pow(2).sum().clamp_min(MIN_DENOMINATOR)
    return (theta - target).pow(2).sum() / denominator


class BatchSampler:
    """Yield index chunks of a fresh random permutation each pass (MTT's ``batch_syn``)."""

    def __init__(self, n: int, batch: int, generator: torch.Generator) -> None:
        self.n = n
        self.batch = batch if 0 < batch < n else n
        self.generator = generator
        self.queue: list[torch.Tensor] = []

    def next(self) -> torch.Tensor:
        if not self.queue:
            perm = torch.randperm(self.n, generator=self.generator, device=self.generator.device)
            self.queue = list(perm.split(self.batch))
        return self.queue.pop(0)


def sgd_step(
    student: FlatStudent,
    theta: torch.Tensor,
    velocity: torch.Tensor | None,
    x: torch.Tensor,
    y: torch.Tensor,
    alpha: torch.Tensor,
    loss_weight: float,
    momentum: float,
    create_graph: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One student step on an (augmented) batch: g = ∂(w·CE)/∂θ, b = μb + g, θ ← θ − α·b.

    The one place the inner update is written, so the standard unroll and the
    constant-memory recomputation cannot drift apart. ``y`` holds class indices or
    soft-label logits (:func:`~distillkit.labels.label_loss`).
    """
    loss = loss_weight * label_loss(student(theta, x), y)
    (grad,) = torch.autograd.grad(loss, theta, create_graph=create_graph)
    velocity = grad if velocity is None or momentum == 0.0 else momentum * velocity + grad
    return theta - alpha * velocity, velocity


def unroll(
    student: FlatStudent,
    theta0: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    alpha: torch.Tensor,
    steps: int,
    sampler: BatchSampler,
    augment: Callable[[torch.Tensor], torch.Tensor],
    loss_weight: float = 1.0,
    momentum: float = 0.0,
    velocity: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Take ``steps`` differentiable SGD steps from ``theta0``; return θ̂_0..θ̂_N.

    Each step: a batch of synthetic images, DSA, cross-entropy scaled by
    ``loss_weight``, g = ∂ℓ/∂θ with ``create_graph`` (second-order terms stay in
    the graph), optional heavy-ball momentum b = μb + g, θ ← θ − α·b, starting
    from ``velocity`` (None: b = g on the first step).
    """
    params = [theta0]
    theta = theta0
    for _ in range(steps):
        idx = sampler.next()
        x = augment(images[idx])
        theta, velocity = sgd_step(
            student, theta, velocity, x, labels[idx], alpha, loss_weight, momentum, create_graph=True
        )
        params.append(theta)
    return params
