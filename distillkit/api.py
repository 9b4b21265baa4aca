"""The library API: resolve a config, train experts, distill, evaluate, write a run directory.

The CLI is a thin shell over these functions; notebooks and scripts call them
directly (see ``examples/quickstart.py``). Nothing here prints: progress goes to
a ``Reporter`` and failures are ``DistillkitError`` subclasses.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from distillkit.artifacts import atomic_write_json, save_grid, save_synthetic
from distillkit.config import RunConfig, last_needed_epoch, to_dict
from distillkit.context import RunContext
from distillkit.data.augment import DSA
from distillkit.distilling import (
    DistillJob,
    DistillResult,
    build_distiller,
    check_ipc,
    distill,
    initial_set,
    save_distilled_set,
    stop_requests,
)
from distillkit.evaluate import EvalResult, EvalSet, evaluate_sets
from distillkit.experts import pipeline
from distillkit.experts.pipeline import default_store_dir, load_expert_slices, train_expert_store
from distillkit.experts.store import TrajectoryStore
from distillkit.host import PluginHost
from distillkit.observers import Observers, observing
from distillkit.rundir import default_run_dir, prepare_run_dir
from distillkit.runtime import (
    PreparedData,
    Reporter,
    RunScope,
    device_for,
    environment,
    model_factory,
    peak_memory_mb,
    prepare_data,
    resolve_device,
    run_scope,
    stage_seed,
)
from distillkit.setcheck import check_set_fits, check_synthetic_set

#: The library API: each stage's public functions, importable from one place. The functions
#: defined here take a whole ``RunConfig`` and unpack it for the stages, which take their own
#: section and a :class:`RunScope` (``train_expert_store``) or a ``DistillJob`` (``distill``,
#: ``build_distiller``).
__all__ = [
    "DistillJob",
    "DistillResult",
    "PreparedData",
    "Reporter",
    "RunScope",
    "build_distiller",
    "check_ipc",
    "check_set_fits",
    "check_synthetic_set",
    "default_run_dir",
    "default_store_dir",
    "device_for",
    "distill",
    "distill_job",
    "environment",
    "evaluate",
    "evaluate_many",
    "evaluate_random_real",
    "expert_key",
    "initial_set",
    "load_expert_slices",
    "merge_evaluation",
    "model_factory",
    "peak_memory_mb",
    "prepare_data",
    "prepare_run_dir",
    "random_real_set",
    "record_invocation",
    "resolve_device",
    "result_summary",
    "run",
    "run_scope",
    "save_distilled",
    "save_distilled_set",
    "stage_seed",
    "stop_requests",
    "train_expert_store",
    "train_experts",
]


def expert_key(config: RunConfig, data: PreparedData, host: PluginHost) -> dict[str, Any]:
    """The key of the expert store a run's config needs (see :func:`.pipeline.expert_key`)."""
    last_needed = last_needed_epoch(config.distill)
    return pipeline.expert_key(config.experts, last_needed, run_scope(config, host), data)


def train_experts(
    config: RunConfig,
    host: PluginHost,
    data: PreparedData,
    store_dir: Path | None = None,
    reporter: Reporter | None = None,
) -> TrajectoryStore:
    """The expert stage for a run's config: train ``experts.count`` experts, reusing finished ones."""
    last_needed = last_needed_epoch(config.distill)
    return train_expert_store(config.experts, last_needed, run_scope(config, host), data, store_dir, reporter)


def distill_job(
    config: RunConfig, host: PluginHost, data: PreparedData, store: TrajectoryStore
) -> DistillJob:
    """The distillation stage's inputs for a run's config: ``distill(distill_job(...), out_dir)``."""
    return DistillJob(config.distill, run_scope(config, host), data, store, expert_key(config, data, host))


