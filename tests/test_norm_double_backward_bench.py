"""examples/benchmarks/norm_double_backward.py: the swap shares parameters, the smooth timing runs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import torch

from distillkit.models import build_model
from distillkit.models.instancenorm import InstanceNorm

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "benchmarks" / "norm_double_backward.py"


def _script():
    spec = importlib.util.spec_from_file_location("norm_double_backward", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_swapping_norms_keeps_the_parameters_and_the_outputs() -> None:
    bench = _script()
    model = build_model("convnet-w32", 1, 10, (28, 28))
    weight = model.norm2.weight
    x = torch.randn(4, 1, 28, 28)
    before = model(x)
    bench.swapper(model, "GroupNorm")()
    assert type(model.norm2) is torch.nn.GroupNorm and model.norm2.weight is weight
    assert torch.equal(model(x), before)
    bench.swapper(model, "InstanceNorm")()
    assert type(model.norm2) is InstanceNorm and model.norm2.weight is weight


def test_smooth_timing_prints_both_norms_and_their_ratio() -> None:
    cmd = [sys.executable, str(SCRIPT), "smooth", "--rounds", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "GroupNorm" in done.stdout and "InstanceNorm / GroupNorm:" in done.stdout


def test_distill_needs_a_store() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "distill"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "--experts" in done.stderr
