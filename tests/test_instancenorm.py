"""InstanceNorm: GroupNorm's values and first derivatives, exact second derivatives, no third."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

from distillkit.models import build_model
from distillkit.models.instancenorm import InstanceNorm


def _pair(channels: int, dtype: torch.dtype = torch.float32) -> tuple[InstanceNorm, nn.GroupNorm]:
    """An InstanceNorm and a GroupNorm(c, c) holding the same (non-trivial) weight and bias."""
    torch.manual_seed(0)
    mine, theirs = InstanceNorm(channels), nn.GroupNorm(channels, channels)
    with torch.no_grad():
        mine.weight.copy_(torch.rand(channels) + 0.5)
        mine.bias.copy_(torch.randn(channels))
    theirs.load_state_dict(mine.state_dict())
    return mine.to(dtype), theirs.to(dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_finite_differences_first_and_second_order(device: str) -> None:
    norm = _pair(4, torch.float64)[0].to(device)
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64).to(device).requires_grad_()
    assert gradcheck(norm, (x,))
    assert gradgradcheck(norm, (x,))

    # The weight and bias too (gradgradcheck differentiates w.r.t. the inputs only).
    def as_function(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(norm, {"weight": weight, "bias": bias}, (x,))

    inputs = (x, norm.weight.detach().clone().requires_grad_(), norm.bias.detach().clone().requires_grad_())
    assert gradgradcheck(as_function, inputs)


def test_values_and_first_backward_equal_group_norm_bit_for_bit() -> None:
    mine, theirs = _pair(8)
    x = torch.randn(6, 8, 10, 10)
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    outs = [mine(xs[0]), theirs(xs[1])]
    assert torch.equal(outs[0], outs[1])
    upstream = torch.randn_like(outs[0])
    for out in outs:
        out.backward(upstream)
    assert torch.equal(xs[0].grad, xs[1].grad)
    assert torch.equal(mine.weight.grad, theirs.weight.grad)
    assert torch.equal(mine.bias.grad, theirs.bias.grad)


def _matching_gradients(norm: nn.Module, x: torch.Tensor, seed: int = 1) -> list[torch.Tensor]:
    """Trajectory matching's pattern: a loss on the create-graph gradient, differentiated again."""
    gen = torch.Generator().manual_seed(seed)
    x = x.clone().requires_grad_()
    out = norm(x)
    upstream = torch.randn(out.shape, generator=gen, dtype=out.dtype).to(out.device)
    params = [x, norm.weight, norm.bias]
    grads = torch.autograd.grad((out * upstream).square().sum(), params, create_graph=True)
    probes = [torch.randn(g.shape, generator=gen, dtype=g.dtype).to(g.device) for g in grads]
    outer = sum((g * p).sum() for g, p in zip(grads, probes, strict=True)) + (out * upstream).sum()
    return list(torch.autograd.grad(outer, params))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_second_order_matches_pytorch_group_norm(channels_last: bool, device: str) -> None:
    mine, theirs = (norm.to(device) for norm in _pair(16, torch.float64))
    x = (torch.randn(5, 16, 12, 12, dtype=torch.float64) * 3 + 1).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for got, want in zip(_matching_gradients(mine, x), _matching_gradients(theirs, x), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape", [(4, 6, 10), (3, 6, 2, 3, 4)])
def test_other_map_ranks_match_group_norm(shape: tuple[int, ...]) -> None:
    mine, theirs = _pair(6, torch.float64)
    x = torch.randn(shape, dtype=torch.float64)
    for got, want in zip(_matching_gradients(mine, x), _matching_gradients(theirs, x), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_float32_second_order_stays_within_rounding_of_group_norm() -> None:
    mine, theirs = _pair(32)
    x = torch.randn(20, 32, 16, 16)
    for got, want in zip(_matching_gradients(mine, x), _matching_gradients(theirs, x), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_third_derivative_is_refused() -> None:
    norm, _ = _pair(2, torch.float64)
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(norm(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="third order"):
        torch.autograd.grad(gx.square().sum(), x, create_graph=True)
    (gxx,) = torch.autograd.grad(gx.square().sum(), x)  # second order without a graph: fine
    assert gxx.shape == x.shape


def test_models_use_it_and_keep_their_parameter_names() -> None:
    model = build_model("convnet-w32", 1, 10, (28, 28))
    assert type(model.norm1) is InstanceNorm
    assert isinstance(model.norm1, nn.GroupNorm)
    names = [n for n, _ in model.named_parameters()][:4]
    assert names == ["conv1.weight", "conv1.bias", "norm1.weight", "norm1.bias"]
    reference = nn.GroupNorm(32, 32)
    reference.load_state_dict(model.norm1.state_dict())
    x = torch.randn(2, 32, 4, 4)
    assert torch.equal(model.norm1(x), F.group_norm(x, 32, reference.weight, reference.bias, reference.eps))
