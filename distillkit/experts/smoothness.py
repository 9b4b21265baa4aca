"""How smooth expert trajectories are: ‖θ_t − θ_{t+1}‖² per epoch and the AST paper's AvgVar.

The AST paper (arXiv 2310.10541, §4.4.1, Fig. 4 and Table 6) measures an expert's smoothness
by the squared change of its parameters over each epoch, ‖θ_t − θ_{t+1}‖², and summarises it
as AvgVar = E_t[‖θ_t − θ_{t+1}‖²]. Despite its name AvgVar is a mean over epochs, not a
statistical variance; this module follows the paper's formula. Epoch ``t`` is 0-based, as in a
store's ``history``: its change is from snapshot t to t + 1, its accuracies are those measured
after that epoch's training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from distillkit.errors import StoreError
from distillkit.experts.store import TrajectoryStore

#: At most this many bytes of trajectory rows are held at once (a store may be gigabytes).
CHUNK_BYTES = 256 << 20


@dataclass(frozen=True)
class ExpertCurve:
    """One expert's per-epoch figures, keyed by 0-based epoch; epochs without a value are absent."""

    index: int
    epochs: int
    change: dict[int, float]
    test_acc: dict[int, float]
    train_acc: dict[int, float]

    @property
    def avg_var(self) -> float | None:
        """E_t‖θ_t − θ_{t+1}‖² over the epochs whose two snapshots are stored."""
        return _mean(self.change.values())

    @property
    def final_test_acc(self) -> float | None:
        return self.test_acc[max(self.test_acc)] if self.test_acc else None


@dataclass(frozen=True)
class StoreSmoothness:
    """The curves of every finished expert of one store, and what they add up to."""

    root: Path
    label: str
    experts: list[ExpertCurve]

    @property
    def epochs(self) -> int:
        return max(e.epochs for e in self.experts)

    @property
    def missing(self) -> list[int]:
        """Epochs t for which some expert lacks snapshot t or t + 1 (``store_epochs = "needed"``)."""
        return [t for t in range(self.epochs) if any(t not in e.change for e in self.experts)]

    @property
    def avg_var(self) -> float | None:
        """The mean over experts of each expert's AvgVar."""
        return _mean(e.avg_var for e in self.experts)

    @property
    def final_test_acc(self) -> float | None:
        return _mean(e.final_test_acc for e in self.experts)

    def at(self, epoch: int, what: str) -> list[float]:
        """The experts' values of ``what`` (change, test_acc, train_acc) at ``epoch``, where recorded."""
        return [getattr(e, what)[epoch] for e in self.experts if epoch in getattr(e, what)]

    def mean_std(self, epoch: int, what: str) -> tuple[float | None, float | None]:
        """Mean and (population) standard deviation over experts of ``what`` at ``epoch``."""
        values = self.at(epoch, what)
        return _mean(values), _std(values)

    def ratio_to(self, baseline: float | None) -> float | None:
        """AvgVar relative to ``baseline``'s (the paper's "× 46" against plain SGD)."""
        avg_var = self.avg_var
        return None if avg_var is None or not baseline else avg_var / baseline

    def to_json(self, baseline: float | None = None) -> dict[str, Any]:
        """Every number, per epoch and per expert (``null`` where nothing was stored or recorded)."""

        def per_expert(epoch: int, what: str) -> list[float | None]:
            return [getattr(e, what).get(epoch) for e in self.experts]

        per_epoch = []
        for t in range(self.epochs):
            row: dict[str, Any] = {"epoch": t}
            for what in ("change", "test_acc", "train_acc"):
                row[f"{what}_mean"], row[f"{what}_std"] = self.mean_std(t, what)
                row[what] = per_expert(t, what)
            per_epoch.append(row)
        return {
            "store": str(self.root),
            "label": self.label,
            "experts": len(self.experts),
            "epochs": self.epochs,
            "avg_var": self.avg_var,
            "avg_var_ratio": self.ratio_to(baseline),
            "final_test_acc": self.final_test_acc,
            "missing_epochs": self.missing,
            "per_expert": [
                {"index": e.index, "avg_var": e.avg_var, "final_test_acc": e.final_test_acc}
                for e in self.experts
            ],
            "per_epoch": per_epoch,
        }


def _mean(values: Any) -> float | None:
    items = [v for v in values if v is not None]
    return sum(items) / len(items) if items else None


