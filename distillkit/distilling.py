"""The distillation stage: the initial set, the engine, and the checkpointed, resumable loop around it.

It works from a :class:`DistillJob`: its own config section, the run's :class:`RunScope`,
the data and the expert store with the key that store must have.
"""

from __future__ import annotations

import json
import signal
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from distillkit.artifacts import SOFT_LABELS, save_synthetic
from distillkit.checkpoint import Checkpoint, checkpoint_dir, load_latest_checkpoint, save_checkpoint
from distillkit.config import DistillConfig, last_needed_epoch
from distillkit.context import SoftLabels
from distillkit.engine.loop import Distiller, DivergenceError, EngineState, IterationResult
from distillkit.engine.rankstate import (
    as_object,
    for_rank,
    fresh_part,
    from_object,
    local_part,
    saved_ranks,
    with_ranks,
)
from distillkit.engine.student import FlatStudent
from distillkit.errors import ConfigError, Interrupted, StoreError, failed_allocations
from distillkit.experts.pipeline import load_expert_slices
from distillkit.experts.store import TrajectoryStore
from distillkit.observers import Observers, distill_values, observing
from distillkit.rundir import being_trained
from distillkit.runtime import PreparedData, Reporter, RunScope, model_factory
from distillkit.snapshots import Snapshots
from distillkit.startset import initial_labels, initial_set, label_parts


@dataclass
class DistillResult:
    """A distilled set and what it took to make it."""

    images: torch.Tensor
    labels: torch.Tensor
    lr: float
    init_source: str
    history: list[IterationResult] = field(default_factory=list)
    iteration_seconds: list[float] = field(default_factory=list)
    #: Soft-label logits [n, classes] when a plugin gave the set soft labels (``init_labels``).
    soft_labels: torch.Tensor | None = None
    #: How the labels were made, for ``synthetic.json`` (None: hard labels).
    labels_meta: dict[str, Any] | None = None

    @property
    def training_labels(self) -> torch.Tensor:
        """What evaluation trains on: the soft-label logits if any, else the class indices."""
        return self.labels if self.soft_labels is None else self.soft_labels

    @property
    def seconds(self) -> float:
        return sum(self.iteration_seconds)

    @property
    def seconds_per_iteration(self) -> float:
        """Median over iterations after the first 5 (warm-up), as docs/performance.md measures it."""
        times = self.iteration_seconds[5:] or self.iteration_seconds
        return statistics.median(times) if times else float("nan")


@dataclass(frozen=True)
class DistillJob:
    """The distillation stage's inputs (build one from a run's config with ``api.distill_job``)."""

    cfg: DistillConfig
    scope: RunScope
    data: PreparedData
    store: TrajectoryStore
    #: The key the store must have (what the run's config would train); checked before any use.
    expert_key: dict[str, Any]


def build_distiller(
    job: DistillJob,
    out_dir: Path | None = None,
    initial: tuple[torch.Tensor, torch.Tensor, str] | None = None,
) -> tuple[Distiller, str]:
    """Check the store against the job's key, load the expert slices, initialise the set; return the engine.

    ``initial`` skips the ``init_synthetic`` hook (a resumed run restores its images
    anyway); ``init_labels`` is asked either way, for the labels' learning rate and momentum
    (a resumed run then restores the logits). Shared by :func:`distill` and ``distillkit bench``
    so both measure the same thing.
    Over several ranks every rank starts from rank 0's set, then draws from its own stream
    (:func:`rank_seed`); only rank 0's hooks see ``out_dir``.
    """
    cfg, scope, data, store = job.cfg, job.scope, job.data, job.store
    world = scope.world
    if being_trained(store.root):
        raise StoreError(
            f"the trajectory store {store.root} is still being trained by another process "
            f"({len(store.finished())} experts finished so far)",
            hint="wait for that training to finish (or run `distillkit run`, which waits for it)",
        )
    store.check_compatible(job.expert_key)
    experts = load_expert_slices(store, last_needed_epoch(cfg))
    run = scope.context("distill", out_dir=out_dir if world.is_main else None)
    images, labels, source = initial or initial_set(cfg.ipc, scope, data, store, run)
    if world.size > 1:
        images, labels = world.broadcast_object((images.cpu(), labels.cpu()))
        if world.rank > 0:
            run.generator.manual_seed(rank_seed(scope, world.rank))
    student = FlatStudent(model_factory(data)(scope.model, 0).to(scope.device), cfg.channels_last)
    soft = initial_labels(images, labels, scope, data, store, student, run)
    if world.size > 1 and soft is not None:
        (logits,) = world.broadcast_object((soft.logits.cpu(),))
        soft = SoftLabels(logits, soft.lr, soft.momentum, soft.source)
    distiller = Distiller(run, scope.host, student, images, labels, experts, cfg, scope.augment, world, soft)
    return distiller, source