def random_real_set(
    config: RunConfig, data: PreparedData, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The baseline: ``ipc`` random real training images per class (core default init, own seed)."""
    from distillkit.engine import defaults

    generator = torch.Generator(device=device).manual_seed(stage_seed(config.seed, "random-real"))
    ctx = data.init_context(
        config.distill.ipc,
        expert_params=lambda e: torch.empty(0),
        expert_epochs_available=0,
        make_model=lambda: torch.nn.Identity(),
        load_flat=lambda model, theta: None,
    )
    run = RunContext(config=config, device=device, generator=generator, out_dir=None)
    init = defaults.init_synthetic(run=run, ctx=ctx)
    return init.images, init.labels


def evaluate_random_real(
    config: RunConfig, data: PreparedData, reporter: Reporter | None = None
) -> dict[str, EvalResult]:
    """The random-real baseline under the run's protocol, at lr α₀ (``distill.lr_init``)."""
    real_x, real_y = random_real_set(config, data, device_for(config.device, config.deterministic))
    return evaluate(
        config, data, real_x, real_y, config.distill.lr_init, reporter=reporter, label="random-real"
    )


def evaluate(
    config: RunConfig,
    data: PreparedData,
    images: torch.Tensor,
    labels: torch.Tensor,
    lr: float,
    models: Sequence[str] | None = None,
    reporter: Reporter | None = None,
    label: str = "distilled",
) -> dict[str, EvalResult]:
    """Evaluate one set on each model of ``models`` (default: ``evaluate.models`` or the run's model)."""
    return evaluate_many(config, data, {label: (images, labels, lr)}, models, reporter)[label]


def evaluate_many(
    config: RunConfig,
    data: PreparedData,
    sets: dict[str, tuple[torch.Tensor, torch.Tensor, float]],
    models: Sequence[str] | None = None,
    reporter: Reporter | None = None,
) -> dict[str, dict[str, EvalResult]]:
    """Evaluate several sets (label → images, labels, lr) on each model; ``{label: {model: result}}``.

    The sets of one model are evaluated together, so with ``evaluate.parallel`` packing their
    networks train as one computation (e.g. the distilled and the random-real set of a run).
    """
    reporter = reporter or Reporter()
    device = device_for(config.device, config.deterministic)
    models = list(models or config.evaluate.models or (config.model.name,))
    make = model_factory(data)
    augment = DSA(config.data.augment)
    results: dict[str, dict[str, EvalResult]] = {label: {} for label in sets}
    reporter.start(f"evaluate {' + '.join(sets)}", len(models) * len(sets) * config.evaluate.runs)
    for name in models:
        seed = stage_seed(config.seed, "evaluate", name)
        items = [EvalSet(images, labels, lr, seed) for images, labels, lr in sets.values()]
        answers = evaluate_sets(
            make,
            name,
            items,
            data.test,
            config.evaluate,
            augment,
            device,
            lambda acc: reporter.advance(acc=acc),
        )
        for label, result in zip(sets, answers, strict=True):
            results[label][name] = result
    reporter.finish()
    return results


def merge_evaluation(out_dir: Path, results: dict[str, dict[str, Any]], config: RunConfig) -> None:
    """Add ``results`` (one entry per model) to ``out_dir/evaluation.json``, keeping earlier models."""
    import json

    path = Path(out_dir) / "evaluation.json"
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        earlier = {}
    merged = {k: v for k, v in earlier.items() if isinstance(v, dict)} if isinstance(earlier, dict) else {}
    for name, result in results.items():
        merged[name] = {**result, "protocol": to_dict(config.evaluate)}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, merged)


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
    atomic_write_json(out_dir / "invocation.json", {"command": command, "experts": experts})


def result_summary(results: dict[str, EvalResult]) -> dict[str, Any]:
    first = next(iter(results.values()))
    return {**first.as_dict(), "models": {k: v.as_dict() for k, v in results.items()}}


def save_distilled(
    out_dir: Path,
    config: RunConfig,
    host: PluginHost,
    data: PreparedData,
    result: DistillResult,
    store: TrajectoryStore,
) -> None:
    """Write ``synthetic.safetensors``/``.json`` and ``grid.png`` for a distilled set."""
    extra = {f"zca.{k}": v for k, v in data.zca.state_dict().items()} if data.zca else {}
    meta = {
        "dataset": data.dataset.name,
        "image_shape": list(data.dataset.image_shape),
        "class_names": list(data.dataset.class_names),
        "normalisation": {"mean": list(data.dataset.mean), "std": list(data.dataset.std)},
        "zca": data.zca is not None,
        "model": config.model.name,
        "ipc": config.distill.ipc,
        "init": result.init_source,
        "plugins": [r.as_dict() for r in host.records.values()],
        "config": to_dict(config),
        "expert_store": str(store.root),
        "environment": environment(),
    }
    save_synthetic(out_dir, result.images, result.labels, result.lr, meta, extra)
    save_grid(
        out_dir / "grid.png",
        data.to_pixels(result.images),
        result.labels,
        data.dataset.num_classes,
    )


