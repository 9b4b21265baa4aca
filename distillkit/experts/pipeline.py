"""The expert stage: the store key, the cache location, training missing experts, loading slices.

It takes its own section (``ExpertsConfig``), the latest epoch distillation will match
(``last_needed``, which decides what a store keeps) and the run's :class:`RunScope`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distillkit.config import ExpertsConfig, to_dict
from distillkit.distributed import World
from distillkit.ensemble import NotPackable
from distillkit.errors import ALLOCATION_ERRORS, StoreError, failed_allocations, out_of_memory
from distillkit.experts import sidecars
from distillkit.experts.packed import Member, packing_refusal, packs_experts, train_packed_experts
from distillkit.experts.partial import PartialCheckpoint
from distillkit.experts.store import TrajectoryStore, describe_epochs
from distillkit.experts.train import ExpertResult, epochs_to_store, train_expert
from distillkit.hookspecs import EXPERT_HOOKS
from distillkit.models.flat import param_layout
from distillkit.observers import Observers, observing
from distillkit.rundir import exclusive
from distillkit.runtime import PreparedData, Reporter, RunScope, model_factory

#: What to change when one expert's training does not fit (its finished epochs are kept).
EXPERT_MEMORY_HINT = (
    "lower experts.batch_size; finished experts and the last complete epoch are kept, "
    "and the same command continues from them"
)


def expert_key(cfg: ExpertsConfig, last_needed: int, scope: RunScope, data: PreparedData) -> dict[str, Any]:
    """Everything that determines the trajectories; equal keys ⇒ a store can be reused."""
    model = model_factory(data)(scope.model, 0)
    layout = param_layout(model)
    host = scope.host
    expert_plugins = {name: to_dict(host.configs.get(name)) for name in _shaping_plugins(scope)}
    experts = to_dict(cfg)
    experts.pop("count")
    experts.pop("store_epochs")  # what it selects is the key's "stored_epochs"
    experts.pop("eval_every")  # test passes change no trajectory, so a store serves any setting
    experts.pop("parallel")  # packing changes float rounding only, as other hardware would
    experts.pop("pack_size")
    if not cfg.max_steps_per_epoch:  # listed only when set, so stores of whole epochs keep their keys
        experts.pop("max_steps_per_epoch")
    kept = epochs_to_store(cfg, last_needed)
    # Listed only when some epochs are left out, so an all-epochs store keeps its key (and
    # cache folder); a store of fewer epochs is never reused for a longer distillation.
    stored = {"stored_epochs": kept} if len(kept) < cfg.epochs + 1 else {}
    # Likewise listed only with a validation split: those experts never saw the held-out images.
    held_out = {"validation": data.holdout} if data.holdout else {}
    return {
        "dataset": data.dataset.name,
        "image_shape": list(data.dataset.image_shape),
        "num_classes": data.dataset.num_classes,
        "class_names": list(data.dataset.class_names),
        "preprocessing": {
            "mean": list(data.dataset.mean),
            "std": list(data.dataset.std),
            "zca": data.zca is not None,
            "augment": scope.augment.strategy,
        },
        "model": scope.model,
        "param_layout": [[s.name, list(s.shape)] for s in layout],
        "epochs": cfg.epochs,
        "num_params": sum(s.numel for s in layout),
        "experts": experts,
        "store_dtype": cfg.store_dtype,
        "seed": scope.seed,
        "expert_plugins": expert_plugins,
        **stored,
        **held_out,
    }


def default_store_dir(key: dict[str, Any]) -> Path:
    """Cache folder for a key: ``$DISTILLKIT_CACHE`` or ``~/.cache/distillkit``, then ``experts/<hash>``."""
    root = Path(os.environ.get("DISTILLKIT_CACHE", Path.home() / ".cache" / "distillkit"))
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return root / "experts" / f"{key['dataset'].replace('/', '_').replace(':', '_')}-{digest}"


def train_expert_store(
    cfg: ExpertsConfig,
    last_needed: int,
    scope: RunScope,
    data: PreparedData,
    store_dir: Path | None = None,
    reporter: Reporter | None = None,
    observers: Observers | None = None,
) -> TrajectoryStore:
    """Train ``cfg.count`` experts into a store, reusing every expert already finished there.

    Each epoch also leaves a partial checkpoint in the store, so an interrupted
    expert resumes from its last complete epoch (see :mod:`distillkit.experts.partial`).
    Over several ranks (``scope.world``) each trains its share of the missing experts
    (``missing[rank::size]``: an expert's seed depends on its index only) and rank 0 alone
    creates the store, holds its lock and writes the manifest (:mod:`.sidecars`).
    Every trained epoch is reported to ``observers`` (by default new ones without a run
    directory, closed on return; rank 0's only); reused experts report nothing.
    """
    reporter = reporter or Reporter()
    world = scope.world
    key = expert_key(cfg, last_needed, scope, data)
    with observing(scope, None, reporter.note, observers) as watching:
        root = store_dir or default_store_dir(key)
        # Rank 0 creates the store (others would race on it) and decides; a bad one stops every rank alike.
        if world.main_decides(lambda: _complete(TrajectoryStore.create_or_open(root, key), cfg.count)):
            return TrajectoryStore.open(root)  # nothing to train, nothing to write: a read-only cache serves
        # One trainer (one job) per store: a second one waits, then reuses what the first finished.
        with ExitStack() as held:
            _lock_for_job(world, held, root)
            todo = world.main_decides(
                lambda: _missing_experts(cfg.count, TrajectoryStore.open(root), reporter)
            )
            store = TrajectoryStore.open(root)
            _train_experts(world.shard(todo), cfg, scope, data, store, reporter, watching)
            world.main_decides(lambda: sidecars.adopt_pending(TrajectoryStore.open(root)))
    return TrajectoryStore.open(root)


def _complete(store: TrajectoryStore, count: int) -> bool:
    return set(range(count)) <= set(store.finished())


def _lock_for_job(world: World, held: ExitStack, root: Path) -> None:
    """Rank 0 takes the store's lock for the whole job; the others wait for its word.

    While another job holds the lock, rank 0 says "wait" about once a second, so the other
    ranks' collectives never time out however long that job trains.
    """
    if world.size == 1:
        held.enter_context(exclusive(root))
        return

    def lock() -> str:
        held.enter_context(exclusive(root, waiting=lambda: world.main_decides(lambda: "wait")))
        return "held"

    while world.main_decides(lock) == "wait":  # rank 0 returns "held"; the others hear each word
        pass


def _missing_experts(count: int, store: TrajectoryStore, reporter: Reporter) -> list[int]:
    """Rank 0's view of the store: adopt experts a dead job finished, drop stale partials, list the rest."""
    sidecars.adopt_pending(store)
    todo = [i for i in range(count) if i not in store.finished()]
    if len(todo) < count:
        reporter.note(f"reusing {count - len(todo)} finished experts in {store.root}")
    for index in store.finished():  # a crash right after write_expert can leave one behind
        PartialCheckpoint(store.root, index).discard()
    return todo


def _train_experts(
    todo: list[int],
    cfg: ExpertsConfig,
    scope: RunScope,
    data: PreparedData,
    store: TrajectoryStore,
    reporter: Reporter,
    observers: Observers,
) -> None:
    """Train the experts ``todo``, resuming a partially trained one from its last epoch.

    When ``experts.parallel`` asks for it and nothing refuses it (:mod:`distillkit.experts.packed`),
    experts without a partial checkpoint train first, in packed groups of ``pack_size``; the rest
    (and all of them otherwise) train one at a time. In a job, every trained epoch is also a
    heartbeat (:class:`_Pace`), so ranks with less work wait for the others one epoch at a time,
    never longer than a collective's timeout.
    """
    trainer = _Trainer(cfg, scope, data, store, reporter, observers, _Pace(scope.world))
    reporter.start("experts", len(todo) * cfg.epochs)
    alone = todo
    if _packing_allowed(cfg, scope, reporter, len(todo)):
        packed = trainer.packed_groups([i for i in todo if not PartialCheckpoint(store.root, i).exists()])
        alone = [index for index in todo if index not in packed]
    for index in alone:
        trainer.alone(index)
    trainer.pace.rest()
    reporter.finish()


def _shaping_plugins(scope: RunScope) -> list[str]:
    """The active plugins that shape expert training (``expert_loss``, ``expert_step``)."""
    return [name for name, record in scope.host.records.items() if EXPERT_HOOKS & set(record.hooks)]


def _packing_allowed(cfg: ExpertsConfig, scope: RunScope, reporter: Reporter, count: int) -> bool:
    """Whether ``experts.parallel`` packs here and no plugin or setting refuses it (said in a note)."""
    if count < 2 or not packs_experts(cfg, scope.device):
        return False
    reason = packing_refusal(cfg, _shaping_plugins(scope))
    if reason is not None:
        reporter.note(f"experts train one at a time: {reason}")
    return reason is None


@dataclass
class _Trainer:
    """What training any expert of this stage needs: trains one alone or groups packed, and stores them."""

    cfg: ExpertsConfig
    scope: RunScope
    data: PreparedData
    store: TrajectoryStore
    reporter: Reporter
    observers: Observers
    pace: _Pace

    def alone(self, index: int) -> None:
        """Train expert ``index`` on its own (resumed from its partial checkpoint if any) and store it."""
        checkpoint = PartialCheckpoint(self.store.root, index)
        resume = checkpoint.resume(self.reporter.note)
        if resume is not None:
            self.reporter.advance(resume.epoch)
        failing = f"training expert {index} ran out of {self.scope.device.type} memory"
        with failed_allocations(failing, EXPERT_MEMORY_HINT):
            result = train_expert(
                self.scope.context("expert", index),
                self.scope.host.hook,
                self._fresh_model(index),
                self.data.train,
                self.data.test,
                self.cfg,
                self.scope.augment,
                on_epoch=self._on_epoch(index),
                keep=self.store.key.get("stored_epochs"),
                resume=resume,
                on_checkpoint=checkpoint.save,
            )
        self._keep(index, result, {})
        checkpoint.discard()

    def packed_groups(self, fresh: list[int]) -> set[int]:
        """Train ``fresh`` in packed groups of ``pack_size``; the experts so trained.

        A group of one is left to train the plain way. A model that cannot be packed (refused
        before any group trains, so no epoch is lost) leaves them all, and so does a group that
        runs out of device memory: its experts then resume one at a time from the partial
        checkpoints the group wrote after each epoch.
        """
        trained: set[int] = set()
        device, size = self.scope.device, self.cfg.pack_size
        for group in (fresh[start : start + size] for start in range(0, len(fresh), size)):
            if len(group) < 2:
                break
            try:
                self._group(group)
            except NotPackable as reason:
                self.reporter.note(
                    f"experts train one at a time: {self.scope.model} cannot be packed ({reason})"
                )
                break
            except ALLOCATION_ERRORS as exc:
                if not out_of_memory(exc):
                    raise
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                self.reporter.note(
                    f"experts train one at a time: a packed group of {len(group)} ran out of {device} "
                    "memory (a lower experts.pack_size packs fewer)"
                )
                break
            trained.update(group)
        return trained

    def _group(self, group: list[int]) -> None:
        """Train the fresh experts ``group`` as one packed computation and store each."""
        checkpoints = [PartialCheckpoint(self.store.root, index) for index in group]
        members = [
            Member(self.scope.context("expert", i), self._fresh_model(i), self._on_epoch(i), checkpoint.save)
            for i, checkpoint in zip(group, checkpoints, strict=True)
        ]
        results = train_packed_experts(
            members, self.data.train, self.data.test, self.cfg, self.scope.augment,
            keep=self.store.key.get("stored_epochs"),
        )  # fmt: skip
        for index, result, checkpoint in zip(group, results, checkpoints, strict=True):
            self._keep(index, result, {"packed_with": len(group)})
            checkpoint.discard()

    def _fresh_model(self, index: int) -> nn.Module:
        return model_factory(self.data)(self.scope.model, self.scope.seed_for("expert-init", index))

    def _on_epoch(self, index: int) -> Callable[[int, dict[str, float]], None]:
        """Expert ``index``'s per-epoch callback: progress and observers, then the ranks' heartbeat."""

        def on_epoch(epoch: int, row: dict[str, float]) -> None:
            _epoch_done(self.reporter, self.observers, index, epoch, row)
            self.pace.beat()

        return on_epoch

    def _keep(self, index: int, result: ExpertResult, extra: dict[str, Any]) -> None:
        """Write a trained expert (rank 0 into the store, other ranks as a pending sidecar)."""
        info = {"test_acc": result.test_acc, "seconds": result.seconds, "history": result.history, **extra}
        if self.scope.world.size == 1:
            self.store.write_expert(index, result.trajectory, info)
        else:
            sidecars.write_pending(self.store, index, result.trajectory, info)


class _Pace:
    """Ranks in step, one round per trained epoch: 1 from a rank that trained, 0 from an idle one.

    A rank out of work keeps answering rounds with 0 until every rank does; one process never waits.
    """

    def __init__(self, world: World) -> None:
        self.world = world

    def beat(self) -> None:
        self.world.all_reduce_max(1.0)

    def rest(self) -> None:
        while self.world.all_reduce_max(0.0) > 0:
            pass


def _epoch_done(
    reporter: Reporter, observers: Observers, index: int, epoch: int, row: dict[str, float]
) -> None:
    """An expert epoch is trained (and its partial checkpoint saved): progress, then observers."""
    reporter.advance(expert=index, test_acc=row.get("test_acc"))
    observers.metrics("experts", epoch, {k: v for k, v in row.items() if k != "epoch"}, expert=index)


def load_expert_slices(store: TrajectoryStore, needed: int) -> list[torch.Tensor]:
    """Epochs 0..``needed`` (T⁺−1+M) of every expert: all distillation can touch, kept in memory."""
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
