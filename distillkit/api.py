"""The library API: resolve a config, train experts, distill, evaluate, write a run directory.

The CLI is a thin shell over these functions; notebooks and scripts call them
directly (see ``examples/quickstart.py``). Nothing here prints: progress goes to
a ``Reporter`` and failures are ``DistillkitError`` subclasses.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import resource
import signal
import statistics
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from distillkit import __version__
from distillkit.artifacts import atomic_write_json, save_grid, save_synthetic
from distillkit.checkpoint import Checkpoint, checkpoint_dir, load_latest_checkpoint, save_checkpoint
from distillkit.config import RunConfig, last_needed_epoch, to_dict
from distillkit.context import InitContext, RunContext
from distillkit.data import ZCA, ImageDataset, load_dataset
from distillkit.data.augment import DSA
from distillkit.engine.loop import Distiller, DivergenceError, IterationResult, call_hook
from distillkit.engine.student import FlatStudent, load_flat, param_layout
from distillkit.errors import ConfigError, DataError, Interrupted, StoreError
from distillkit.evaluate import EvalResult, evaluate_set
from distillkit.experts.partial import PartialCheckpoint
from distillkit.experts.store import TrajectoryStore, describe_epochs
from distillkit.experts.train import epochs_to_store, train_expert
from distillkit.host import PluginHost
from distillkit.models import build_model
from distillkit.rundir import default_run_dir as default_run_dir  # re-exported library API
from distillkit.rundir import exclusive
from distillkit.rundir import prepare_run_dir as prepare_run_dir


class Reporter:
    """Progress sink; the default does nothing (the CLI passes a rich one)."""

    def start(self, stage: str, total: int) -> None: ...

    def advance(self, n: int = 1, **info: Any) -> None: ...

    def finish(self) -> None: ...

    def note(self, message: str) -> None: ...


# -- data and models -----------------------------------------------------------------


@dataclass
class PreparedData:
    """The dataset after preprocessing (normalisation, optional ZCA), ready for every stage."""

    dataset: ImageDataset
    train_images: torch.Tensor
    test_images: torch.Tensor
    zca: ZCA | None

    @property
    def train(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.train_images, self.dataset.train_labels

    @property
    def test(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.test_images, self.dataset.test_labels

    def to_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Synthetic images back to [0, 1] pixels for pictures (inverse ZCA, then de-normalise)."""
        images = images.detach().cpu()
        if self.zca is not None:
            images = self.zca.inverse(images)
        return self.dataset.to_pixels(images)


def prepare_data(config: RunConfig) -> PreparedData:
    """Load the configured dataset and apply ZCA if asked (fitted on train, applied to test)."""
    dataset = load_dataset(config.data.dataset, config.data.data_path or None, config.data.download)
    if config.data.zca:
        zca = ZCA.fit(dataset.train_images)
        return PreparedData(
            dataset, zca.transform(dataset.train_images), zca.transform(dataset.test_images), zca
        )
    return PreparedData(dataset, dataset.train_images, dataset.test_images, None)


def model_factory(config: RunConfig, data: PreparedData):
    """``make(name, seed)`` builds a freshly, reproducibly initialised network for this dataset."""
    channels, height, width = data.dataset.image_shape

    def make(name: str, seed: int) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_model(name, channels, data.dataset.num_classes, (height, width))

    return make


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; an unavailable CUDA device is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device '{name}'", hint="use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available", hint="use --device cpu")
    return device


def device_for(config: RunConfig) -> torch.device:
    """The run's device, with deterministic kernels switched on when ``deterministic`` is set.

    CPU kernels here are deterministic already; cuDNN and cuBLAS are not by default,
    so a resumed CUDA run matches an uninterrupted one bit for bit only with this on.
    """
    device = resolve_device(config.device)
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    return device


def stage_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed for one stage/item, derived from the run seed (independent streams)."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def make_run_context(
    config: RunConfig, host: PluginHost, device: torch.device, seed: int, out_dir: Path | None
) -> RunContext:
    return RunContext(
        config=config,
        device=device,
        generator=torch.Generator(device=device).manual_seed(seed),
        out_dir=out_dir,
        plugin_configs=dict(host.configs),
    )


# -- experts --------------------------------------------------------------------------