def _std(values: Sequence[float]) -> float | None:
    """Population standard deviation over experts (``None`` for fewer than two)."""
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def open_store(path: Path) -> TrajectoryStore:
    """A store with at least one finished expert, or a one-line StoreError saying what ``path`` is."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path} does not exist.", hint="Pass a folder written by `distillkit experts`.")
    if not path.is_dir():
        raise StoreError(
            f"{path} is a file, not a trajectory store.",
            hint="Pass the folder that holds manifest.json, written by `distillkit experts`.",
        )
    store = TrajectoryStore.open(path)
    if not store.finished():
        raise StoreError(
            f"the trajectory store {path} holds no finished expert.",
            hint="Train experts into it with `distillkit experts --out` first.",
        )
    return store


def squared_changes(store: TrajectoryStore, index: int) -> dict[int, float]:
    """‖θ_t − θ_{t+1}‖² (float64 sums) for every epoch t whose two snapshots expert ``index`` stores."""
    held = set(store.stored_epochs(index))
    pairs = [t for t in range(store.num_epochs(index)) if t in held and t + 1 in held]
    needed = sorted({e for t in pairs for e in (t, t + 1)})
    width = store.key.get("num_params")
    rows = max(2, CHUNK_BYTES // (4 * width)) if isinstance(width, int) and width > 0 else 64
    changes: dict[int, float] = {}
    previous: tuple[int, torch.Tensor] | None = None
    for start in range(0, len(needed), rows):
        epochs = needed[start : start + rows]
        block = store.load(index, epochs)
        for epoch, row in zip(epochs, block, strict=True):
            if previous is not None and previous[0] == epoch - 1:
                changes[epoch - 1] = float((row.double() - previous[1].double()).pow(2).sum())
            previous = (epoch, row)
    return changes


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def recorded_accuracies(entry: dict[str, Any]) -> tuple[dict[int, float], dict[int, float]]:
    """(test, train) accuracy by 0-based epoch from a manifest entry.

    The per-epoch ``history`` says which epochs were tested. Entries without one (older or
    imported stores) are read from ``test_acc`` alone: one value per epoch, or a single value
    for the last epoch; any other length cannot be placed and is left out.
    """
    history = entry.get("history")
    if isinstance(history, list) and history:
        test, train = {}, {}
        for row in history:
            if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
                continue
            if _number(row.get("test_acc")):
                test[row["epoch"]] = float(row["test_acc"])
            if _number(row.get("train_acc")):
                train[row["epoch"]] = float(row["train_acc"])
        return test, train
    accs = [float(a) for a in entry.get("test_acc") or [] if _number(a)]
    epochs = entry["epochs"]
    if len(accs) == epochs:
        return dict(enumerate(accs)), {}
    if len(accs) == 1 and epochs > 0:
        return {epochs - 1: accs[0]}, {}
    return {}, {}


def measure(store: TrajectoryStore, label: str) -> StoreSmoothness:
    """Load every finished expert of ``store`` (a few rows at a time) and measure its curves."""
    entries = {e["index"]: e for e in store.manifest.experts}
    curves = []
    for index in store.finished():
        test, train = recorded_accuracies(entries[index])
        curves.append(ExpertCurve(index, store.num_epochs(index), squared_changes(store, index), test, train))
    return StoreSmoothness(store.root, label, curves)


def _plugins(key: dict[str, Any]) -> dict[str, dict[str, Any]]:
    plugins = key.get("expert_plugins")
    if not isinstance(plugins, dict):
        return {}
    return {name: options if isinstance(options, dict) else {} for name, options in plugins.items()}


def recipe(key: dict[str, Any], options: dict[str, set[str]] | None = None) -> str | None:
    """A short description of how a store's experts were trained, from its key's ``experts`` table.

    Expert plugins are named; their ``options`` listed here (plugin → option names) are shown
    with their values, which is how two stores of one plugin at different settings differ.
    """
    experts = key.get("experts")
    if not isinstance(experts, dict):
        return None
    optimizer = str(experts.get("optimizer", "sgd"))
    parts = [optimizer]
    momentum = experts.get("momentum", 0.0)
    if optimizer == "sgd":
        parts.append(f"momentum {momentum:g}" if _number(momentum) and momentum else "no momentum")
    if _number(experts.get("lr")):
        parts.append(f"lr {experts['lr']:g}")
    if _number(experts.get("weight_decay")) and experts["weight_decay"]:
        parts.append(f"wd {experts['weight_decay']:g}")
    decay = experts.get("lr_decay", "none")
    if decay != "none":
        factor = experts.get("lr_decay_factor")
        parts.append(f"decay {decay}" + (f" ×{factor:g}" if _number(factor) else ""))
    for name, values in sorted(_plugins(key).items()):
        shown = [f"{o} {values[o]}" for o in sorted((options or {}).get(name, ())) if o in values]
        parts.append(f"+ {name}" + (f" ({', '.join(shown)})" if shown else ""))
    return ", ".join(parts)


#: Key fields named in a label when the stores compared differ in them.
_DISTINGUISHING = ("dataset", "model", "epochs", "seed")


def _differing_options(stores: Sequence[TrajectoryStore]) -> dict[str, set[str]]:
    """Per expert plugin, the options whose values differ between the stores that use it."""
    configs: dict[str, list[dict[str, Any]]] = {}
    for store in stores:
        for name, options in _plugins(store.key).items():
            configs.setdefault(name, []).append(options)
    return {
        name: {o for o in {o for c in seen for o in c} if len({repr(c.get(o)) for c in seen}) > 1}
        for name, seen in configs.items()
    }


def labels(stores: Sequence[TrajectoryStore]) -> list[str]:
    """One label per store: its recipe, plus whatever else tells it apart from the others."""
    options = _differing_options(stores)
    result = [recipe(s.key, options) or s.root.name for s in stores]
    for field in _DISTINGUISHING:
        values = [repr(s.key.get(field)) for s in stores]
        if len(set(values)) > 1:
            result = [
                f"{label}, {field} {s.key[field]}" if field in s.key else label
                for label, s in zip(result, stores, strict=True)
            ]
    repeated = {label for label in result if result.count(label) > 1}
    return [
        f"{label} ({s.root.name})" if label in repeated else label
        for label, s in zip(result, stores, strict=True)
    ]


def inspect_stores(paths: Sequence[Path]) -> list[StoreSmoothness]:
    """Open every store first (so bad input fails before any work), then measure each."""
    stores = [open_store(p) for p in paths]
    return [measure(store, label) for store, label in zip(stores, labels(stores), strict=True)]
