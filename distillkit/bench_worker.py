"""The distillation half of ``distillkit bench``, run in a fresh child process.

A process that has loaded data or trained experts keeps that peak for ever, so
``distillkit bench`` starts ``python -m distillkit.bench_worker SPEC RESULT``
once per measured setting. The child resolves the config, builds the engine with
:func:`distillkit.api.build_distiller` (what ``distillkit distill`` runs), then
times ``warmup + window`` calls of ``Distiller.step()`` and counts the FLOPs of
one more.

Memory is reported three ways: the child's whole-life peak RSS (what a
``distillkit distill`` process needs, data loading included), the peak RSS
during the distillation iterations alone (VmHWM reset through
``/proc/self/clear_refs`` once setup is done), and the CUDA allocator's peak
(reset after setup) on a GPU. RSS figures come from ``/proc/self/status``
(VmHWM belongs to this process's own address space), not ``ru_maxrss``: Linux
carries the parent's peak into a child's ``ru_maxrss`` across fork/exec. Off
Linux only ``ru_maxrss`` exists, and it is reported with that caveat.

Errors are written to the result file as ``{"error": {...}}`` so the parent can
re-raise the same ``DistillkitError`` with its exit code.
"""

from __future__ import annotations

import json
import os
import re
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from distillkit.engine.graphbudget import step_graph_bytes
from distillkit.engine.loop import Distiller
from distillkit.errors import DistillkitError

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_mb(field: str) -> float | None:
    """A ``VmRSS``/``VmHWM`` line of ``/proc/self/status`` in MiB (None off Linux)."""
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) / 1024 if match else None


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS; False where the kernel does not allow it."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    hwm, rss = _status_mb("VmHWM"), _status_mb("VmRSS")
    return hwm is not None and rss is not None and hwm <= rss * 1.05 + 1


def rusage_peak_rss_mb() -> float:
    """``ru_maxrss`` in MiB: the fallback off Linux (it may include the parent's peak)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 2**20 if sys.platform == "darwin" else kb / 1024


def _load_average() -> float | None:
    """The 1-minute system load average: on a shared machine, how crowded the timing was."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_step_flops(distiller: Distiller) -> int:
    """FLOPs of one ``distiller.step()``: inner forwards, their create-graph backwards and the outer
    backward through them (double-backward ops such as ``convolution_backward`` are counted).
    Imported here, after the memory figures are taken: the module adds ~75 MiB of RSS."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        distiller.step()
    return int(counter.get_total_flops())


def measure_distiller(distiller: Distiller, warmup: int, window: int) -> dict[str, Any]:
    """Time ``warmup + window`` iterations (median of the window) and track their peak memory."""
    device = distiller.run.device
    setup_rss, setup_peak = _status_mb("VmRSS"), _status_mb("VmHWM")
    window_rss = reset_peak_rss()
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        setup_cuda = torch.cuda.memory_allocated(device) / 2**20
    load_before = _load_average()
    seconds = []
    for _ in range(warmup + window):
        _sync(device)
        tick = time.perf_counter()
        distiller.step()
        _sync(device)
        seconds.append(time.perf_counter() - tick)
    timed = seconds[warmup:]
    end_peak = _status_mb("VmHWM")  # since the reset, or whole life where the reset failed
    window_peak = end_peak if window_rss else None
    result: dict[str, Any] = {
        "s_per_iter": statistics.median(timed),
        "s_per_iter_min": min(timed),
        "s_per_iter_max": max(timed),
        "iteration_seconds": seconds,
        "load_average": [load_before, _load_average()],
        "setup_rss_mb": setup_rss,
        "setup_peak_rss_mb": setup_peak,
        "distill_peak_rss_mb": window_peak,
        "peak_rss_mb": rusage_peak_rss_mb() if end_peak is None else max(setup_peak or 0.0, end_peak),
    }
    if device.type == "cuda":
        result["setup_cuda_mb"] = setup_cuda
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    result["flops_per_iter"] = count_step_flops(distiller)
    return result


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Resolve ``spec``'s config, build the engine on its store and measure it."""
    from distillkit import api
    from distillkit.experts.store import TrajectoryStore
    from distillkit.resolve import resolve_config

    config, host = resolve_config(None, None, spec["overrides"], spec["plugins"])
    store = TrajectoryStore.open(Path(spec["store"]))
    data = api.prepare_data(config.data)
    distiller, _source = api.build_distiller(api.distill_job(config, host, data, store))
    data.release_images()  # as `distillkit distill` does once the start set is drawn
    result = measure_distiller(distiller, spec["warmup"], spec["window"])
    result["threads"] = torch.get_num_threads()
    # What one kept step graph holds (standard mode keeps N of them), and K where a budget chose it.
    result["step_graph_mb"] = step_graph_bytes(distiller.setup, distiller.experts[0][0]) / 2**20
    if distiller.graph_fit is not None:
        result["graph_steps"] = distiller.graph_fit.graph_steps
    return result


def main(argv: list[str]) -> int:
    """``python -m distillkit.bench_worker SPEC.json RESULT.json``."""
    spec_path, result_path = Path(argv[0]), Path(argv[1])
    try:
        payload: dict[str, Any] = measure(json.loads(spec_path.read_text()))
    except DistillkitError as exc:
        payload = {"error": {"type": type(exc).__name__, "message": str(exc), "hint": exc.hint}}
    result_path.write_text(json.dumps(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
