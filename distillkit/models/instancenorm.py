"""Instance norm (``GroupNorm`` with one group per channel) with a hand-written double backward.

Trajectory matching differentiates the student's gradient, so every layer's backward is itself
differentiated. For ``group_norm`` PyTorch then switches from its fused backward kernel to a
composite of element-wise ops and differentiates that composite again: in a ``fmnist-cpu``
distillation iteration the norm's double backward took more time than any layer but the
convolutions. Here the first backward is always the fused kernel, and its backward — the
vector-Jacobian product of (x, w, g) ↦ (∂x, ∂w, ∂b) — is written out: five sums per
(sample, channel) and two fused passes that combine g, x and the incoming cotangent.

Derivation, per sample and channel, over its M = H·W values: x̂ = (x − μ)·r with
r = (σ² + ε)^-½, h = w·g and ∂x = r·(h − mean h − x̂·mean(h x̂)), ∂w = Σ g x̂, ∂b = Σ g. For
cotangents A (of ∂x), a_w, a_b: the gradient to h is r·Â with Â = A − mean A − x̂·mean(A x̂)
(the same projection as the first backward); to x̂ it is −r·(h·mean(A x̂) + A·mean(h x̂)) + a_w·g;
to r it is M·(mean(A h) − mean h·mean A − mean(h x̂)·mean(A x̂)); and x̂, r carry theirs back to
x as the first backward does, plus −r²·x̂/M per unit of r. Everything collapses to
per-(sample, channel) scalars times g, A and x, so no x̂ is ever stored or materialised.

The values equal ``F.group_norm`` (same forward kernel; the same backward kernel outside
create-graph backward passes, so expert training and evaluation are unchanged bit for bit);
second derivatives agree with PyTorch's to float rounding (``tests/test_instancenorm.py``
checks both against float64 finite differences). A third derivative raises an error.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _shape(x: Tensor) -> tuple[int, int, int]:
    """``(N, C, H·W)`` of an ``[N, C, ...]`` map."""
    return x.shape[0], x.shape[1], math.prod(x.shape[2:])


def _format(x: Tensor) -> torch.memory_format:
    """The layout the kernels get ``x`` and its cotangents in: NHWC where ``x`` already is (as
    ``F.group_norm`` keeps it), NCHW otherwise."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _rows(x: Tensor) -> Tensor:
    """``x`` as ``[N, C, M]``: one row per (sample, channel), whatever the map's rank."""
    return x.reshape(x.shape[0], x.shape[1], -1)


def _sums(a: Tensor, b: Tensor) -> Tensor:
    """Σ a·b over each (sample, channel), shape ``[N, C]``."""
    return torch.linalg.vecdot(_rows(a), _rows(b))


class _InstanceNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:  # type: ignore[override]
        x = x.contiguous(memory_format=_format(x))
        n, c, m = _shape(x)
        y, mean, rstd = torch.native_group_norm(x, weight, bias, n, c, m, c, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:  # type: ignore[override]
        x, weight, mean, rstd = ctx.saved_tensors
        dx, dw, db = _InstanceNormBackward.apply(grad, x, weight, mean, rstd)
        return dx, dw, db, None


class _InstanceNormBackward(torch.autograd.Function):
    """(g, x, w) ↦ (∂x, ∂w, ∂b) by the fused kernel; its own backward is the closed form above."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, grad: Tensor, x: Tensor, weight: Tensor, mean: Tensor, rstd: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        n, c, m = _shape(x)
        grad = grad.contiguous(memory_format=_format(x))
        dx, dw, db = torch.ops.aten.native_group_norm_backward(
            grad, x, mean, rstd, weight, n, c, m, c, [True, True, True]
        )
        ctx.save_for_backward(grad, x, weight, mean, rstd)
        return dx, dw, db

    @staticmethod
    def backward(ctx, a: Tensor, a_w: Tensor, a_b: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None]:  # type: ignore[override]
        if torch.is_grad_enabled():
            # once_differentiable would silently treat g, x and w as constants in a third derivative.
            raise RuntimeError(
                "InstanceNorm has exact first and second derivatives only; "
                "a create_graph backward through its second derivative (third order) is not supported"
            )
        g, x, weight, mean, rstd = ctx.saved_tensors
        n, c, m = _shape(x)
        a = a.contiguous(memory_format=_format(x))
        mu, r, w = mean.view(n, c), rstd.view(n, c), weight.view(1, c)
        a_w, a_b = a_w.view(1, c), a_b.view(1, c)
        # Means over each (sample, channel): of g, g·x̂, A, A·x̂, A·g (x̂ = r·(x − μ), never built).
        mean_g, mean_a = _rows(g).mean(2), _rows(a).mean(2)
        mean_gx = r * (_sums(g, x) / m - mu * mean_g)
        mean_ax = r * (_sums(a, x) / m - mu * mean_a)
        mean_ag = _sums(a, g) / m
        wr = w * r
        # ∂/∂g = w·r·Â + a_w·x̂ + a_b  = wr·A + k·x + const
        k = (a_w - wr * mean_ax) * r
        grad_g = _combine(a, wr, x, k, a_b - wr * mean_a - k * mu)
        # ∂/∂w = Σ_n r·Σ g·Â = Σ_n M·r·(mean(A g) − mean A·mean g − mean(A x̂)·mean(g x̂))
        grad_w = (m * r * (mean_ag - mean_a * mean_g - mean_ax * mean_gx)).sum(0)
        # ∂/∂x: gradient to x̂ is u·g + v·A; pulled back through x̂ and r.
        m2 = w * mean_gx
        u, v = a_w - wr * mean_ax, -r * m2
        t = r * (u * mean_gx + v * mean_ax) + r * r * (w * mean_ag - w * mean_g * mean_a - m2 * mean_ax)
        grad_x = _combine(g, r * u, x, -t * r, t * r * mu - r * (u * mean_g + v * mean_a))
        grad_x.addcmul_(a, _broadcast(r * v, a))
        return grad_g, grad_x, grad_w, None, None


def _broadcast(scalars: Tensor, like: Tensor) -> Tensor:
    """``[N, C]`` (or ``[1, C]``) per-(sample, channel) scalars shaped to multiply an ``[N, C, ...]`` map."""
    return scalars.view(*scalars.shape, *([1] * (like.dim() - 2)))


def _combine(p: Tensor, p_scale: Tensor, q: Tensor, q_scale: Tensor, offset: Tensor) -> Tensor:
    """p·p_scale + q·q_scale + offset, the scales and offset per (sample, channel)."""
    out = torch.addcmul(_broadcast(offset, p), p, _broadcast(p_scale, p))
    return out.addcmul_(q, _broadcast(q_scale, q))


class InstanceNorm(nn.GroupNorm):
    """``nn.GroupNorm(channels, channels, affine=True)`` whose double backward is cheap (module docstring)."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__(channels, channels, eps=eps, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        return _InstanceNorm.apply(x, self.weight, self.bias, self.eps)
