"""``distillkit bench``: the figures of docs/performance.md for one config, measured one way.

- distillation seconds per outer iteration (median of a window after warm-up), peak
  memory and FLOPs per iteration, each setting in a fresh child process
  (:mod:`distillkit.bench_worker`), so data loading and expert training in this
  process do not leak into the memory figure;
- the machine's dense fp32 matmul rate, to put the achieved GFLOP/s in proportion;
- expert training throughput (one epoch of a fresh expert);
- bytes per stored expert beside the MTT reference format for the same epochs.

Nothing here prints; the CLI renders the returned dict.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from distillkit import api, errors
from distillkit.config import RunConfig, flatten_table, to_dict
from distillkit.errors import ConfigError, DistillkitError, RunFailed
from distillkit.experts.store import TrajectoryStore
from distillkit.experts.train import train_expert
from distillkit.host import PluginHost
from distillkit.resolve import resolve_config

#: Format version of the JSON ``distillkit bench`` writes.
BENCH_FORMAT = 1


@dataclass(frozen=True)
class BenchSettings:
    """How to measure: iterations skipped and timed, the swept key, optional parts."""

    warmup: int = 5
    window: int = 20
    sweep_key: str | None = None
    sweep_values: tuple[str, ...] = ()
    experts_throughput: bool = True
    whole_run: bool = False


def parse_sweep(text: str) -> tuple[str, tuple[str, ...]]:
    """``KEY=V1,V2,...`` → ``(KEY, (V1, V2, ...))``; anything else is a ``ConfigError``."""
    key, sep, values = text.partition("=")
    items = tuple(v.strip() for v in values.split(","))
    if not sep or not key.strip() or not all(items):
        raise ConfigError(
            f"--sweep expects KEY=V1,V2,... with no empty value, got '{text}'",
            hint="e.g. --sweep distill.syn_steps=20,80",
        )
    return key.strip(), items


def config_overrides(config: RunConfig) -> dict[str, Any]:
    """Dotted keys that rebuild ``config`` exactly through ``resolve_config`` (core and plugin keys)."""
    core = to_dict(config)
    plugin_options = core.pop("plugin_options")
    core.pop("plugins")
    flat = flatten_table(core)
    for name, options in plugin_options.items():
        flat.update({f"{name}.{key}": value for key, value in (options or {}).items()})
    return flat


# -- storage -----------------------------------------------------------------------------


def mtt_reference_bytes(shapes: Sequence[Sequence[int]], snapshots: int) -> int:
    """Size of one expert in MTT's buffer format: ``torch.save`` of a list of ``snapshots`` per-epoch
    lists of fp32 parameter tensors (one storage each), in a file named like MTT's
    ``replay_buffer_0.pt`` (the name is repeated inside the zip archive). Written, never loaded."""
    trajectory = [[torch.zeros(tuple(shape)) for shape in shapes] for _ in range(snapshots)]
    with tempfile.TemporaryDirectory(prefix="distillkit-bench-") as tmp:
        path = Path(tmp) / "replay_buffer_0.pt"
        torch.save(trajectory, path)
        return path.stat().st_size


def storage_figures(store: TrajectoryStore) -> dict[str, Any]:
    """Bytes on disk per finished expert beside MTT's size for the same training (MTT keeps every
    epoch's snapshot, 0..epochs, in fp32; a store may keep fewer snapshots or a smaller dtype)."""
    finished = store.finished()
    if not finished:
        raise errors.StoreError(f"the trajectory store {store.root} holds no finished expert")
    entries = {e["index"]: e for e in store.manifest.experts}
    sizes = [(store.root / entries[i]["file"]).stat().st_size for i in finished]
    first = entries[finished[0]]
    shapes = [shape for _name, shape in store.key["param_layout"]]
    reference = mtt_reference_bytes(shapes, first["epochs"] + 1)
    per_expert = statistics.median_low(sizes)
    return {
        "path": str(store.root),
        "experts": len(finished),
        "epochs": first["epochs"],
        "snapshots_stored": len(first.get("stored_epochs", range(first["epochs"] + 1))),
        "dtype": first.get("dtype", "float32"),
        "num_params": sum(int(torch.Size(s).numel()) for s in shapes),
        "bytes_per_expert": per_expert,
        "mtt_reference_bytes": reference,
        "ratio_to_mtt": per_expert / reference,
    }