def expert_key(config: RunConfig, data: PreparedData, host: PluginHost) -> dict[str, Any]:
    """Everything that determines the trajectories; equal keys ⇒ a store can be reused."""
    model = model_factory(config, data)(config.model.name, 0)
    layout = param_layout(model)
    expert_plugins = {
        name: to_dict(host.configs.get(name))
        for name, record in host.records.items()
        if "expert_loss" in record.hooks
    }
    experts = to_dict(config.experts)
    experts.pop("count")
    experts.pop("store_epochs")  # what it selects is the key's "stored_epochs"
    kept = epochs_to_store(config.experts, last_needed_epoch(config.distill))
    # Listed only when some epochs are left out, so an all-epochs store keeps its key (and
    # cache folder); a store of fewer epochs is never reused for a longer distillation.
    stored = {"stored_epochs": kept} if len(kept) < config.experts.epochs + 1 else {}
    return {
        "dataset": data.dataset.name,
        "image_shape": list(data.dataset.image_shape),
        "num_classes": data.dataset.num_classes,
        "class_names": list(data.dataset.class_names),
        "preprocessing": {
            "mean": list(data.dataset.mean),
            "std": list(data.dataset.std),
            "zca": config.data.zca,
            "augment": config.data.augment,
        },
        "model": config.model.name,
        "param_layout": [[s.name, list(s.shape)] for s in layout],
        "epochs": config.experts.epochs,
        "num_params": sum(s.numel for s in layout),
        "experts": experts,
        "store_dtype": config.experts.store_dtype,
        "seed": config.seed,
        "expert_plugins": expert_plugins,
        **stored,
    }


def default_store_dir(key: dict[str, Any]) -> Path:
    """Cache folder for a key: ``$DISTILLKIT_CACHE`` or ``~/.cache/distillkit``, then ``experts/<hash>``."""
    root = Path(os.environ.get("DISTILLKIT_CACHE", Path.home() / ".cache" / "distillkit"))
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return root / "experts" / f"{key['dataset'].replace('/', '_').replace(':', '_')}-{digest}"


def train_experts(
    config: RunConfig,
    host: PluginHost,
    data: PreparedData,
    store_dir: Path | None = None,
    reporter: Reporter | None = None,
) -> TrajectoryStore:
    """Train ``experts.count`` experts into a store, reusing every expert already finished there.

    Each epoch also leaves a partial checkpoint in the store, so an interrupted
    expert resumes from its last complete epoch (see :mod:`distillkit.experts.partial`).
    """
    reporter = reporter or Reporter()
    key = expert_key(config, data, host)
    store = TrajectoryStore.create_or_open(store_dir or default_store_dir(key), key)
    # One trainer per store: a second process waits, then reuses what the first finished.
    with exclusive(store.root):
        store = TrajectoryStore.open(store.root)
        _train_missing_experts(config, host, data, store, reporter)
    return store


def _train_missing_experts(
    config: RunConfig, host: PluginHost, data: PreparedData, store: TrajectoryStore, reporter: Reporter
) -> None:
    """Train every expert the store lacks, resuming a partially trained one from its last epoch."""
    device = device_for(config)
    make = model_factory(config, data)
    augment = DSA(config.data.augment)
    todo = [i for i in range(config.experts.count) if i not in store.finished()]
    if len(todo) < config.experts.count:
        reporter.note(f"reusing {config.experts.count - len(todo)} finished experts in {store.root}")
    for index in store.finished():  # a crash right after write_expert can leave one behind
        PartialCheckpoint(store.root, index).discard()
    reporter.start("experts", len(todo) * config.experts.epochs)
    for index in todo:
        run = make_run_context(config, host, device, stage_seed(config.seed, "expert", index), None)
        checkpoint = PartialCheckpoint(store.root, index)
        resume = checkpoint.resume(reporter.note)
        if resume is not None:
            reporter.advance(resume.epoch)
        result = train_expert(
            run,
            host.hook,
            make(config.model.name, stage_seed(config.seed, "expert-init", index)),
            data.train,
            data.test,
            config.experts,
            augment,
            on_epoch=lambda epoch, acc, i=index: reporter.advance(expert=i, test_acc=acc),
            keep=store.key.get("stored_epochs"),
            resume=resume,
            on_checkpoint=checkpoint.save,
        )
        store.write_expert(index, result.trajectory, {"test_acc": result.test_acc, "seconds": result.seconds})
        checkpoint.discard()
    reporter.finish()


