"""Seconds in convolution kernels against everything else, for any Python program on CPU.

Usage:
    python examples/benchmarks/conv_profile.py --out FILE.json -- [-u] (SCRIPT | -m MODULE) [ARGS...]

Runs the program in this process under a ``TorchDispatchMode`` that times every operator call and,
when the program ends (also through ``sys.exit``), writes to FILE.json the seconds summed per
operator and into two figures: ``conv_s``, the operators whose name contains ``conv`` (the forward
``convolution`` and its ``convolution_backward``, which also serves the double backward), and
``self_s``, all operators. The mode sees each call as autograd dispatches it, below autograd, so
the kernels run unchanged and nested calls are not counted twice; on CPU an operator returns when its
result is computed (its intra-op threads included) and the autograd engine runs backward on the
calling thread, so ``self_s`` is the time spent inside operators and ``self_s - conv_s`` what is not
convolution. Memory stays constant however long the program runs (``torch.profiler`` keeps every
event: a 3-epoch expert under it ran out of 24 GiB).

Why: both distillkit and the reference MTT code run the same convolutions through the same oneDNN
kernels, so a code's convolution seconds per unit of work (an iteration, an epoch) bound how fast it
can get by optimising everything else. ``reference_bench.py --profile-convolutions`` runs its jobs
through this wrapper and prints that bound beside each target. The program sees ``sys.argv`` as if
started directly; its exit status is passed on.
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

TOP_OPERATORS = 25
USAGE = "usage: conv_profile.py --out FILE.json -- [-u] (SCRIPT | -m MODULE) [ARGS...]"


def is_convolution(name: str) -> bool:
    return "conv" in name.lower()


class OperatorTimes(TorchDispatchMode):
    """Wall seconds and calls per operator, summed as the operators run."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        name = func.name()
        self.seconds[name] += time.perf_counter() - start
        self.calls[name] += 1
        return out


def summarise(times: OperatorTimes) -> dict[str, Any]:
    """The seconds of every operator, the largest first, and their sums: convolutions and all."""
    rows = sorted(
        ({"name": name, "self_s": s, "calls": times.calls[name]} for name, s in times.seconds.items()),
        key=lambda row: -row["self_s"],
    )
    total = sum(row["self_s"] for row in rows)
    conv = sum(row["self_s"] for row in rows if is_convolution(row["name"]))
    return {"self_s": total, "conv_s": conv, "operators": rows[:TOP_OPERATORS]}


def run_target(target: list[str]) -> int:
    """Run ``SCRIPT args`` or ``-m MODULE args`` here; its exit status."""
    module = target[1] if target[0] == "-m" else None
    sys.argv = target[1:] if module else target
    if not module:
        sys.path.insert(0, str(Path(target[0]).resolve().parent))  # as `python SCRIPT` does
    try:
        if module:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(target[0], run_name="__main__")
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        print(USAGE, file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(description="Convolution seconds of a Python program (CPU).")
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON")
    args = parser.parse_args(argv[:split])
    target = argv[split + 1 :]
    if target[:1] == ["-u"]:  # unbuffered: the caller sets PYTHONUNBUFFERED for that
        target = target[1:]
    if not target or target == ["-m"]:
        print(USAGE, file=sys.stderr)
        return 2

    times = OperatorTimes()
    start = time.perf_counter()
    with times:
        code = run_target(target)
    wall = time.perf_counter() - start
    result = {"command": target, "exit_code": code, "wall_s": wall, **summarise(times)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
