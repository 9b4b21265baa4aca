"""How fast this CPU runs the convolutions of a ConvNetW32, by kernel and by dtype.

Usage:
    python examples/benchmarks/cpu_kernels.py [--repeats 15]

Prints the fp32 matmul rate, then for the second convolution of a ConvNetW32 (32 → 32 channels,
3 × 3, on 16 × 16 maps of 100 and 256 images; on 8 × 8 maps, the third) the forward and
forward + backward time and GFLOP/s of three ways to compute it: oneDNN (PyTorch's default on
CPU), im2col + BLAS (``torch.backends.mkldnn.flags(enabled=False)``) and ``F.unfold`` + matmul.
Then one ConvNetW32 training step (256 FashionMNIST-sized images) in float32 and bfloat16: on a CPU
without AVX-512 BF16 or AMX, oneDNN emulates bf16. Medians of ``--repeats`` timings in one process
with distillkit's heap settings (without them, fresh pages of each output are timed too). Run it
alone on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from distillkit.bench import matmul_peak_gflops
from distillkit.hostmemory import keep_freed_memory
from distillkit.models import build_model


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1e3


def conv_variants(x: torch.Tensor, w: torch.Tensor) -> dict[str, tuple[bool, Callable[[], torch.Tensor]]]:
    """The same 3 × 3, padding-1 convolution of ``x`` by ``w`` three ways: name → (oneDNN on, forward)."""

    def unfolded() -> torch.Tensor:
        out = w.flatten(1) @ F.unfold(x, 3, padding=1)
        return out.view(x.shape[0], w.shape[0], *x.shape[2:])

    return {
        "oneDNN": (True, lambda: F.conv2d(x, w, padding=1)),
        "im2col + BLAS": (False, lambda: F.conv2d(x, w, padding=1)),
        "unfold + matmul": (True, unfolded),
    }


def with_backward(forward: Callable[[], torch.Tensor], inputs: tuple[torch.Tensor, ...]) -> Callable[[], Any]:
    """``forward`` followed by the gradients of its sum with respect to ``inputs``."""

    def run() -> object:
        y = forward()
        return torch.autograd.grad(y, inputs, torch.ones_like(y))

    return run


def convolutions(repeats: int) -> None:
    for batch, side in ((100, 16), (256, 16), (256, 8)):
        x = torch.randn(batch, 32, side, side, requires_grad=True)
        w = torch.randn(32, 32, 3, 3, requires_grad=True)
        flops = 2 * batch * side * side * 32 * 32 * 9
        print(f"conv 32→32, 3×3, {batch} × {side}×{side}:")
        for name, (onednn, forward) in conv_variants(x, w).items():
            with torch.backends.mkldnn.flags(enabled=onednn):
                fwd = median_ms(forward, repeats)
                fwd_bwd = median_ms(with_backward(forward, (x, w)), repeats)
            print(
                f"  {name:16} forward {fwd:7.2f} ms ({flops / fwd / 1e6:5.0f} GFLOP/s)   "
                f"+ backward {fwd_bwd:7.2f} ms ({3 * flops / fwd_bwd / 1e6:5.0f} GFLOP/s)"
            )


def training_step(repeats: int) -> None:
    seconds = {}
    labels = torch.randint(0, 10, (256,))
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        model = build_model("convnet-w32", 1, 10, (28, 28)).to(dtype)
        images = torch.randn(256, 1, 28, 28, dtype=dtype)
        params = tuple(model.parameters())

        def loss(model: torch.nn.Module = model, images: torch.Tensor = images) -> torch.Tensor:
            return F.cross_entropy(model(images).float(), labels)

        seconds[dtype] = median_ms(with_backward(loss, params), repeats)
    f32, b16 = seconds[torch.float32], seconds[torch.bfloat16]
    print(f"ConvNetW32 step, 256 images: float32 {f32:.1f} ms, bfloat16 {b16:.1f} ms ({b16 / f32:.2f}×)")


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    keep_freed_memory()
    # torch.backends.mkldnn.flags warns about Intel GPUs' TF32 whenever it is entered.
    warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
    matmul = matmul_peak_gflops(torch.device("cpu"), n=2048, repeats=args.repeats)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"fp32 matmul {matmul['gflops']:.0f} GFLOP/s"
    )
    convolutions(args.repeats)
    training_step(args.repeats)


if __name__ == "__main__":
    main()
