"""Two ways to get ∂loss/∂(images, α) through the N unrolled student steps.

``StandardBackprop`` keeps the whole unrolled graph (MTT): memory grows with N.

``ConstantMemoryBackprop`` (``distill.memory = "constant"``) keeps only θ̂_i, the
velocities, the batch indices and the RNG state of each step, and recomputes one
step at a time in a reverse sweep. It is *exact* reverse-mode differentiation
(all Hessian chain terms kept, unlike TESLA's published trick which is exact only
for N = 1, algorithms.md §8). With θ_{i+1} = θ_i − α·v_{i+1},
v_{i+1} = μ·v_i + g(θ_i, X_i) and adjoints θ̄, v̄ the sweep is, for i = N−1 … 0::

    ᾱ   += −⟨θ̄_{i+1}, v_{i+1}⟩
    u    = v̄_{i+1} − α·θ̄_{i+1}                (adjoint of v_{i+1})
    θ̄_i  = θ̄_{i+1} + (∂g/∂θ_i)ᵀu + ∂loss/∂θ_i  (direct terms: matching points)
    X̄   += (∂g/∂X)ᵀu
    v̄_i  = μ·u

Each (∂g/∂·)ᵀu is one double-backward through a single recomputed step, so peak
memory is that of one step plus O(N·P) floats for the stored θ̂_i and v_i.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distillkit.engine.student import FlatStudent
from distillkit.engine.unroll import BatchSampler, sgd_step, unroll

Augment = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class UnrollSetup:
    """What both strategies need to unroll the student on the synthetic set."""

    student: FlatStudent
    images: torch.Tensor
    labels: torch.Tensor
    alpha: torch.Tensor
    steps: int
    sampler: BatchSampler
    augment: Augment
    generator: torch.Generator
    momentum: float


class StandardBackprop:
    """Unroll with ``create_graph`` and call ``loss.backward()``: memory grows linearly with N."""

    def __init__(self, setup: UnrollSetup) -> None:
        self.s = setup

    def forward(self, theta0: torch.Tensor, loss_weight: float) -> list[torch.Tensor]:
        s = self.s
        theta0 = theta0.detach().clone().requires_grad_(True)
        return unroll(
            s.student,
            theta0,
            s.images,
            s.labels,
            s.alpha,
            s.steps,
            s.sampler,
            s.augment,
            loss_weight=loss_weight,
            momentum=s.momentum,
        )

    def backward(self, loss: torch.Tensor, params: list[torch.Tensor]) -> None:
        loss.backward()


class ConstantMemoryBackprop:
    """Exact reverse sweep with per-step recomputation (see the module docstring)."""

    def __init__(self, setup: UnrollSetup) -> None:
        self.s = setup
        self._velocities: list[torch.Tensor] = []
        self._batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._loss_weight = 1.0

    def forward(self, theta0: torch.Tensor, loss_weight: float) -> list[torch.Tensor]:
        """Run the N steps without a graph; return leaf tensors θ̂_0..θ̂_N that require grad."""
        s = self.s
        self._loss_weight = loss_weight
        self._velocities, self._batches = [], []
        images, alpha = s.images.detach(), s.alpha.detach()
        theta = theta0.detach().clone()
        velocity: torch.Tensor | None = None
        params = [theta.requires_grad_(True)]
        for _ in range(s.steps):
            idx = s.sampler.next()
            rng_state = s.generator.get_state()
            x = s.augment(images[idx])
            step_theta = theta.detach().requires_grad_(True)
            new_theta, velocity = sgd_step(
                s.student, step_theta, velocity, x, s.labels[idx], alpha, loss_weight, s.momentum, False
            )
            theta, velocity = new_theta.detach(), velocity.detach()
            self._velocities.append(velocity)
            self._batches.append((idx, rng_state))
            params.append(theta.requires_grad_(True))
        return params

    def backward(self, loss: torch.Tensor, params: list[torch.Tensor]) -> None:
        """Accumulate ∂loss/∂images into ``images.grad`` and ∂loss/∂α into ``alpha.grad``."""
        s = self.s
        direct = torch.autograd.grad(loss, params, allow_unused=True)
        theta_bar = _or_zeros(direct[-1], params[-1])
        v_bar = torch.zeros_like(theta_bar)
        alpha_bar = torch.zeros_like(s.alpha)
        images_bar = torch.zeros_like(s.images)
        alpha = s.alpha.detach()
        resume_state = s.generator.get_state()
        try:
            for i in reversed(range(s.steps)):
                alpha_bar -= (theta_bar * self._velocities[i]).sum()
                u = v_bar - alpha * theta_bar
                theta_vjp, images_vjp = self._step_vjp(i, params[i], u)
                theta_bar = theta_bar + theta_vjp
                if direct[i] is not None:
                    theta_bar = theta_bar + direct[i]
                if images_vjp is not None:
                    images_bar += images_vjp
                v_bar = s.momentum * u
        finally:
            s.generator.set_state(resume_state)
        _accumulate(s.images, images_bar)
        _accumulate(s.alpha, alpha_bar)

    def _step_vjp(
        self, i: int, theta_i: torch.Tensor, u: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(∂g/∂θ_i)ᵀu and (∂g/∂X)ᵀu for step i, replaying its batch and augmentation draws."""
        s = self.s
        idx, rng_state = self._batches[i]
        s.generator.set_state(rng_state)
        theta = theta_i.detach().requires_grad_(True)
        x = s.augment(s.images[idx])
        inner = self._loss_weight * F.cross_entropy(s.student(theta, x), s.labels[idx])
        (grad,) = torch.autograd.grad(inner, theta, create_graph=True)
        theta_vjp, images_vjp = torch.autograd.grad(grad, [theta, s.images], u, allow_unused=True)
        return _or_zeros(theta_vjp, theta), images_vjp


def _or_zeros(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad


def _accumulate(tensor: torch.Tensor, grad: torch.Tensor) -> None:
    tensor.grad = grad if tensor.grad is None else tensor.grad + grad


#: ``distill.memory`` → strategy.
BACKPROP = {"standard": StandardBackprop, "constant": ConstantMemoryBackprop}
