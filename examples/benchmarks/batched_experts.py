"""Packed expert training (``experts.parallel``) against experts trained one after another.

Usage:
    python examples/benchmarks/batched_experts.py --data-path DIR [--preset fmnist-cpu]
        [--experts 2] [--epochs 1] [--device cpu|cuda] [--set KEY=VALUE ...]

Trains the same ``--experts`` experts of a preset (default ``fmnist-cpu``: FashionMNIST
ConvNetW32, batches of 256, DSA) twice through the library's expert stage, into fresh stores:
one at a time (``experts.parallel=off``), then as one packed group (``on``, ``pack_size`` =
``--experts``). Prints the seconds per expert-epoch of each (the group's time ÷ K, as the issue
counts batched experts), their ratio, the largest parameter difference between the two stores
(float rounding only) and the load average around each, with the machine's fp32 matmul rate.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

import distillkit
from distillkit import api
from distillkit.bench import matmul_peak_gflops


def load() -> str:
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def train(args: argparse.Namespace, parallel: str, root: Path, data: api.PreparedData | None):
    """Train the experts with ``experts.parallel=parallel``; return (store, seconds, data)."""
    overrides = {
        "device": args.device,
        "data.data_path": args.data_path,
        "experts.count": args.experts,
        "experts.epochs": args.epochs,
        "experts.eval_every": 1,
        "experts.parallel": parallel,
        "experts.pack_size": args.experts,
        "distill.max_start_epoch": 1,
        "distill.expert_epochs": 1,
    }
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = value
    config, host = distillkit.resolve_config(preset=args.preset, overrides=overrides)
    data = data or api.prepare_data(config.data)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    began = time.perf_counter()
    store = api.train_experts(config, host, data, root / parallel)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return store, time.perf_counter() - began, data


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-path", default="")
    parser.add_argument("--preset", default="fmnist-cpu")
    parser.add_argument("--experts", type=int, default=2, help="K, the experts of the packed group")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    rate = matmul_peak_gflops(torch.device(args.device))
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, "
        f"device {args.device}"
    )
    print(f"fp32 matmul: {rate}")
    per_expert_epochs = args.experts * args.epochs
    with tempfile.TemporaryDirectory(prefix="batched-experts-") as tmp:
        seconds, stores, data = {}, {}, None
        for parallel in ("off", "on"):
            before = load()
            stores[parallel], took, data = train(args, parallel, Path(tmp), data)
            seconds[parallel] = took / per_expert_epochs
            print(
                f"  parallel={parallel}: {took:8.1f} s, {seconds[parallel]:6.2f} s per expert-epoch "
                f"({before} -> {load()})"
            )
        difference = max(
            (stores["on"].load(i) - stores["off"].load(i)).abs().max().item() for i in range(args.experts)
        )
    print(
        f"packed / one at a time: {seconds['on'] / seconds['off']:.2f}x; "
        f"largest |Δθ| between the stores {difference:.2e}"
    )


if __name__ == "__main__":
    main()
