"""The strided-sum 2×2 average pool equals ``F.avg_pool2d`` in value, gradient and double gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES
from torch import nn

from distillkit.models import build_model
from distillkit.models.pooling import AvgPool2x2


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(2, 3, 6, 8), (2, 3, 7, 5), (3, 5, 5), (1, 2, 2, 2)])
def test_values_and_gradients_match_avg_pool2d(shape: tuple[int, ...], device: str) -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, generator=generator).to(device).requires_grad_()
    pool = AvgPool2x2()
    assert torch.allclose(pool(x), F.avg_pool2d(x, 2), rtol=0, atol=1e-15)
    assert torch.autograd.gradcheck(pool, (x,))
    assert torch.autograd.gradgradcheck(pool, (x,))  # trajectory matching differentiates the backward


def test_double_backward_matches_avg_pool2d_in_float32() -> None:
    """What the unroll does: the gradient of a create-graph gradient, against the aten op's."""
    x = torch.randn(4, 8, 12, 12, generator=torch.Generator().manual_seed(1), requires_grad=True)
    weight = torch.randn(4, 8, 6, 6, generator=torch.Generator().manual_seed(2))

    def second(pool) -> torch.Tensor:
        (grad,) = torch.autograd.grad((pool(x.relu()) * weight).square().sum(), x, create_graph=True)
        (out,) = torch.autograd.grad(grad.square().sum(), x)
        return out

    assert torch.allclose(second(AvgPool2x2()), second(lambda t: F.avg_pool2d(t, 2)), rtol=1e-5, atol=1e-6)


def test_channels_last_stays_channels_last() -> None:
    x = torch.randn(2, 8, 16, 16).contiguous(memory_format=torch.channels_last)
    out = AvgPool2x2()(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, F.avg_pool2d(x, 2), atol=1e-6)


def test_convnets_use_it_as_an_avgpool2d() -> None:
    """Packing (``distillkit.ensemble``) treats it as the channel-wise ``nn.AvgPool2d`` it is."""
    model = build_model("convnet-w32", 1, 10, (28, 28))
    pools = [m for m in model.modules() if isinstance(m, nn.AvgPool2d)]
    assert pools and all(isinstance(m, AvgPool2x2) for m in pools)