def run(
    config: RunConfig,
    host: PluginHost,
    out_dir: Path,
    store_dir: Path | None = None,
    reporter: Reporter | None = None,
    resume: bool = False,
    sources: dict[str, str] | None = None,
    baseline: bool = True,
) -> dict[str, Any]:
    """experts (reused when cached) → distill → evaluate (+ random-real baseline) → ``results.json``.

    ``resume=True`` continues a run directory from its newest checkpoint (finished
    experts and epochs are reused from the store); the config must be the recorded one.
    ``baseline=False`` leaves out the random-real evaluation (``distillkit ablate``
    evaluates it once per seed instead of once per arm). Observer plugins (``on_metrics``)
    see every stage's records with ``out_dir`` as their run directory, and are closed at the end.
    """
    reporter = reporter or Reporter()
    scope = run_scope(config, host)
    data = prepare_data(config.data)  # bad data or ipc fail here, before an --overwrite touches a file
    check_ipc(config.distill.ipc, data)
    if not resume:
        record_invocation(out_dir, config, "run", store_dir, sources)
    with observing(scope, out_dir, reporter.note) as watching:
        return _run_stages(config, scope, data, out_dir, store_dir, reporter, resume, baseline, watching)


def _run_stages(
    config: RunConfig,
    scope: RunScope,
    data: PreparedData,
    out_dir: Path,
    store_dir: Path | None,
    reporter: Reporter,
    resume: bool,
    baseline: bool,
    watching: Observers,
) -> dict[str, Any]:
    """The stages of :func:`run` once its directory is recorded; every record also goes to ``watching``."""
    host = scope.host
    timings: dict[str, float] = {}
    last_needed = last_needed_epoch(config.distill)
    tick = time.perf_counter()
    if store_dir is not None and (store_dir / "manifest.json").exists():
        store = TrajectoryStore.open(store_dir)
    else:
        store = train_expert_store(config.experts, last_needed, scope, data, store_dir, reporter, watching)
    timings["experts"] = time.perf_counter() - tick
    tick = time.perf_counter()
    key = pipeline.expert_key(config.experts, last_needed, scope, data)
    job = DistillJob(config.distill, scope, data, store, key)
    result = distill(job, out_dir, reporter, resume=resume, observers=watching)
    timings["distill"] = time.perf_counter() - tick
    save_distilled(out_dir, config, host, data, result, store)
    tick = time.perf_counter()
    summary: dict[str, Any] = {
        "dataset": data.dataset.name,
        "ipc": config.distill.ipc,
        "plugins": list(config.plugins),
        "init": result.init_source,
        "learned_lr": result.lr,
        "final_loss": result.history[-1].loss if result.history else None,
    }
    evaluated: dict[str, dict[str, EvalResult]] = {}
    if config.evaluate.runs > 0:
        sets = {"distilled": (result.images, result.labels, result.lr)}
        if baseline:
            real_x, real_y = random_real_set(config, data, scope.device)
            sets["random_real"] = (real_x, real_y, config.distill.lr_init)
        evaluated = evaluate_many(config, data, sets, reporter=reporter)
        for label, results in evaluated.items():
            summary[label] = result_summary(results)
        summary["protocol"] = {
            "distilled_lr": result.lr,
            "random_real_lr": config.distill.lr_init,
            **to_dict(config.evaluate),
        }
    timings["evaluate"] = time.perf_counter() - tick
    summary["timings_s"] = timings
    summary["distill_s_per_iter"] = result.seconds_per_iteration
    summary.update(peak_memory_mb(scope.device))
    summary["expert_store"] = str(store.root)
    atomic_write_json(out_dir / "results.json", summary)
    for label, results in evaluated.items():
        for name, res in results.items():
            values = {"mean": res.mean, "std": res.std, **{f"run/{k}": acc for k, acc in enumerate(res.runs)}}
            watching.metrics("evaluate", len(result.history), values, subject=f"{label}/{name}")
    atomic_write_json(
        out_dir / "run.json",
        {
            "environment": environment(),
            "device": str(scope.device),
            "plugins": [r.as_dict() for r in host.records.values()],
            "timings_s": timings,
            **peak_memory_mb(scope.device),
            **({"dropped_observers": dict(watching.dropped)} if watching.dropped else {}),
        },
    )
    return summary
