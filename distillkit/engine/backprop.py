"""Two ways to get ∂loss/∂(images, α) through the N unrolled student steps.

``StandardBackprop`` keeps the whole unrolled graph (MTT): memory grows with N.

``ConstantMemoryBackprop`` (``distill.memory = "constant"``) keeps only θ̂_i, the
velocities, the batch indices and the RNG state of each step, and recomputes one
step at a time in a reverse sweep. It is *exact* reverse-mode differentiation
(all Hessian chain terms kept, unlike the published constant-memory trick, which is
exact only for N = 1; Cui et al., arXiv 2211.10586). With θ_{i+1} = θ_i − α·v_{i+1},
v_{i+1} = μ·v_i + g(θ_i, X_i) and adjoints θ̄, v̄ the sweep is, for i = N−1 … 0::

    ᾱ   += −⟨θ̄_{i+1}, v_{i+1}⟩
    u    = v̄_{i+1} − α·θ̄_{i+1}                (adjoint of v_{i+1})
    θ̄_i  = θ̄_{i+1} + (∂g/∂θ_i)ᵀu + ∂loss/∂θ_i  (direct terms: matching points)
    X̄   += (∂g/∂X)ᵀu
    v̄_i  = μ·u

With learnable soft labels Y the same sweep adds Ȳ += (∂g/∂Y)ᵀu.
Each (∂g/∂·)ᵀu is one double-backward through a single recomputed step, so peak
memory is that of one step plus O(N·P) floats for the stored θ̂_i and v_i.
With ``distill.graph_steps = K`` the last K steps keep their graph instead (autograd
differentiates them and hands θ̄, v̄ at the split to the sweep): memory then holds K
step graphs, still independent of N, and K recomputations are saved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from distillkit.engine.student import FlatStudent
from distillkit.engine.unroll import BatchSampler, sgd_step, unroll
from distillkit.labels import label_loss

Augment = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class UnrollSetup:
    """What both strategies need to unroll the student on the synthetic set.

    ``labels`` are class indices or soft-label logits; logits that require grad are
    learned, and both strategies then also accumulate ``labels.grad``.
    """

    student: FlatStudent
    images: torch.Tensor
    labels: torch.Tensor
    alpha: torch.Tensor
    steps: int
    sampler: BatchSampler
    augment: Augment
    generator: torch.Generator
    momentum: float
    graph_steps: int = 0


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
        """Only images, α (and learned labels): autograd then skips θ̄_0, which nothing uses."""
        s = self.s
        leaves = _learned(s)
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        for leaf, grad in zip(leaves, grads, strict=True):
            _accumulate(leaf, _or_zeros(grad, leaf))


class ConstantMemoryBackprop:
    """Exact reverse sweep with per-step recomputation (see the module docstring).

    The last ``graph_steps`` (K) steps are unrolled with their graph, as the standard
    strategy does, and differentiated by autograd; only the first N − K steps are
    recomputed. K trades memory (K step graphs) for time (K fewer recomputations).
    """

    def __init__(self, setup: UnrollSetup) -> None:
        self.s = setup
        self._velocities: list[torch.Tensor] = []
        self._batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._loss_weight = 1.0
        self._split = 0
        self._split_velocity: torch.Tensor | None = None

    def forward(self, theta0: torch.Tensor, loss_weight: float) -> list[torch.Tensor]:
        """θ̂_0..θ̂_N: leaves (no graph) up to the split, then K steps with their graph."""
        s = self.s
        self._loss_weight = loss_weight
        self._velocities, self._batches = [], []
        self._split = max(s.steps - s.graph_steps, 0)
        images, alpha, labels = s.images.detach(), s.alpha.detach(), s.labels.detach()
        theta = theta0.detach().clone()
        velocity: torch.Tensor | None = None
        params = [theta.requires_grad_(True)]
        for _ in range(self._split):
            idx = s.sampler.next()
            rng_state = s.generator.get_state()
            x = s.augment(images[idx])
            step_theta = theta.detach().requires_grad_(True)
            new_theta, velocity = sgd_step(
                s.student, step_theta, velocity, x, labels[idx], alpha, loss_weight, s.momentum, False
            )
            theta, velocity = new_theta.detach(), velocity.detach()
            self._velocities.append(velocity)
            self._batches.append((idx, rng_state))
            params.append(theta.requires_grad_(True))
        self._split_velocity = None if velocity is None else velocity.detach().requires_grad_(True)
        tail = unroll(
            s.student,
            params[-1],
            s.images,
            s.labels,
            s.alpha,
            s.steps - self._split,
            s.sampler,
            s.augment,
            loss_weight=loss_weight,
            momentum=s.momentum,
            velocity=self._split_velocity,
        )
        return params + tail[1:]

    def backward(self, loss: torch.Tensor, params: list[torch.Tensor]) -> None:
        """Accumulate ∂loss/∂images, ∂loss/∂α (and ∂loss/∂labels when learned) into their ``.grad``."""
        s, split = self.s, self._split
        velocity = [self._split_velocity] if self._split_velocity is not None else []
        leaves = params[: split + 1]
        learned = _learned(s)
        grads = torch.autograd.grad(loss, [*leaves, *velocity, *learned], allow_unused=True)
        direct = grads[: split + 1]
        theta_bar = _or_zeros(direct[split], params[split])
        v_bar = _or_zeros(grads[split + 1], theta_bar) if velocity else torch.zeros_like(theta_bar)
        images_bar, alpha_bar, *labels_bar = (
            _or_zeros(g, leaf) for g, leaf in zip(grads[-len(learned) :], learned, strict=True)
        )
        alpha = s.alpha.detach()
        resume_state = s.generator.get_state()
        try:
            for i in reversed(range(split)):
                alpha_bar -= (theta_bar * self._velocities[i]).sum()
                u = v_bar - alpha * theta_bar
                theta_vjp, data_vjps = self._step_vjp(i, params[i], u)
                if theta_vjp is not None:
                    theta_bar = theta_bar + theta_vjp
                if direct[i] is not None:
                    theta_bar = theta_bar + direct[i]
                for bar, vjp in zip([images_bar, *labels_bar], data_vjps, strict=True):
                    if vjp is not None:
                        bar += vjp
                v_bar = s.momentum * u
        finally:
            s.generator.set_state(resume_state)
        for leaf, bar in zip(learned, [images_bar, alpha_bar, *labels_bar], strict=True):
            _accumulate(leaf, bar)

    def _step_vjp(
        self, i: int, theta_i: torch.Tensor, u: torch.Tensor
    ) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
        """(∂g/∂θ_i)ᵀu and [(∂g/∂X)ᵀu, (∂g/∂Y)ᵀu when labels are learned] for step i,
        replaying its batch and augmentation draws.

        θ̄_0 is never used, so step 0 asks autograd for the data terms only. The product is taken
        as the gradient of the scalar ⟨g, u⟩, whose backward hands u to g exactly (1·u): passing u
        as ``grad_outputs`` instead makes autograd import ``torch.fx``'s symbolic shapes and sympy
        to check its shape (+34 MiB RSS, a tenth of an ipc-1 process's working memory).
        """
        s = self.s
        idx, rng_state = self._batches[i]
        s.generator.set_state(rng_state)
        theta = theta_i.detach().requires_grad_(True)
        x = s.augment(s.images[idx])
        inner = self._loss_weight * label_loss(s.student(theta, x), s.labels[idx])
        (grad,) = torch.autograd.grad(inner, theta, create_graph=True)
        projected = (grad * u).sum()
        data = [s.images, *([s.labels] if s.labels.requires_grad else [])]
        if i == 0:
            return None, list(torch.autograd.grad(projected, data, allow_unused=True))
        theta_vjp, *data_vjps = torch.autograd.grad(projected, [theta, *data], allow_unused=True)
        return theta_vjp, data_vjps


def _learned(s: UnrollSetup) -> list[torch.Tensor]:
    """The leaves the outer step updates: images, α, and the labels when they are learned."""
    return [s.images, s.alpha, *([s.labels] if s.labels.requires_grad else [])]


def _or_zeros(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad


def _accumulate(tensor: torch.Tensor, grad: torch.Tensor) -> None:
    tensor.grad = grad if tensor.grad is None else tensor.grad + grad


#: ``distill.memory`` → strategy.
BACKPROP = {"standard": StandardBackprop, "constant": ConstantMemoryBackprop}