# -- machine and experts -------------------------------------------------------------------------


def matmul_peak_gflops(device: torch.device, n: int | None = None, repeats: int = 7) -> dict[str, Any]:
    """Dense fp32 matmul rate, 2n³/t with t the median of ``repeats`` timed products (one warm-up)."""
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    times = []
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        tick = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - tick)
    seconds = statistics.median(times[1:])
    return {"n": n, "seconds": seconds, "gflops": 2 * n**3 / seconds / 1e9}


def expert_throughput(config: RunConfig, host: PluginHost, data: api.PreparedData) -> dict[str, Any]:
    """Train one fresh expert for one epoch, its test pass included (the last epoch is always tested)."""
    one_epoch = replace(config.experts, epochs=1)
    scope = api.run_scope(config, host)
    model = api.model_factory(data)(scope.model, scope.seed_for("bench-init"))
    run = scope.context("bench-expert")
    result = train_expert(run, host.hook, model, data.train, data.test, one_epoch, scope.augment)
    images = len(data.train_images)
    return {
        "images": images,
        "seconds_per_epoch": result.seconds,
        "images_per_s": images / result.seconds,
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bench_environment(device: torch.device) -> dict[str, Any]:
    env = {**api.environment(), "device": str(device), "cpu": cpu_model(), "cpu_count": _cpu_count()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    env["date"] = time.strftime("%Y-%m-%d")
    return env


def _cpu_count() -> int | None:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


# -- distillation in a child process ----------------------------------------------------------------


def _raise_child_error(error: dict[str, Any]) -> None:
    cls = getattr(errors, error.get("type", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, DistillkitError)):
        cls = RunFailed
    raise cls(error["message"], hint=error.get("hint"))


def measure_in_child(config: RunConfig, store: Path, warmup: int, window: int) -> dict[str, Any]:
    """Run :mod:`distillkit.bench_worker` on ``config`` in a fresh interpreter; return its figures."""
    spec = {
        "overrides": config_overrides(config),
        "plugins": list(config.plugins),
        "store": str(store),
        "warmup": warmup,
        "window": window,
    }
    with tempfile.TemporaryDirectory(prefix="distillkit-bench-") as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        proc = subprocess.run(
            [sys.executable, "-m", "distillkit.bench_worker", str(spec_path), str(result_path)],
            stdout=subprocess.DEVNULL,
        )
        if proc.returncode != 0 or not result_path.exists():
            raise RunFailed(
                f"the bench worker process exited with code {proc.returncode}",
                hint="a negative code is a signal (e.g. -9: killed, often out of memory); see stderr above",
            )
        result = json.loads(result_path.read_text())
    if "error" in result:
        _raise_child_error(result["error"])
    return result


def sweep_points(config: RunConfig, settings: BenchSettings) -> list[tuple[str, dict[str, str], RunConfig]]:
    """(label, overrides, resolved config) per measured setting; every value is validated up front."""
    if settings.sweep_key is None:
        return [("as configured", {}, config)]
    base = config_overrides(config)
    points = []
    for value in settings.sweep_values:
        extra = {settings.sweep_key: value}
        resolved, _host = resolve_config(None, None, {**base, **extra}, list(config.plugins))
        points.append((f"{settings.sweep_key}={value}", extra, resolved))
    return points


def whole_run_stages(config: RunConfig, host: PluginHost, reporter: api.Reporter) -> dict[str, Any]:
    """Time one complete ``distillkit run`` (fresh experts, distillation, evaluation) in a temporary folder.

    The experts go to a fresh temporary store, so all three stages are measured as a first run
    pays them. Throughput is in network-images per second: for experts, every expert-epoch sees
    the training split once (K packed experts count K times); for evaluation, every trained
    network (models × sets × runs) sees its set once per epoch.
    """
    from distillkit.artifacts import load_synthetic

    with tempfile.TemporaryDirectory(prefix="distillkit-bench-") as tmp:
        began = time.perf_counter()
        summary = api.run(config, host, Path(tmp) / "run", Path(tmp) / "experts", reporter)
        wall = time.perf_counter() - began
        images = len(load_synthetic(Path(tmp) / "run")[0])
        store = TrajectoryStore.open(Path(tmp) / "experts")
        expert_epochs = len(store.finished()) * int(store.key["epochs"])
    stages = summary["timings_s"]
    train_images = len(api.prepare_data(config.data).train[1])
    models = len(config.evaluate.models or (config.model.name,))
    networks = models * 2 * config.evaluate.runs  # the distilled and the random-real set
    seen = networks * images * config.evaluate.epochs
    return {
        "wall_s": wall,
        "stages_s": stages,
        "evaluation_networks": networks,
        "images_per_set": images,
        "evaluation_network_images_per_s": seen / stages["evaluate"] if stages["evaluate"] > 0 else None,
        "expert_network_images_per_s": expert_epochs * train_images / stages["experts"],
        "experts_parallel": config.experts.parallel,
        "evaluate_parallel": config.evaluate.parallel,
        "peak_rss_mb": summary.get("peak_rss_mb"),
    }


def run_bench(
    config: RunConfig,
    host: PluginHost,
    settings: BenchSettings,
    store_dir: Path | None = None,
    reporter: api.Reporter | None = None,
) -> dict[str, Any]:
    """Measure everything ``distillkit bench`` reports; return it as a JSON-ready dict."""
    reporter = reporter or api.Reporter()
    if settings.warmup < 0 or settings.window < 1:
        raise ConfigError(
            f"bench needs warmup >= 0 and window >= 1, got {settings.warmup} and {settings.window}"
        )
    device = api.resolve_device(config.device)
    points = sweep_points(config, settings)
    # Like `distillkit run`: an existing store is used as is, otherwise experts are trained (or reused).
    has_store = store_dir is not None and (store_dir / "manifest.json").exists()
    data = api.prepare_data(config.data) if settings.experts_throughput or not has_store else None
    if has_store:
        store = TrajectoryStore.open(store_dir)
    else:
        store = api.train_experts(config, host, data, store_dir, reporter)
    storage = storage_figures(store)
    throughput = None
    if settings.experts_throughput:
        reporter.note("expert throughput: training one epoch of a fresh expert")
        throughput = expert_throughput(config, host, data)
    distillation = []
    reporter.start("distill (child processes)", len(points))
    for label, extra, point_config in points:
        figures = measure_in_child(point_config, store.root, settings.warmup, settings.window)
        distillation.append({"label": label, "overrides": extra, **figures})
        reporter.advance(s_per_iter=figures["s_per_iter"])
    reporter.finish()
    whole = whole_run_stages(config, host, reporter) if settings.whole_run else None
    machine = matmul_peak_gflops(device)
    for row in distillation:
        row["gflops_per_s"] = row["flops_per_iter"] / row["s_per_iter"] / 1e9
        row["fraction_of_matmul_peak"] = row["gflops_per_s"] / machine["gflops"]
    return {
        "format": BENCH_FORMAT,
        "environment": bench_environment(device),
        "config": to_dict(config),
        "settings": {
            "warmup": settings.warmup,
            "window": settings.window,
            "sweep": {"key": settings.sweep_key, "values": list(settings.sweep_values)}
            if settings.sweep_key
            else None,
        },
        "distillation": distillation,
        "matmul_peak": machine,
        "experts_throughput": throughput,
        "whole_run": whole,
        "storage": storage,
    }