def rank_seed(scope: RunScope, rank: int, resumed_at: int | None = None) -> int:
    """The seed of rank r's stream (r > 0; rank 0 keeps the single-process stream).

    It depends on the run seed and r only, never on the world size; a rank that joins
    at a resume with no saved stream gets one seeded by the iteration as well.
    """
    if resumed_at is None:
        return scope.seed_for("distill-rank", rank)
    return scope.seed_for("distill-rank", rank, "resumed", resumed_at)


#: What to change when the unrolled steps do not fit (resuming cannot change these settings).
UNROLL_MEMORY_HINT = (
    "start it again keeping less: --memory constant (memory flat in distill.syn_steps), a smaller "
    "distill.graph_steps or distill.graph_memory_mb, or a smaller distill.batch_syn; "
    "`distillkit bench` measures a setting's peak memory before a run"
)
STOPPING_NOTICE = "Stopping: the state is saved after this iteration (press Ctrl-C again to stop at once)."


@contextmanager
def stop_requests(enabled: bool = True, notice: bool = True) -> Iterator[list[int]]:
    """Turn the first SIGINT/SIGTERM into a request to checkpoint and stop; a second one interrupts.

    Disabled (plain KeyboardInterrupt) when there is nowhere to checkpoint, and off the main thread.
    ``notice=False`` (the ranks of a job, which the launcher also stops when another rank
    failed) skips the message, so a failed job still ends in one line.
    """
    requested: list[int] = []
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def handler(signum: int, frame: Any) -> None:
        if requested:
            raise KeyboardInterrupt
        requested.append(signum)
        if notice:
            sys.stderr.write(STOPPING_NOTICE + "\n")
            sys.stderr.flush()

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
    try:
        size = metrics.stat().st_size
    except FileNotFoundError:
        size = -1
    if size < kept:  # truncating would pad it with NUL bytes; the log was cut or replaced
        raise StoreError(
            f"{metrics} holds {max(size, 0)} bytes but the checkpoint recorded {kept}: the run log was "
            "shortened or removed after the checkpoint, so the run cannot continue consistently",
            hint="restore metrics.jsonl, or start a new run (nothing was changed)",
        )
    with open(metrics, "r+b") as handle:
        handle.seek(0)
        text = handle.read(kept)
        try:
            lines = [json.loads(line) for line in text.decode().splitlines() if line]
        except (UnicodeDecodeError, ValueError):
            raise StoreError(
                f"{metrics}: the first {kept} bytes are not the JSON lines the checkpoint recorded",
                hint="restore metrics.jsonl, or start a new run (nothing was changed)",
            ) from None
        handle.truncate(kept)
    return checkpoint, lines


