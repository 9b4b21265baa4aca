"""examples/benchmarks/cpu_kernels.py times three ways of computing one and the same convolution."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "benchmarks" / "cpu_kernels.py"


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
def test_the_timed_variants_compute_the_same_convolution_and_gradients() -> None:
    spec = importlib.util.spec_from_file_location("cpu_kernels", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 32, 8, 8, generator=generator, requires_grad=True)
    w = torch.randn(32, 32, 3, 3, generator=generator, requires_grad=True)
    results = []
    for onednn, forward in bench.conv_variants(x, w).values():
        with torch.backends.mkldnn.flags(enabled=onednn):
            y = forward()
            results.append((y, *torch.autograd.grad(y, (x, w), torch.ones_like(y))))
    assert results[0][0].shape == (3, 32, 8, 8)
    for other in results[1:]:
        for got, want in zip(other, results[0], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
