"""The engine's own heavy-ball SGD must update exactly as torch.optim.SGD does."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from distillkit.engine.optim import MomentumSGD


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
def test_matches_torch_sgd_bit_for_bit(momentum: float) -> None:
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(3, 4, 5, generator=gen)
    ours, theirs = start.clone().requires_grad_(True), start.clone().requires_grad_(True)
    mine = MomentumSGD(ours, lr=0.3, momentum=momentum)
    reference = torch.optim.SGD([theirs], lr=0.3, momentum=momentum)
    for step in range(6):
        grad = torch.randn(3, 4, 5, generator=gen)
        mine.zero_grad()
        reference.zero_grad(set_to_none=True)
        if step != 3:  # a step without a gradient changes nothing, momentum included
            ours.grad, theirs.grad = grad.clone(), grad.clone()
        mine.step()
        reference.step()
        if step == 4:  # a changed learning rate (the divergence guard's backoff) applies from now on
            mine.lr = reference.param_groups[0]["lr"] = 0.1
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("memory", ["standard", "constant"])
def test_distillation_imports_neither_torch_dynamo_nor_sympy(memory: str) -> None:
    """Building and stepping the engine must not import torch._dynamo (≈130 MiB RSS, as torch.optim
    does) nor sympy (+34 MiB, as autograd does for explicit grad_outputs), in either memory mode."""
    code = """
import sys, torch
from distillkit.config import DistillConfig, RunConfig
from distillkit.context import RunContext
from distillkit.data.augment import DSA
from distillkit.engine.loop import Distiller
from distillkit.engine.student import FlatStudent
from distillkit.models.flat import flatten_params
from distillkit.host import PluginHost
from distillkit.models import build_model
model = build_model("convnet-w32-d2", 1, 2, (8, 8))
start = flatten_params(model)
experts = [torch.stack([start + 0.01 * k for k in range(4)])]
config = DistillConfig(
    ipc=1, syn_steps=3, expert_epochs=1, max_start_epoch=2, img_momentum=0.5, memory=MEMORY, graph_steps=1
)
run = RunContext(RunConfig(distill=config), torch.device("cpu"), torch.Generator().manual_seed(0), None, {})
images, labels = torch.randn(2, 1, 8, 8), torch.tensor([0, 1])
distiller = Distiller(run, PluginHost(), FlatStudent(model), images, labels, experts, config, DSA("none"))
distiller.step(); distiller.step()
print(sorted(m for m in sys.modules if m.startswith(("torch._dynamo", "sympy")))[:1])
"""
    code = code.replace("MEMORY", repr(memory))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_evaluation_trains_as_torch_sgd_without_importing_torch_dynamo() -> None:
    """``train_on_set`` equals the torch.optim.SGD schedule bit for bit (momentum change included)
    and, unlike constructing a torch optimiser, leaves torch._dynamo unimported."""
    code = """
import copy, sys, torch
from distillkit.config import EvaluateConfig
from distillkit.data.augment import DSA
from distillkit.evaluate import train_on_set
from distillkit.models import build_model
torch.manual_seed(0)
cfg = EvaluateConfig(epochs=6, batch_size=16, momentum_after_decay=0.5)
model = build_model("convnet-w8-d1", 1, 10, (8, 8))
reference = copy.deepcopy(model)
images, labels = torch.randn(40, 1, 8, 8), torch.randint(10, (40,))
train_on_set(model, images, labels, 0.05, cfg, DSA(), torch.Generator().manual_seed(1))
print(sorted(m for m in sys.modules if m.startswith("torch._dynamo"))[:1])
generator, augment = torch.Generator().manual_seed(1), DSA()
optimizer = torch.optim.SGD(
    reference.parameters(), lr=0.05, momentum=cfg.momentum, weight_decay=cfg.weight_decay
)
for epoch in range(cfg.epochs):
    if epoch == cfg.epochs // 2:
        optimizer.param_groups[0].update(lr=0.05 * cfg.lr_decay_factor, momentum=0.5)
    for idx in torch.randperm(40, generator=generator).split(cfg.batch_size):
        loss = torch.nn.functional.cross_entropy(reference(augment(images[idx], generator)), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
print(all(torch.equal(a, b) for a, b in zip(model.parameters(), reference.parameters())))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", "True"]