def load_expert_slices(store: TrajectoryStore, config: RunConfig) -> list[torch.Tensor]:
    """Epochs 0..T⁺−1+M of every expert: the only part distillation can touch, kept in memory."""
    needed = last_needed_epoch(config.distill)
    experts = []
    for index in store.finished():
        if store.num_epochs(index) < needed:
            raise StoreError(
                f"expert {index} in {store.root} has {store.num_epochs(index)} epochs, but "
                f"(max_start_epoch - 1) + expert_epochs = {needed}",
                hint="train longer experts or lower distill.max_start_epoch",
            )
        held = store.stored_epochs(index)
        if not set(range(needed + 1)) <= set(held):
            raise StoreError(
                f"expert {index} in {store.root} stores epochs {describe_epochs(held)}, but "
                f"distillation needs 0..{needed} ((max_start_epoch - 1) + expert_epochs)",
                hint="train the experts with experts.store_epochs=all (or these distill settings), "
                "or lower distill.max_start_epoch",
            )
        experts.append(store.load(index, list(range(needed + 1))))
    if not experts:
        raise StoreError(f"the trajectory store {store.root} holds no finished expert")
    return experts


# -- distillation -----------------------------------------------------------------------


@dataclass
class DistillResult:
    """A distilled set and what it took to make it."""

    images: torch.Tensor
    labels: torch.Tensor
    lr: float
    init_source: str
    history: list[IterationResult] = field(default_factory=list)
    iteration_seconds: list[float] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(self.iteration_seconds)

    @property
    def seconds_per_iteration(self) -> float:
        """Median over iterations after the first 5 (warm-up), as benchmarks.md asks."""
        times = self.iteration_seconds[5:] or self.iteration_seconds
        return statistics.median(times) if times else float("nan")


def check_ipc(config: RunConfig, data: PreparedData) -> None:
    """ipc must not exceed the smallest class (checked before any expert is trained)."""
    counts = torch.bincount(data.dataset.train_labels, minlength=data.dataset.num_classes)
    smallest = int(counts.min())
    if config.distill.ipc > smallest:
        raise DataError(
            f"ipc={config.distill.ipc} is larger than the smallest class ({smallest} images)",
            hint=f"use --ipc {smallest} or less",
        )


