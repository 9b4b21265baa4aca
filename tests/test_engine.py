"""The matching math: normalised distance, the unrolled inner loop, one outer iteration."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distillkit.config import DistillConfig, RunConfig
from distillkit.context import RunContext
from distillkit.engine.loop import Distiller
from distillkit.engine.student import FlatStudent
from distillkit.engine.unroll import BatchSampler, normalised_distance, unroll
from distillkit.host import PluginHost
from distillkit.models.flat import flatten_params, load_flat, param_layout


def test_normalised_distance_matches_formula():
    theta = torch.tensor([1.0, 2.0, 3.0])
    target = torch.tensor([0.0, 2.0, 5.0])
    start = torch.tensor([3.0, 2.0, 5.0])
    # ‖θ − target‖² = 1 + 0 + 4 = 5 ; ‖start − target‖² = 9
    assert normalised_distance(theta, target, start).item() == pytest.approx(5 / 9)


def test_normalised_distance_guards_a_zero_denominator():
    theta = torch.ones(4)
    assert torch.isfinite(normalised_distance(theta, torch.zeros(4), torch.zeros(4)))


def _manual_ce_grad(w, b, x, y):
    """Hand-derived gradient of mean cross-entropy for logits = x Wᵀ + b."""
    p = torch.softmax(x @ w.T + b, dim=1)
    p[torch.arange(len(y)), y] -= 1.0
    return p.T @ x / len(y), p.mean(0)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_unroll_equals_hand_computed_sgd_on_a_linear_model(momentum):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    student = FlatStudent(model)
    theta0 = flatten_params(model).requires_grad_(True)
    x = torch.randn(4, 3)
    y = torch.tensor([0, 1, 1, 0])
    alpha = torch.tensor(0.5)
    sampler = BatchSampler(4, 0, torch.Generator().manual_seed(0))
    params = unroll(student, theta0, x, y, alpha, 2, sampler, lambda v: v, 1.0, momentum)

    w, b = model.weight.detach().clone(), model.bias.detach().clone()
    vw = vb = None
    for _ in range(2):
        gw, gb = _manual_ce_grad(w, b, x, y)
        vw = gw if vw is None else momentum * vw + gw
        vb = gb if vb is None else momentum * vb + gb
        w, b = w - 0.5 * vw, b - 0.5 * vb
    expected = torch.cat([w.reshape(-1), b])
    assert len(params) == 3
    torch.testing.assert_close(params[-1].detach(), expected, rtol=1e-5, atol=1e-6)


def test_unroll_keeps_second_order_graph_to_images_and_alpha():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    student = FlatStudent(model)
    x = torch.randn(4, 3, requires_grad=True)
    alpha = torch.tensor(0.1, requires_grad=True)
    theta0 = flatten_params(model).requires_grad_(True)
    sampler = BatchSampler(4, 2, torch.Generator().manual_seed(0))
    params = unroll(student, theta0, x, torch.tensor([0, 1, 0, 1]), alpha, 3, sampler, lambda v: v)
    params[-1].pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert alpha.grad is not None and alpha.grad != 0


def test_batch_sampler_covers_every_index_once_per_pass():
    sampler = BatchSampler(10, 4, torch.Generator().manual_seed(1))
    seen = torch.cat([sampler.next() for _ in range(3)])
    assert sorted(seen.tolist()) == list(range(10))


def test_flat_round_trip_and_layout():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 3))
    layout = param_layout(model)
    assert [s.name for s in layout] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    theta = torch.arange(sum(s.numel for s in layout), dtype=torch.float32)
    load_flat(model, theta)
    torch.testing.assert_close(flatten_params(model), theta)


def _tiny_distiller(momentum: float = 0.0) -> Distiller:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    student = FlatStudent(model)
    start = flatten_params(model)
    experts = [torch.stack([start + 0.1 * k * torch.randn_like(start) for k in range(4)])]
    config = DistillConfig(
        ipc=2,
        syn_steps=3,
        expert_epochs=2,
        max_start_epoch=2,
        lr_img=10.0,
        student_momentum=momentum,
    )
    run = RunContext(
        config=RunConfig(),
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        out_dir=None,
    )
    images = torch.randn(6, 1, 4, 4)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    return Distiller(run, PluginHost(eps=[]), student, images, labels, experts, config, lambda x, g: x)


def test_one_outer_iteration_updates_images_and_stays_finite():
    distiller = _tiny_distiller()
    before = distiller.images.detach().clone()
    result = distiller.step()
    assert torch.isfinite(torch.tensor(result.loss))
    assert not torch.equal(before, distiller.images.detach())
    assert result.alpha > 0
    assert 0 <= result.start_epoch < 2


def test_outer_iterations_are_reproducible():
    a, b = _tiny_distiller(0.9), _tiny_distiller(0.9)
    for _ in range(3):
        ra, rb = a.step(), b.step()
    assert ra.loss == rb.loss
    assert torch.equal(a.images, b.images)
