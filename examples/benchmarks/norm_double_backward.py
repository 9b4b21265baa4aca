"""Paired timing of instance norm's double backward: ``nn.GroupNorm`` against distillkit's ``InstanceNorm``.

Usage:
    python examples/benchmarks/norm_double_backward.py distill --experts STORE [--ipc 10]
        [--memory standard|constant] [--preset fmnist-cpu] [--rounds 6] [--set KEY=VALUE ...]
    python examples/benchmarks/norm_double_backward.py smooth [--rounds 8]

``distill`` builds one distiller (``--preset``, default ``fmnist-cpu``) on STORE (what ``distillkit
distill`` runs) and alternates its iterations between the two norms, swapped in place in the student
(same parameters), so both see the same machine state; ``smooth`` does the same for one AST smooth-
expert step (cross-entropy plus the gradient penalty, whose create-graph backward differentiates the
norm twice) on a batch of 256 FashionMNIST-sized images. Prints the median seconds of each and their
ratio. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from distillkit.hostmemory import keep_freed_memory
from distillkit.models.instancenorm import InstanceNorm

NORMS: dict[str, Callable[[int, float], nn.Module]] = {
    "GroupNorm": lambda c, eps: nn.GroupNorm(c, c, eps),
    "InstanceNorm": InstanceNorm,
}


def swapper(model: nn.Module, kind: str) -> Callable[[], None]:
    """Install norms of ``kind`` in ``model``, sharing the current norms' parameters."""
    current = {name: m for name, m in model.named_modules() if isinstance(m, nn.GroupNorm)}

    def install() -> None:
        for name, old in current.items():
            new = NORMS[kind](old.num_channels, old.eps)
            new.weight, new.bias = old.weight, old.bias
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, new)

    return install


def paired(step: Callable[[], object], model: nn.Module, rounds: int) -> dict[str, list[float]]:
    """Seconds of ``step`` under each norm, alternating, after one untimed step each."""
    installs = {kind: swapper(model, kind) for kind in NORMS}
    seconds: dict[str, list[float]] = {kind: [] for kind in NORMS}
    for install in installs.values():
        install()
        step()
    for _ in range(rounds):
        for kind, install in installs.items():
            install()
            tick = time.perf_counter()
            step()
            seconds[kind].append(time.perf_counter() - tick)
    return seconds


def distill_step(args: argparse.Namespace) -> tuple[Callable[[], object], nn.Module]:
    from distillkit import api
    from distillkit.config import split_set_option
    from distillkit.experts.store import TrajectoryStore
    from distillkit.resolve import resolve_config

    overrides = {"distill.ipc": args.ipc, "distill.memory": args.memory, "distill.iterations": 10**6}
    overrides.update(dict(split_set_option(item) for item in args.set))
    config, host = resolve_config(args.preset, None, overrides, None)
    data = api.prepare_data(config.data)
    store = TrajectoryStore.open(args.experts)
    distiller, _ = api.build_distiller(api.distill_job(config, host, data, store))
    data.release_images()
    return distiller.step, distiller.student.model


def smooth_step(args: argparse.Namespace) -> tuple[Callable[[], object], nn.Module]:
    from distillkit.models import build_model
    from distillkit_plugins.smooth import gradient_penalty

    torch.manual_seed(0)
    model = build_model("convnet-w32", 1, 10, (28, 28))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images, labels = torch.randn(256, 1, 28, 28), torch.randint(0, 10, (256,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images), labels) + 0.1 * gradient_penalty(model, images, 0.0, "pixel")
        loss.backward()
        optimizer.step()

    return step, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["distill", "smooth"])
    parser.add_argument("--experts", type=Path, help="distill: an fmnist-cpu expert store")
    parser.add_argument("--preset", default="fmnist-cpu", help="distill: the store's preset")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--memory", choices=["standard", "constant"], default="standard")
    parser.add_argument("--set", action="append", default=[], help="distill: KEY=VALUE overrides")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    if args.what == "distill" and args.experts is None:
        parser.error("distill needs --experts STORE")
    keep_freed_memory()
    step, model = distill_step(args) if args.what == "distill" else smooth_step(args)
    seconds = paired(step, model, args.rounds)
    medians = {kind: statistics.median(values) for kind, values in seconds.items()}
    for kind, values in seconds.items():
        print(f"{kind:12s} median {medians[kind]:.4f} s   " + " ".join(f"{v:.3f}" for v in values))
    print(f"InstanceNorm / GroupNorm: {medians['InstanceNorm'] / medians['GroupNorm']:.3f}")


if __name__ == "__main__":
    main()