def initial_set(
    config: RunConfig, host: PluginHost, data: PreparedData, store: TrajectoryStore, run: RunContext
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Ask ``init_synthetic`` (first non-None answer; the core default is last) for the start set."""
    first = store.finished()[0]
    make = model_factory(config, data)
    check_ipc(config, data)
    ctx = InitContext(
        train_images=data.train_images,
        train_labels=data.dataset.train_labels,
        num_classes=data.dataset.num_classes,
        ipc=config.distill.ipc,
        class_names=data.dataset.class_names,
        expert_params=lambda e: store.load(first, [e if e >= 0 else store.num_epochs(first)])[0],
        expert_epochs_available=store.num_epochs(first),
        make_model=lambda: make(config.model.name, stage_seed(config.seed, "init-model")),
        load_flat=load_flat,
    )
    init = call_hook(host.hook, "init_synthetic", run=run, ctx=ctx)
    return init.images, init.labels, init.source


def make_distiller(
    config: RunConfig,
    host: PluginHost,
    data: PreparedData,
    store: TrajectoryStore,
    out_dir: Path | None = None,
    initial: tuple[torch.Tensor, torch.Tensor, str] | None = None,
) -> tuple[Distiller, str]:
    """Check the store, load the expert slices, initialise the synthetic set; return the engine.

    ``initial`` skips the ``init_synthetic`` hook (a resumed run restores its images
    anyway). Shared by :func:`distill` and ``distillkit bench`` so both measure the same thing.
    """
    device = device_for(config)
    store.check_compatible(expert_key(config, data, host))
    experts = load_expert_slices(store, config)
    run = make_run_context(config, host, device, stage_seed(config.seed, "distill"), out_dir)
    images, labels, source = initial or initial_set(config, host, data, store, run)
    make = model_factory(config, data)
    student = FlatStudent(make(config.model.name, 0).to(device))
    augment = DSA(config.data.augment)
    distiller = Distiller(run, host, student, images, labels, experts, config.distill, augment)
    return distiller, source


@contextmanager
def stop_requests() -> Iterator[list[int]]:
    """Turn the first SIGINT/SIGTERM into a request to checkpoint and stop; a second one interrupts."""
    requested: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def handler(signum: int, frame: Any) -> None:
        if requested:
            raise KeyboardInterrupt
        requested.append(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _resume_state(out_dir: Path, reporter: Reporter) -> tuple[Checkpoint, list[dict[str, Any]]]:
    """The newest intact checkpoint and the metrics lines written up to it (later ones are cut)."""
    checkpoint, skipped = load_latest_checkpoint(out_dir)
    for note in skipped:
        reporter.note(f"skipped an unusable checkpoint: {note}")
    if checkpoint is None:
        raise StoreError(
            f"{out_dir} has no usable checkpoint to resume from",
            hint="start a new run (checkpoints are written every distill.checkpoint_every iterations)",
        )
    metrics = out_dir / "metrics.jsonl"
    kept = int(checkpoint.progress["metrics_bytes"])
    with open(metrics, "r+b") as handle:
        handle.truncate(kept)
        handle.seek(0)
        lines = [json.loads(line) for line in handle.read().decode().splitlines() if line]
    return checkpoint, lines


def distill(
    config: RunConfig,
    host: PluginHost,
    data: PreparedData,
    store: TrajectoryStore,
    out_dir: Path | None = None,
    reporter: Reporter | None = None,
    resume: bool = False,
) -> DistillResult:
    """Run ``distill.iterations`` outer iterations of trajectory matching; return the synthetic set.

    With ``out_dir``, metrics go to ``metrics.jsonl`` and the full engine state to
    ``checkpoints/`` every ``distill.checkpoint_every`` iterations and on SIGINT/SIGTERM;
    ``resume=True`` continues from the newest checkpoint there, bit for bit. If the
    divergence guard gives up, the last good set is saved before the error propagates.
    """
    reporter = reporter or Reporter()
    lines: list[dict[str, Any]] = []
    checkpoint = None
    if resume and out_dir is None:
        raise ConfigError("resuming needs the run directory")
    if resume and not any(checkpoint_dir(out_dir).glob("ckpt-*.json")):
        reporter.note(f"{out_dir} has no checkpoint yet: distilling from the start")
        resume = False
    if resume:
        checkpoint, lines = _resume_state(out_dir, reporter)
        saved = checkpoint.current.tensors
        initial = (saved["images"], saved["labels"], checkpoint.progress["init_source"])
        distiller, source = make_distiller(config, host, data, store, out_dir, initial)
        distiller.load_state(checkpoint.current)
        distiller.last_good = checkpoint.last_good
        reporter.note(f"resuming {out_dir} at iteration {distiller.iteration}")
    else:
        distiller, source = make_distiller(config, host, data, store, out_dir)
    history = [IterationResult(**{k: v for k, v in line.items() if k != "seconds"}) for line in lines]
    times = [float(line["seconds"]) for line in lines]
    every = config.distill.checkpoint_every
    reporter.start("distill", config.distill.iterations)
    reporter.advance(distiller.iteration)
    metrics_file = open(out_dir / "metrics.jsonl", "a" if resume else "w") if out_dir else None  # noqa: SIM115

    def save_state() -> None:
        if out_dir is not None and metrics_file is not None:
            metrics_file.flush()
            progress = {"init_source": source, "metrics_bytes": metrics_file.tell()}
            save_checkpoint(out_dir, Checkpoint(distiller.state(), distiller.last_good, progress))

    try:
        with stop_requests() as stop:
            while distiller.iteration < config.distill.iterations:
                tick = time.perf_counter()
                try:
                    result = distiller.step()
                except DivergenceError:
                    if out_dir is not None:
                        save_distilled_set(out_dir, distiller, source)
                    raise
                times.append(time.perf_counter() - tick)
                history.append(result)
                for note in result.rollbacks:
                    reporter.note(f"divergence guard: {note}")
                if metrics_file:
                    metrics_file.write(json.dumps({**result.__dict__, "seconds": times[-1]}) + "\n")
                if every and distiller.iteration % every == 0:
                    save_state()
                if stop:
                    save_state()
                    raise Interrupted(
                        f"stopped at iteration {distiller.iteration}; state saved in {out_dir}/checkpoints",
                        hint=f"continue with: distillkit run --resume {out_dir}",
                    )
                reporter.advance(loss=result.loss, alpha=result.alpha)
            if not (every and distiller.iteration % every == 0):
                save_state()  # the final state, so a run stopped during evaluation resumes from here
    finally:
        if metrics_file:
            metrics_file.close()
        reporter.finish()
    return DistillResult(
        distiller.images.detach().cpu(),
        distiller.labels.cpu(),
        float(distiller.alpha.detach()),
        source,
        history,
        times,
    )


def save_distilled_set(out_dir: Path, distiller: Distiller, source: str) -> None:
    """Write the engine's current (last good) set so a stopped run still leaves usable images."""
    meta = {"init": source, "iteration": distiller.iteration, "status": "stopped by the divergence guard"}
    save_synthetic(
        out_dir,
        distiller.images.detach().cpu(),
        distiller.labels.cpu(),
        float(distiller.alpha.detach()),
        meta,
        {},
    )


# -- evaluation and whole runs ---------------------------------------------------------------


def random_real_set(
    config: RunConfig, data: PreparedData, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The baseline: ``ipc`` random real training images per class (core default init, own seed)."""
    from distillkit.engine import defaults

    generator = torch.Generator(device=device).manual_seed(stage_seed(config.seed, "random-real"))
    ctx = InitContext(
        train_images=data.train_images,
        train_labels=data.dataset.train_labels,
        num_classes=data.dataset.num_classes,
        ipc=config.distill.ipc,
        class_names=data.dataset.class_names,
        expert_params=lambda e: torch.empty(0),
        expert_epochs_available=0,
        make_model=lambda: torch.nn.Identity(),
        load_flat=lambda model, theta: None,
    )
    run = RunContext(config=config, device=device, generator=generator, out_dir=None)
    init = defaults.init_synthetic(run=run, ctx=ctx)
    return init.images, init.labels


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
    reporter = reporter or Reporter()
    device = device_for(config)
    models = list(models or config.evaluate.models or (config.model.name,))
    make = model_factory(config, data)
    augment = DSA(config.data.augment)
    results = {}
    reporter.start(f"evaluate {label}", len(models) * config.evaluate.runs)
    for name in models:
        results[name] = evaluate_set(
            make,
            name,
            images,
            labels,
            lr,
            data.test,
            config.evaluate,
            augment,
            device,
            stage_seed(config.seed, "evaluate", name),
            on_run=lambda acc: reporter.advance(acc=acc),
        )
    reporter.finish()
    return results


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """Peak RSS of this process (and peak CUDA allocation when on a GPU), in MiB."""
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = {"peak_rss_mb": rss_kb / 1024 if sys.platform != "darwin" else rss_kb / 2**20}
    if device.type == "cuda":
        peak["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak


def environment() -> dict[str, Any]:
    return {
        "distillkit": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
    }


def record_invocation(out_dir: Path, config: RunConfig, command: str, store_dir: Path | None) -> None:
    """``config.json`` and ``invocation.json``: what ``--resume`` needs to continue this run."""
    atomic_write_json(out_dir / "config.json", to_dict(config))
    experts = str(store_dir.resolve()) if store_dir is not None else None
    atomic_write_json(out_dir / "invocation.json", {"command": command, "experts": experts})


def _summary(results: dict[str, EvalResult]) -> dict[str, Any]:
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
) -> dict[str, Any]:
    """experts (reused when cached) → distill → evaluate (+ random-real baseline) → ``results.json``.

    ``resume=True`` continues a run directory from its newest checkpoint (finished
    experts and epochs are reused from the store); the config must be the recorded one.
    """
    reporter = reporter or Reporter()
    device = device_for(config)
    if not resume:
        record_invocation(out_dir, config, "run", store_dir)
    data = prepare_data(config)
    check_ipc(config, data)
    timings: dict[str, float] = {}
    tick = time.perf_counter()
    if store_dir is not None and (store_dir / "manifest.json").exists():
        store = TrajectoryStore.open(store_dir)
    else:
        store = train_experts(config, host, data, store_dir, reporter)
    timings["experts"] = time.perf_counter() - tick
    tick = time.perf_counter()
    result = distill(config, host, data, store, out_dir, reporter, resume=resume)
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
    if config.evaluate.runs > 0:
        distilled = evaluate(config, data, result.images, result.labels, result.lr, reporter=reporter)
        real_x, real_y = random_real_set(config, data, device)
        baseline = evaluate(
            config,
            data,
            real_x,
            real_y,
            config.distill.lr_init,
            reporter=reporter,
            label="random-real",
        )
        summary["distilled"] = _summary(distilled)
        summary["random_real"] = _summary(baseline)
        summary["protocol"] = {
            "distilled_lr": result.lr,
            "random_real_lr": config.distill.lr_init,
            **to_dict(config.evaluate),
        }
    timings["evaluate"] = time.perf_counter() - tick
    summary["timings_s"] = timings
    summary["distill_s_per_iter"] = result.seconds_per_iteration
    summary.update(peak_memory_mb(device))
    summary["expert_store"] = str(store.root)
    atomic_write_json(out_dir / "results.json", summary)
    atomic_write_json(
        out_dir / "run.json",
        {
            "environment": environment(),
            "device": str(device),
            "plugins": [r.as_dict() for r in host.records.values()],
            "timings_s": timings,
            **peak_memory_mb(device),
        },
    )
    return summary