def distill(
    job: DistillJob,
    out_dir: Path | None = None,
    reporter: Reporter | None = None,
    resume: bool = False,
    release_data: bool = False,
    snapshots: Snapshots | None = None,
    observers: Observers | None = None,
) -> DistillResult:
    """Run ``distill.iterations`` outer iterations of trajectory matching; return the synthetic set.

    With ``out_dir``, metrics go to ``metrics.jsonl`` and the full engine state to
    ``checkpoints/`` every ``distill.checkpoint_every`` iterations and on SIGINT/SIGTERM;
    ``resume=True`` continues from the newest checkpoint there, bit for bit. If the
    divergence guard gives up, the last good set is saved before the error propagates.
    ``release_data=True`` frees the real images once the start set is drawn (for callers
    that do not need them afterwards, as ``distillkit distill``). ``snapshots`` saves the set
    at iteration 0 and every ``distill.snapshot_every`` iterations, before the checkpoint of
    that iteration, so a resume never finds a checkpoint without its snapshot. Over several
    ranks (``job.scope.world``) only rank 0 reads and writes ``out_dir`` (and takes snapshots);
    a checkpoint holds every rank's stream.
    Every iteration's metrics line also goes to ``observers`` (by default new ones for
    ``out_dir``, closed on return; rank 0's only).
    """
    reporter = reporter or Reporter()
    world, device = job.scope.world, job.scope.device
    writes = out_dir if world.is_main else None
    lines: list[dict[str, Any]] = []
    if resume and out_dir is None:
        raise ConfigError("resuming needs the run directory")
    checkpoint = None
    if resume:
        point = world.main_decides(lambda: _resume_point(out_dir, reporter))
        checkpoint = None if point["checkpoint"] is None else Checkpoint.from_object(point["checkpoint"])
        lines = point["lines"] if writes is not None else []
    if checkpoint is not None:
        current, good = (_rank_view(job, state, checkpoint.iteration) for state in checkpoint.states)
        initial = (current.tensors["images"], current.tensors["labels"], checkpoint.progress["init_source"])
        distiller, source = build_distiller(job, out_dir, initial)
        distiller.load_state(current)
        distiller.last_good = good
        ranks = saved_ranks(checkpoint.current)
        moved = f" (saved by {ranks} ranks, continued by {world.size})" if ranks != world.size else ""
        reporter.note(f"resuming {out_dir} at iteration {distiller.iteration}{moved}")
    else:
        distiller, source = build_distiller(job, out_dir)
    if distiller.graph_fit is not None:
        reporter.note(distiller.graph_fit.describe(job.cfg.syn_steps))
    if release_data:
        job.data.release_images()
    history = [IterationResult(**{k: v for k, v in line.items() if k != "seconds"}) for line in lines]
    times = [float(line["seconds"]) for line in lines]
    every = job.cfg.checkpoint_every
    reporter.start("distill", job.cfg.iterations, every=job.cfg.log_every)
    reporter.advance(distiller.iteration)
    mode = "a" if checkpoint is not None else "w"
    metrics_file = open(writes / "metrics.jsonl", mode) if writes else None  # noqa: SIM115

    def snapshot() -> None:
        if snapshots is not None and snapshots.due(distiller.iteration):
            entry = snapshots.save(
                distiller.iteration,
                distiller.final_images(),
                distiller.labels,
                float(distiller.alpha.detach()),
                soft_labels=distiller.soft_labels,
            )
            if "validation" in entry:
                mean, std = entry["validation"]["mean"], entry["validation"]["std"]
                reporter.note(
                    f"snapshot {distiller.iteration}: validation {100 * mean:.2f} ± {100 * std:.2f} %"
                )

    if snapshots is not None:
        labels_meta = label_parts(distiller)[1]
        if labels_meta is not None:
            snapshots.meta["labels"] = labels_meta
        snapshots.discard_after(distiller.iteration if checkpoint is not None else -1)
        if checkpoint is None:
            snapshot()

    def save_state() -> None:
        if out_dir is None:
            return
        current, good = distiller.state(), distiller.last_good
        parts = world.all_gather_object([as_object(local_part(current)), as_object(local_part(good))])
        if metrics_file is not None:
            metrics_file.flush()
            progress = {"init_source": source, "metrics_bytes": metrics_file.tell()}
            currents, goods = ([from_object(part[i]) for part in parts] for i in (0, 1))
            states = with_ranks(current, currents), with_ranks(good, goods)
            save_checkpoint(out_dir, Checkpoint(*states, progress))

    with observing(job.scope, writes, reporter.note, observers) as watching:
        try:
            with stop_requests(enabled=out_dir is not None, notice=world.size == 1) as stop:
                while distiller.iteration < job.cfg.iterations:
                    tick = time.perf_counter()
                    failing = (
                        f"distillation ran out of {device.type} memory in iteration {distiller.iteration + 1}"
                    )
                    try:
                        with failed_allocations(failing, UNROLL_MEMORY_HINT):
                            result = distiller.step()
                    except DivergenceError:
                        if writes is not None:
                            save_distilled_set(writes, distiller, source)
                        raise
                    times.append(time.perf_counter() - tick)
                    history.append(result)
                    for note in result.rollbacks:
                        reporter.note(f"divergence guard: {note}")
                    if result.rollbacks and snapshots is not None:
                        snapshots.discard_after(
                            distiller.iteration
                        )  # those past the rollback point are redone
                    line = {**result.__dict__, "seconds": times[-1]}
                    if metrics_file:
                        metrics_file.write(json.dumps(line) + "\n")
                    watching.metrics("distill", result.iteration, distill_values(line), expert=result.expert)
                    snapshot()
                    if every and distiller.iteration % every == 0:
                        save_state()
                    if world.all_reduce_max(1.0 if stop else 0.0) > 0:
                        save_state()
                        raise Interrupted(
                            f"stopped at iteration {distiller.iteration}; "
                            f"state saved in {out_dir}/checkpoints",
                            hint=f"continue with --resume {out_dir} on the command that started it",
                        )
                    reporter.advance(loss=result.loss, alpha=result.alpha)
                if not (every and distiller.iteration % every == 0):
                    save_state()  # the final state, so a run stopped during evaluation resumes from here
        finally:
            if metrics_file:
                metrics_file.close()
            reporter.finish()
    return DistillResult(
        distiller.final_images().cpu(),
        distiller.labels.cpu(),
        float(distiller.alpha.detach()),
        source,
        history,
        times,
        *label_parts(distiller),
    )


