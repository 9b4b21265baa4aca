"""What a run directory records beside its sets: config and invocation, snapshots, evaluations.

Split out of :mod:`distillkit.api` (which re-exports these): each function writes or builds one
record of ``RUN_DIR``; the formats live in :mod:`distillkit.invocation`,
:mod:`distillkit.snapshots` and :mod:`distillkit.evaluation_log`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from distillkit import evaluation_log, invocation
from distillkit.artifacts import atomic_write_json, read_json
from distillkit.config import RunConfig, to_dict
from distillkit.data.augment import DSA
from distillkit.errors import ConfigError
from distillkit.evaluate import EvalResult, EvalSet, evaluate_sets
from distillkit.experts.store import TrajectoryStore
from distillkit.host import PluginHost
from distillkit.runtime import PreparedData, device_for, environment, model_factory, stage_seed
from distillkit.snapshots import SnapshotEval, Snapshots, keep_final_set


def record_invocation(
    out_dir: Path,
    config: RunConfig,
    command: str,
    store_dir: Path | None,
    sources: dict[str, str] | None = None,
) -> None:
    """``config.json`` and ``invocation.json``: what ``--resume`` needs to continue this run.

    ``sources`` (from :func:`distillkit.resolve.resolve_layers`) names the layer that set each
    key; it is kept in ``config.json`` under ``"sources"`` so a user can see why a value is what it is.
    """
    recorded = to_dict(config)
    if sources:
        recorded["sources"] = sources
    atomic_write_json(out_dir / "config.json", recorded)
    experts = str(store_dir.resolve()) if store_dir is not None else None
    invocation.start_record(out_dir, command, experts, config.plugins)


def record_resume(out_dir: Path, config: RunConfig, command: str) -> None:
    """Add this ``--resume`` to ``invocation.json``; an extension also raises the recorded iterations.

    Extending (``distill.iterations`` above the recorded value) first keeps the finished run's
    final set as a snapshot of its iteration, since the extension replaces ``synthetic.*``.
    """
    path = Path(out_dir) / "config.json"
    recorded = read_json(path, ConfigError, f"{path} is missing")
    before = int(recorded["distill"]["iterations"])
    if config.distill.iterations > before:
        note = f"the final set before extending to {config.distill.iterations} iterations"
        keep_final_set(out_dir, before, note)
        recorded["distill"]["iterations"] = config.distill.iterations
        atomic_write_json(path, recorded)
    invocation.append_record(out_dir, command, config.plugins)


def synthetic_meta(
    config: RunConfig, host: PluginHost, data: PreparedData, store: TrajectoryStore
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """What a saved set carries besides its images: the sidecar's metadata and extra tensors (ZCA)."""
    extra = {f"zca.{k}": v for k, v in data.zca.state_dict().items()} if data.zca else {}
    meta = {
        "dataset": data.dataset.name,
        "image_shape": list(data.dataset.image_shape),
        "class_names": list(data.dataset.class_names),
        "normalisation": {"mean": list(data.dataset.mean), "std": list(data.dataset.std)},
        "zca": data.zca is not None,
        "model": config.model.name,
        "ipc": config.distill.ipc,
        "plugins": [r.as_dict() for r in host.records.values()],
        "config": to_dict(config),
        "expert_store": str(store.root),
        "environment": environment(),
    }
    return meta, extra


def snapshot_evaluator(config: RunConfig, data: PreparedData) -> SnapshotEval | None:
    """``distill.snapshot_eval`` fresh networks of the run's model trained on a set, tested on validation.

    The evaluation protocol with ``distill.snapshot_eval_epochs``; the same seeds for every
    snapshot (paired comparisons), and the caller's random state is left as it was.
    """
    if not config.distill.snapshot_eval or data.val is None:
        return None
    protocol = replace(
        config.evaluate, runs=config.distill.snapshot_eval, epochs=config.distill.snapshot_eval_epochs
    )
    device = device_for(config.device, config.deterministic)
    make, augment = model_factory(data), DSA(config.data.augment)
    seed = stage_seed(config.seed, "snapshot-eval", config.model.name)
    val = data.val

    def evaluate_snapshot(images: torch.Tensor, labels: torch.Tensor, lr: float) -> dict[str, Any]:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            sets = [EvalSet(images, labels, lr, seed)]
            (result,) = evaluate_sets(make, config.model.name, sets, val, protocol, augment, device)
        return {**result.as_dict(), "split": "validation", "epochs": protocol.epochs}

    return evaluate_snapshot


def snapshot_writer(
    config: RunConfig, host: PluginHost, data: PreparedData, store: TrajectoryStore, out_dir: Path
) -> Snapshots | None:
    """The run's :class:`Snapshots` (``distill.snapshot_every``), or None when they are off."""
    if not config.distill.snapshot_every:
        return None
    meta, extra = synthetic_meta(config, host, data, store)
    return Snapshots(
        Path(out_dir), config.distill.snapshot_every, meta, extra, snapshot_evaluator(config, data)
    )


def evaluation_entry(
    command: str,
    config: RunConfig,
    evaluated: dict[str, Any],
    results: dict[str, dict[str, EvalResult]],
    lr: float,
) -> dict[str, Any]:
    """The ``evaluation.json`` entry of ``results`` (labels "distilled" and, if evaluated, "random_real")."""
    protocol = {**to_dict(config.evaluate), "lr": lr, "split": "test"}
    baseline = results.get("random_real")
    if baseline is not None:
        protocol["random_real_lr"] = config.distill.lr_init
    return evaluation_log.new_entry(
        command,
        evaluated,
        protocol,
        {name: r.as_dict() for name, r in results["distilled"].items()},
        {name: r.as_dict() for name, r in baseline.items()} if baseline is not None else None,
    )
