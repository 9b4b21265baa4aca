"""The constant-memory reverse sweep gives the standard unroll's gradients (exact, not TESLA's N=1 trick)."""

from __future__ import annotations

import ctypes
import dataclasses

import pytest
import torch
from conftest import DEVICES

from distillkit.config import DistillConfig, RunConfig
from distillkit.context import RunContext
from distillkit.data.augment import DSA
from distillkit.engine.backprop import UnrollSetup
from distillkit.engine.graphbudget import step_graph_bytes
from distillkit.engine.loop import Distiller
from distillkit.engine.student import FlatStudent
from distillkit.engine.unroll import BatchSampler, unroll
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
    graph_memory_mb: float = 0.0,
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
        graph_memory_mb=graph_memory_mb,
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


def _kept(distiller: Distiller) -> list[bool]:
    params = distiller.backprop.forward(distiller.experts[0][0], 1.0)
    return [p.grad_fn is not None for p in params[1:]]


def test_graph_memory_keeps_as_many_step_graphs_as_fit():
    step = _distiller("constant", [], 0.9, graph_memory_mb=1e6).graph_fit.step_bytes / 2**20
    assert step > 0
    for budget, kept in [(0.4 * step, 0), (2.5 * step, 2), (6 * step, 6), (1e6, 6)]:
        distiller = _distiller("constant", [], 0.9, graph_memory_mb=budget)
        assert distiller.graph_fit.graph_steps == kept
        assert _kept(distiller) == [False] * (6 - kept) + [True] * kept
        assert "of 6 inner steps" in distiller.graph_fit.describe(6)


def test_a_graph_memory_budget_runs_exactly_as_the_k_it_chose():
    step = _distiller("constant", ["itm"], 0.9, graph_memory_mb=1e6).graph_fit.step_bytes / 2**20
    budgeted = _distiller("constant", ["itm"], 0.9, graph_memory_mb=3.5 * step)
    direct = _distiller("constant", ["itm"], 0.9, graph_steps=3)
    assert budgeted.graph_fit.graph_steps == 3
    for _ in range(2):
        assert budgeted.step().loss == direct.step().loss
    assert torch.equal(budgeted.images, direct.images)
    assert torch.equal(budgeted.run.generator.get_state(), direct.run.generator.get_state())


def _probe_setup(
    generator: torch.Generator, batch: int = 20, device: str = "cpu"
) -> tuple[UnrollSetup, torch.Tensor]:
    """One FashionMNIST-sized ConvNetW32 student on ``batch`` random images, DSA from ``generator``."""
    torch.manual_seed(0)
    model = build_model("convnet-w32", 1, 10, (28, 28)).to(device)
    images = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    dsa = DSA()
    setup = UnrollSetup(
        student=FlatStudent(model),
        images=images.to(device).requires_grad_(True),
        labels=torch.arange(batch, device=device) % 10,
        alpha=torch.tensor(0.01, device=device, requires_grad=True),
        steps=20,
        sampler=BatchSampler(batch, 0, generator),
        augment=lambda x: dsa(x, generator),
        generator=generator,
        momentum=0.0,
    )
    return setup, flatten_params(model)


def test_the_step_count_ignores_the_run_stream_and_leaves_it_untouched():
    generator = torch.Generator().manual_seed(0)
    setup, theta = _probe_setup(generator)
    counts = []
    for seed in (0, 1, 2):
        generator.manual_seed(seed)
        before = generator.get_state()
        counts.append(step_graph_bytes(setup, theta))
        assert torch.equal(generator.get_state(), before)
    assert len(set(counts)) == 1  # a resumed run, whose stream is elsewhere, finds the same K
    doubled, _ = _probe_setup(torch.Generator().manual_seed(0), batch=40)
    assert step_graph_bytes(doubled, theta) == pytest.approx(2 * counts[0], rel=0.02)  # activations


class _MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2``: ten size_t counters, in this order."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()  # noqa: SIM905
    ]


def _bytes_in_use(device: str) -> int:
    """Bytes the device's allocator has handed out and not taken back."""
    if device == "cuda":
        return torch.cuda.memory_allocated()
    if not hasattr(ctypes.CDLL(None), "mallinfo2"):
        pytest.skip("needs glibc >= 2.33 (mallinfo2)")
    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return info.uordblks + info.hblkhd  # heap blocks and mmap'd blocks


@pytest.mark.parametrize("device", DEVICES)
def test_the_step_count_is_what_kept_step_graphs_allocate(device):
    """Measured by the allocator itself (glibc's malloc, CUDA's caching allocator): K kept steps
    hold K × the counted bytes."""
    generator = torch.Generator(device=device).manual_seed(0)
    setup, theta = _probe_setup(generator, device=device)
    counted = step_graph_bytes(setup, theta)
    before = _bytes_in_use(device)
    start = theta.clone().requires_grad_(True)
    params = unroll(
        setup.student, start, setup.images, setup.labels, setup.alpha, 3, setup.sampler, setup.augment
    )
    held = _bytes_in_use(device) - before
    assert held == pytest.approx(3 * counted, rel=0.05)
    del params


def test_channels_last_student_matches_the_default_layout():
    torch.manual_seed(0)
    model = build_model("convnet-w32-d2", 1, 3, (8, 8))
    theta = flatten_params(model)
    x = torch.randn(5, 1, 8, 8)
    default, nhwc = FlatStudent(model), FlatStudent(model, channels_last=True)
    torch.testing.assert_close(nhwc(theta, x), default(theta, x), rtol=1e-5, atol=1e-6)