def _resume_point(out_dir: Path, reporter: Reporter) -> dict[str, Any]:
    """Rank 0's decision, for every rank: the checkpoint to continue from (None: there is none yet)
    and the metrics lines up to it."""
    if not any(checkpoint_dir(out_dir).glob("ckpt-*.json")):
        reporter.note(f"{out_dir} has no checkpoint yet: distilling from the start")
        return {"checkpoint": None, "lines": []}
    checkpoint, lines = _resume_state(out_dir, reporter)
    return {"checkpoint": checkpoint.as_object(), "lines": lines}


def _rank_view(job: DistillJob, state: EngineState, iteration: int) -> EngineState:
    """This rank's part of a checkpointed state (a fresh stream if the checkpoint has none for it)."""
    scope = job.scope
    rank = scope.world.rank

    def fresh() -> EngineState:
        seed = rank_seed(scope, rank, resumed_at=iteration)
        return fresh_part(torch.Generator(device=scope.device).manual_seed(seed).get_state())

    return for_rank(state, rank, fresh)


def save_distilled_set(out_dir: Path, distiller: Distiller, source: str) -> None:
    """Write the engine's current (last good) set so a stopped run still leaves usable images."""
    meta = {"init": source, "iteration": distiller.iteration, "status": "stopped by the divergence guard"}
    soft, labels_meta = label_parts(distiller)
    save_synthetic(
        out_dir,
        distiller.final_images().cpu(),
        distiller.labels.cpu(),
        float(distiller.alpha.detach()),
        meta | ({"labels": labels_meta} if labels_meta else {}),
        {SOFT_LABELS: soft} if soft is not None else {},
    )
