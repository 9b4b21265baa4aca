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

from distillkit import evaluation_log
from distillkit.artifacts import SOFT_LABELS, SYNTHETIC_TENSORS, atomic_write_json, save_grid, save_synthetic
from distillkit.config import RunConfig, last_needed_epoch, to_dict
from distillkit.context import RunContext
from distillkit.data.augment import DSA
from distillkit.distilling import (
    DistillJob,
    DistillResult,
    build_distiller,
    distill,
    save_distilled_set,
    stop_requests,
)
from distillkit.distributed import World
from distillkit.evaluate import EvalResult, EvalSet, evaluate_networks
from distillkit.experts import pipeline
from distillkit.experts.pipeline import default_store_dir, load_expert_slices, train_expert_store
from distillkit.experts.store import TrajectoryStore
from distillkit.host import PluginHost
from distillkit.observers import Observers, observing
from distillkit.records import (
    evaluation_entry,
    record_invocation,
    record_resume,
    snapshot_evaluator,
    snapshot_writer,
    synthetic_meta,
)
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
from distillkit.startset import check_ipc, initial_set

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
    "evaluation_entry",
    "expert_key",
    "initial_set",
    "load_expert_slices",
    "model_factory",
    "peak_memory_mb",
    "prepare_data",
    "prepare_run_dir",
    "random_real_set",
    "record_invocation",
    "record_resume",
    "resolve_device",
    "result_summary",
    "run",
    "run_scope",
    "save_distilled",
    "save_distilled_set",
    "snapshot_evaluator",
    "snapshot_writer",
    "stage_seed",
    "stop_requests",
    "synthetic_meta",
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
    world: World = World(),
) -> TrajectoryStore:
    """The expert stage for a run's config: train ``experts.count`` experts, reusing finished ones.

    In a job of several ranks (``world``) the ranks share the missing experts.
    """
    last_needed = last_needed_epoch(config.distill)
    scope = run_scope(config, host, world)
    return train_expert_store(config.experts, last_needed, scope, data, store_dir, reporter)


def distill_job(
    config: RunConfig,
    host: PluginHost,
    data: PreparedData,
    store: TrajectoryStore,
    world: World = World(),
) -> DistillJob:
    """The distillation stage's inputs for a run's config: ``distill(distill_job(...), out_dir)``.

    In a job of several ranks (``world``) each rank matches its own segments.
    """
    scope = run_scope(config, host, world)
    return DistillJob(config.distill, scope, data, store, expert_key(config, data, host))


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
    world: World = World(),
) -> dict[str, EvalResult]:
    """Evaluate one set on each model of ``models`` (default: ``evaluate.models`` or the run's model)."""
    return evaluate_many(config, data, {label: (images, labels, lr)}, models, reporter, world)[label]


def evaluate_many(
    config: RunConfig,
    data: PreparedData,
    sets: dict[str, tuple[torch.Tensor, torch.Tensor, float]],
    models: Sequence[str] | None = None,
    reporter: Reporter | None = None,
    world: World = World(),
) -> dict[str, dict[str, EvalResult]]:
    """Evaluate several sets (label → images, labels, lr) on each model; ``{label: {model: result}}``.

    The sets of one model are evaluated together, so with ``evaluate.parallel`` packing their
    networks train as one computation (e.g. the distilled and the random-real set of a run).
    Over several ranks (``world``) the networks of all models and sets are shared out
    round-robin and every rank gets all results; network k's seed does not depend on the rank,
    so the results are the single process's (docs/distributed.md).
    """
    reporter = reporter or Reporter()
    device = world.device(device_for(config.device, config.deterministic))
    models = list(models or config.evaluate.models or (config.model.name,))
    make = model_factory(data)
    augment = DSA(config.data.augment)
    runs = config.evaluate.runs
    every = [(name, index, k) for name in models for index in range(len(sets)) for k in range(runs)]
    mine = world.shard(every)
    reporter.start(f"evaluate {' + '.join(sets)}", len(mine))
    accs: dict[tuple[str, int, int], float] = {}
    for name in models:
        seed = stage_seed(config.seed, "evaluate", name)
        items = [EvalSet(images, labels, lr, seed) for images, labels, lr in sets.values()]
        networks = [(index, k) for model, index, k in mine if model == name]
        answers = evaluate_networks(
            make,
            name,
            items,
            networks,
            data.test,
            config.evaluate,
            augment,
            device,
            lambda acc: reporter.advance(acc=acc),
        )
        accs.update({(name, *network): acc for network, acc in zip(networks, answers, strict=True)})
    for part in world.all_gather_object([[*job, acc] for job, acc in accs.items()]):
        accs.update({(name, index, k): acc for name, index, k, acc in part})
    reporter.finish()
    return {
        label: {name: EvalResult(name, tuple(accs[name, i, k] for k in range(runs))) for name in models}
        for i, label in enumerate(sets)
    }


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
    meta, extra = synthetic_meta(config, host, data, store)
    meta |= {"init": result.init_source, "iteration": config.distill.iterations}
    if result.soft_labels is not None:
        meta["labels"] = result.labels_meta
        extra[SOFT_LABELS] = result.soft_labels
    save_synthetic(out_dir, result.images, result.labels, result.lr, meta, extra)
    save_grid(
        out_dir / "grid.png",
        data.to_pixels(result.images),
        result.labels,
        data.dataset.num_classes,
        data.dataset.class_names,
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
    world: World = World(),
) -> dict[str, Any]:
    """experts (reused when cached) → distill → evaluate (+ random-real baseline) → ``results.json``.

    ``resume=True`` continues a run directory from its newest checkpoint (finished
    experts and epochs are reused from the store); the config must be the recorded one.
    ``baseline=False`` leaves out the random-real evaluation (``distillkit ablate``
    evaluates it once per seed instead of once per arm). Over several ranks (``world``)
    every stage runs on all of them and rank 0 alone writes the run files; the other
    ranks return the same summary without writing it.
    Observer plugins (``on_metrics``) see every stage's records with ``out_dir`` as their run
    directory (rank 0's only), and are closed at the end.
    """
    reporter = reporter or Reporter()
    scope = run_scope(config, host, world)
    data = prepare_data(config.data)  # bad data or ipc fail here, before an --overwrite touches a file
    check_ipc(config.distill.ipc, data)
    if world.is_main and resume:
        record_resume(out_dir, config, "run")
    elif world.is_main:
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
    host, world = scope.host, scope.world
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
    snapshots = snapshot_writer(config, host, data, store, out_dir) if world.is_main else None
    result = distill(job, out_dir, reporter, resume=resume, snapshots=snapshots, observers=watching)
    timings["distill"] = time.perf_counter() - tick
    if world.is_main:
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
        sets = {"distilled": (result.images, result.training_labels, result.lr)}
        if baseline:
            real_x, real_y = random_real_set(config, data, scope.device)
            sets["random_real"] = (real_x, real_y, config.distill.lr_init)
        evaluated = evaluate_many(config, data, sets, reporter=reporter, world=world)
        for label, results in evaluated.items():
            summary[label] = result_summary(results)
        final = {"kind": "final", "file": SYNTHETIC_TENSORS, "iteration": config.distill.iterations}
        if world.is_main:
            entry = evaluation_entry("run", config, final, evaluated, result.lr)
            evaluation_log.append_entry(out_dir, entry)
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
    if not world.is_main:
        return summary
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
