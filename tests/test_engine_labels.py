"""Soft labels (``init_labels``), the image EMA (``distill.image_ema``) and loss gating
(``distill.skip_loss_above``) inside the engine.

Checked by hand or against an independent computation: the label gradient of both backprop
strategies equals finite differences of the matching loss, fixed soft labels never move,
learned ones follow momentum SGD, and the EMA is the recurrence E ← d·E + (1 − d)·x.
"""

from __future__ import annotations

import pytest
import torch

from distillkit.config import DistillConfig, RunConfig
from distillkit.context import RunContext, SoftLabels
from distillkit.data.augment import DSA
from distillkit.engine.loop import Distiller
from distillkit.engine.student import FlatStudent
from distillkit.host import PluginHost
from distillkit.models import build_model
from distillkit.models.flat import flatten_params

LOGITS = torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.5, 0.0], [0.0, 2.0, 0.0], [0.3, 1.0, 0.0]])


def _distiller(
    memory: str = "standard",
    soft: SoftLabels | None = None,
    momentum: float = 0.0,
    image_ema: float = 0.0,
    augment: str = "",
    skip_loss_above: float = 0.0,
    graph_steps: int = 0,
) -> Distiller:
    torch.manual_seed(0)
    model = build_model("convnet-w32-d2", 1, 3, (8, 8)).double()
    student = FlatStudent(model)
    start = flatten_params(model)
    steps = torch.randn(5, start.numel(), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    experts = [torch.cumsum(torch.cat([start[None], 0.02 * steps]), dim=0)]
    config = DistillConfig(
        ipc=2,
        syn_steps=4,
        expert_epochs=2,
        max_start_epoch=3,
        lr_img=1.0,
        student_momentum=momentum,
        memory=memory,
        graph_steps=graph_steps,
        image_ema=image_ema,
        skip_loss_above=skip_loss_above,
    )
    host = PluginHost()
    host.select([], {})
    run = RunContext(
        config=RunConfig(distill=config),
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        out_dir=None,
    )
    images = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    dsa = DSA(augment) if augment else (lambda x, g: x)
    return Distiller(run, host, student, images, labels, experts, config, dsa, soft=soft)


def _matching_loss(d: Distiller, soft_logits: torch.Tensor) -> float:
    """The loss of one iteration with the labels set to ``soft_logits``, replaying the same draws."""
    state = d.state()
    with torch.no_grad():
        d.soft_labels.copy_(soft_logits)
    result = d._attempt()
    d.load_state(state)
    return result.loss


@pytest.mark.parametrize(
    ("memory", "momentum", "graph_steps"), [("standard", 0.0, 0), ("constant", 0.9, 0), ("constant", 0.0, 2)]
)
def test_label_gradient_equals_finite_differences(memory, momentum, graph_steps):
    soft = SoftLabels(LOGITS.double(), lr=1.0, momentum=0.0, source="test")
    d = _distiller(memory, soft, momentum, graph_steps=graph_steps)
    state = d.state()
    d._attempt()
    grad = d.soft_labels.grad.clone()
    d.load_state(state)
    base = d.soft_labels.detach().clone()
    eps = 1e-6
    for i, c in [(0, 0), (1, 2), (3, 1)]:
        up, down = base.clone(), base.clone()
        up[i, c] += eps
        down[i, c] -= eps
        numeric = (_matching_loss(d, up) - _matching_loss(d, down)) / (2 * eps)
        assert grad[i, c].item() == pytest.approx(numeric, rel=1e-4, abs=1e-9)
    assert grad.abs().sum() > 0


def test_standard_and_constant_memory_agree_on_images_and_labels_with_augmentation():
    soft = SoftLabels(LOGITS.double(), lr=0.5, momentum=0.9, source="test")
    a = _distiller("standard", soft, 0.9, augment="color_crop_cutout_scale_rotate")
    b = _distiller("constant", soft, 0.9, augment="color_crop_cutout_scale_rotate")
    for _ in range(2):
        a.step(), b.step()
        torch.testing.assert_close(b.soft_labels.grad, a.soft_labels.grad, rtol=1e-6, atol=1e-10)
        torch.testing.assert_close(b.images.grad, a.images.grad, rtol=1e-6, atol=1e-10)
    torch.testing.assert_close(b.soft_labels, a.soft_labels)


def test_fixed_soft_labels_never_move_and_differ_from_hard_labels():
    soft = SoftLabels(LOGITS.double(), lr=0.0, momentum=0.0, source="test")
    fixed, hard = _distiller(soft=soft), _distiller()
    r_soft, r_hard = fixed.step(), hard.step()
    assert torch.equal(fixed.soft_labels, LOGITS.double())
    assert not fixed.soft_labels.requires_grad and fixed.opt_labels is None
    assert r_soft.loss != r_hard.loss


def test_learned_labels_take_momentum_sgd_steps():
    soft = SoftLabels(LOGITS.double(), lr=0.5, momentum=0.9, source="test")
    d = _distiller(soft=soft)
    before = d.soft_labels.detach().clone()
    d.step()
    g1 = d.soft_labels.grad.clone()
    torch.testing.assert_close(d.soft_labels.detach(), before - 0.5 * g1)
    middle = d.soft_labels.detach().clone()
    d.step()
    g2 = d.soft_labels.grad.clone()
    torch.testing.assert_close(d.soft_labels.detach(), middle - 0.5 * (0.9 * g1 + g2))


def test_soft_labels_and_their_momentum_survive_state_round_trips_bit_for_bit():
    soft = SoftLabels(LOGITS.double(), lr=0.5, momentum=0.9, source="test")
    a = _distiller(soft=soft, image_ema=0.5)
    a.step()
    state = a.state()
    assert {"soft_labels", "images_ema", "opt_labels.momentum"} <= set(state.tensors)
    expected = [a.step().loss for _ in range(2)]
    b = _distiller(soft=soft, image_ema=0.5)
    b.load_state(state)
    assert [b.step().loss for _ in range(2)] == expected
    assert torch.equal(a.soft_labels, b.soft_labels) and torch.equal(a.images_ema, b.images_ema)


def test_a_state_without_soft_labels_is_refused_by_a_run_with_them():
    hard_state = _distiller().state()
    soft = _distiller(soft=SoftLabels(LOGITS.double(), lr=0.0, momentum=0.0, source="test"))
    with pytest.raises(Exception, match="lacks soft labels"):
        soft.load_state(hard_state)


def test_image_ema_follows_its_recurrence_and_is_the_final_set():
    d = _distiller(image_ema=0.75)
    expected = d.images.detach().clone()
    for _ in range(3):
        d.step()
        expected = 0.75 * expected + 0.25 * d.images.detach()
    torch.testing.assert_close(d.final_images(), expected)
    assert not torch.equal(d.final_images(), d.images.detach())
    assert torch.equal(_distiller().final_images(), _distiller().images.detach())


def test_an_iteration_whose_loss_exceeds_the_gate_updates_nothing():
    gated, free = _distiller(skip_loss_above=1e-9), _distiller(skip_loss_above=1e9)
    images, alpha = gated.images.detach().clone(), gated.alpha.detach().clone()
    results = [gated.step() for _ in range(2)]
    assert all(r.skipped for r in results) and gated.iteration == 2
    assert torch.equal(gated.images, images) and torch.equal(gated.alpha, alpha)
    plain = _distiller()
    for _ in range(2):
        a, b = free.step(), plain.step()
        assert not a.skipped and a.loss == b.loss
    assert torch.equal(free.images, plain.images)
