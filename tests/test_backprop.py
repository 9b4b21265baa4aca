"""The constant-memory reverse sweep gives the standard unroll's gradients (exact, not TESLA's N=1 trick)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import DEVICES

from distillkit.config import DistillConfig, RunConfig
from distillkit.context import RunContext
from distillkit.data.augment import DSA
from distillkit.engine.loop import Distiller
from distillkit.engine.student import FlatStudent
from distillkit.host import PluginHost
from distillkit.models import build_model
from distillkit.models.flat import flatten_params


def _distiller(
    memory: str,
    plugins: list[str],
    momentum: float,
    batch_syn: int = 0,
    device: str = "cpu",
    graph_steps: int = 0,
) -> Distiller:
    torch.manual_seed(0)
    model = build_model("convnet-w32-d2", 1, 3, (8, 8)).to(device)
    student = FlatStudent(model)
    start = flatten_params(model)
    steps = torch.randn(5, start.numel(), generator=torch.Generator().manual_seed(1))
    experts = [torch.cumsum(torch.cat([start[None].cpu(), 0.02 * steps]), dim=0)]
    config = DistillConfig(
        ipc=2,
        syn_steps=6,
        expert_epochs=2,
        max_start_epoch=3,
        lr_img=1.0,
        student_momentum=momentum,
        batch_syn=batch_syn,
        memory=memory,
        graph_steps=graph_steps,
    )
    host = PluginHost()
    host.select(plugins, {"itm": {"beta": "equal"}})
    run = RunContext(
        config=RunConfig(distill=config),
        device=torch.device(device),
        generator=torch.Generator(device=device).manual_seed(0),
        out_dir=None,
        plugin_configs=dict(host.configs),
    )
    images = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    augment = DSA("color_crop_cutout_scale_rotate")
    return Distiller(run, host, student, images, labels, experts, config, augment)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("plugins", "momentum", "batch_syn", "graph_steps"),
    [
        ([], 0.0, 0, 0),
        ([], 0.9, 3, 0),
        (["itm", "wp"], 0.9, 0, 0),
        (["itm", "bil"], 0.0, 2, 0),
        # K of the N = 6 steps keep their graph: the sweep hands over at the split.
        (["itm", "wp"], 0.9, 0, 2),
        (["itm"], 0.9, 3, 5),
        ([], 0.9, 0, 6),
        (["itm", "bil"], 0.0, 2, 9),
    ],
)
def test_constant_memory_gradients_equal_the_standard_unroll(
    plugins, momentum, batch_syn, graph_steps, device, exact_kernels
):
    standard = _distiller("standard", plugins, momentum, batch_syn, device)
    constant = _distiller("constant", plugins, momentum, batch_syn, device, graph_steps)
    for _ in range(2):  # the second iteration starts from updated images, α and momentum buffers
        a, b = standard.step(), constant.step()
        assert a.loss == pytest.approx(b.loss, rel=1e-5)
        assert a.terms.keys() == b.terms.keys()
        torch.testing.assert_close(constant.images.grad, standard.images.grad, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(constant.alpha.grad, standard.alpha.grad, rtol=1e-4, atol=1e-9)
    assert standard.images.grad.abs().sum() > 0
    # Both modes leave the run's RNG in the same place, so later draws agree.
    assert torch.equal(standard.run.generator.get_state(), constant.run.generator.get_state())


def test_constant_memory_keeps_no_graph_between_steps():
    constant = _distiller("constant", ["itm"], 0.9)
    params = constant.backprop.forward(constant.experts[0][0], 1.0)
    assert all(p.is_leaf and p.grad_fn is None for p in params)
    assert len(params) == dataclasses.asdict(constant.config)["syn_steps"] + 1


def test_graph_steps_keep_the_graph_of_the_last_steps_only():
    constant = _distiller("constant", ["itm"], 0.9, graph_steps=2)
    params = constant.backprop.forward(constant.experts[0][0], 1.0)
    assert [p.grad_fn is None for p in params] == [True] * 5 + [False] * 2


def test_channels_last_student_matches_the_default_layout():
    torch.manual_seed(0)
    model = build_model("convnet-w32-d2", 1, 3, (8, 8))
    theta = flatten_params(model)
    x = torch.randn(5, 1, 8, 8)
    default, nhwc = FlatStudent(model), FlatStudent(model, channels_last=True)
    torch.testing.assert_close(nhwc(theta, x), default(theta, x), rtol=1e-5, atol=1e-6)
