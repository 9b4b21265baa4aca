"""Expert training in one process against ``--nproc N`` ranks: the figures of docs/distributed.md.

Usage:
    python examples/benchmarks/distributed_experts.py [--experts 4] [--epochs 10] [--nproc 2]
        [--repeats 2] [--out /tmp/dist-bench]

Each repeat trains the digits default experts (``distillkit experts``, digits preset, plain MTT)
into a fresh store twice, as real ``python -m distillkit`` subprocesses: once in one process
with ``OMP_NUM_THREADS=1``, once as ``--nproc N`` ranks with one thread each. It prints the wall
time of each, the experts' own training seconds (one process; the busiest rank) and the load
average before and after (the machine may be shared), then checks
that the two stores hold the same tensor files, byte for byte, and the same manifest but for
the wall-time field ``seconds``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def train(store: Path, experts: int, epochs: int, nproc: int) -> float:
    """Wall seconds of one ``distillkit experts`` into ``store``."""
    command = [sys.executable, "-m", "distillkit", "experts", "--out", str(store), "--quiet"]
    command += ["--set", f"experts.count={experts}", "--set", f"experts.epochs={epochs}", "--device", "cpu"]
    command += ["--set", "distill.max_start_epoch=1"]  # only checked against the epochs; no key change
    command += ["--nproc", str(nproc)] if nproc > 1 else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    began = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - began


def comparable(store: Path) -> tuple[dict[str, bytes], dict]:
    """The store's tensor files and its manifest without the wall-time field."""
    manifest = json.loads((store / "manifest.json").read_text())
    for entry in manifest["experts"]:
        entry.pop("seconds")
    return {p.name: p.read_bytes() for p in sorted(store.glob("expert_*.safetensors"))}, manifest


def training_seconds(store: Path, nproc: int) -> float:
    """The experts' own training seconds (manifest ``seconds``) of the busiest rank.

    A fresh store's expert i was trained by rank i mod ``nproc``.
    """
    entries = json.loads((store / "manifest.json").read_text())["experts"]
    return max(sum(e["seconds"] for e in entries if e["index"] % nproc == r) for r in range(nproc))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="dist-bench-"))
    print(f"digits, {args.experts} experts x {args.epochs} epochs; stores under {root}")
    for repeat in range(args.repeats):
        load = os.getloadavg()[0]
        one = train(root / f"one-{repeat}", args.experts, args.epochs, 1)
        many = train(root / f"ranks-{repeat}", args.experts, args.epochs, args.nproc)
        same = comparable(root / f"one-{repeat}") == comparable(root / f"ranks-{repeat}")
        alone = training_seconds(root / f"one-{repeat}", 1)
        busiest = training_seconds(root / f"ranks-{repeat}", args.nproc)
        print(
            f"repeat {repeat}: 1 process x 1 thread {one:.1f} s, {args.nproc} ranks x 1 thread {many:.1f} s "
            f"({one / many:.2f}x); training alone {alone:.1f} s vs busiest rank {busiest:.1f} s; "
            f"stores equal: {same}; load {load:.2f} -> {os.getloadavg()[0]:.2f}"
        )
        if not same:
            sys.exit(1)


if __name__ == "__main__":
    main()
