"""2×2 average pooling written as strided sums, for the CPU path of the small ConvNets.

``aten::avg_pool2d`` on NCHW maps is a slow loop on CPU: for the 32-channel 32×32 maps of a
ConvNetW32 it took a quarter of an evaluation step (forward and backward), more than the
convolutions' forward (docs/performance.md, "Where the CPU time went"). Four strided views
summed, and the gradient spread back by two ``repeat_interleave`` copies, compute the same
average 2–3× faster. Each direction is its own autograd function whose backward is the other
one, so the double backward of trajectory matching stays two cheap ops as well.

Results equal ``F.avg_pool2d(x, 2)`` up to float rounding: the four values are summed in
another order (pairs of rows first), which changes at most the last bit.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class _Pool2x2(torch.autograd.Function):
    """Mean of each 2×2 block (an odd last row or column is dropped, as ``avg_pool2d`` does)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.size = tuple(x.shape[-2:])
        height, width = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
        x = x[..., :height, :width]
        rows = x[..., 0::2, :] + x[..., 1::2, :]
        return (rows[..., 0::2] + rows[..., 1::2]).mul_(0.25)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return _Spread2x2.apply(grad, ctx.size)


class _Spread2x2(torch.autograd.Function):
    """The adjoint of :class:`_Pool2x2`: each value / 4 copied to its 2×2 block, zeros in a cut row."""

    @staticmethod
    def forward(ctx, grad: Tensor, size: tuple[int, int]) -> Tensor:  # type: ignore[override]
        height, width = grad.shape[-2:]
        # Two repeat_interleaves copy faster than one copy of a stride-0 expanded view (3.3 vs 6.1 ms).
        spread = (grad * 0.25).repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)
        if (2 * height, 2 * width) != size:
            spread = nn.functional.pad(spread, (0, size[1] - 2 * width, 0, size[0] - 2 * height))
        return spread

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return _Pool2x2.apply(grad), None


class AvgPool2x2(nn.AvgPool2d):
    """``nn.AvgPool2d(2, 2)`` with the faster strided-sum kernels above (same module type and repr)."""

    def __init__(self) -> None:
        super().__init__(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        return _Pool2x2.apply(x)
