"""Snapshots of the synthetic set during distillation, in ``RUN_DIR/snapshots/``.

Each snapshot is a set in the format of ``synthetic.safetensors``/``.json`` (so ``evaluate`` and
``export`` read it with ``--snapshot N``)::

    iter-000000.safetensors / .json    the initial set
    iter-000200.safetensors / .json    after 200 iterations
    index.jsonl                        one line per snapshot, in iteration order: file, α and,
                                       with ``distill.snapshot_eval``, validation accuracies

Every file is rewritten atomically (the index too, whole), so a kill leaves the old or the new
version. A resumed run first drops every snapshot past its checkpoint; snapshots it reaches again
are rewritten in place, so no iteration is ever listed twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from distillkit.artifacts import (
    SOFT_LABELS,
    atomic_write_bytes,
    load_synthetic,
    save_synthetic,
    training_labels,
)
from distillkit.errors import ConfigError, StoreError

DIRNAME = "snapshots"
INDEX = "index.jsonl"

#: Trains networks on a set (images, hard labels or soft-label logits, lr) and returns their
#: accuracies on the validation split (a JSON-ready dict).
SnapshotEval = Callable[[Tensor, Tensor, float], dict[str, Any]]


def snapshot_dir(run_dir: Path) -> Path:
    return Path(run_dir) / DIRNAME


def snapshot_stem(iteration: int) -> str:
    return f"iter-{iteration:06d}"


def read_index(run_dir: Path) -> list[dict[str, Any]]:
    """The snapshots listed in ``index.jsonl`` (empty when there are none)."""
    path = snapshot_dir(run_dir) / INDEX
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    try:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError as exc:
        raise StoreError(f"{path} cannot be read as JSON lines ({exc})") from None


def _write_index(run_dir: Path, entries: list[dict[str, Any]]) -> None:
    entries = sorted(entries, key=lambda e: int(e["iteration"]))
    text = "".join(json.dumps(entry) + "\n" for entry in entries)
    atomic_write_bytes(snapshot_dir(run_dir) / INDEX, text.encode("utf-8"))


def load_snapshot(run_dir: Path, iteration: int) -> tuple[Tensor, Tensor, float, dict, dict[str, Tensor]]:
    """Snapshot ``iteration`` as :func:`~distillkit.artifacts.load_synthetic` reads a set."""
    folder = snapshot_dir(run_dir)
    if not (folder / f"{snapshot_stem(iteration)}.json").exists():
        have = [int(e["iteration"]) for e in read_index(run_dir)]
        listed = ", ".join(map(str, have)) if have else "none (see distill.snapshot_every)"
        raise ConfigError(f"{run_dir} has no snapshot at iteration {iteration}", hint=f"snapshots: {listed}")
    return load_synthetic(folder, snapshot_stem(iteration))


@dataclass
class Snapshots:
    """Writes the snapshots of one run: every ``every`` iterations, with what a set's sidecar needs.

    ``meta`` and ``extra`` are what ``synthetic.json`` and ``synthetic.safetensors`` carry besides
    the images (dataset, normalisation, ZCA state...); ``evaluate``, when given, is run on each
    snapshot and its answer recorded in the index under ``"validation"``.
    """

    run_dir: Path
    every: int
    meta: dict[str, Any]
    extra: dict[str, Tensor] = field(default_factory=dict)
    evaluate: SnapshotEval | None = None

    def due(self, iteration: int) -> bool:
        return self.every > 0 and iteration % self.every == 0

    def save(
        self,
        iteration: int,
        images: Tensor,
        labels: Tensor,
        lr: float,
        soft_labels: Tensor | None = None,
        **info: Any,
    ) -> dict[str, Any]:
        """Write snapshot ``iteration`` (replacing one of the same iteration); return its index entry.

        ``labels`` are the class indices; ``soft_labels``, the set's soft-label logits at this
        iteration (they change when learned), are saved as :data:`~distillkit.artifacts.SOFT_LABELS`
        and are what the snapshot's networks train on.
        """
        stem = snapshot_stem(iteration)
        meta = {**self.meta, **info, "iteration": iteration}
        extra = self.extra if soft_labels is None else {**self.extra, SOFT_LABELS: soft_labels}
        save_synthetic(snapshot_dir(self.run_dir), images, labels, lr, meta, extra, stem)
        entry: dict[str, Any] = {"iteration": iteration, "file": f"{stem}.safetensors", "lr": lr, **info}
        if self.evaluate is not None:
            entry["validation"] = self.evaluate(images, training_labels(labels, extra), lr)
        entries = [e for e in read_index(self.run_dir) if int(e["iteration"]) != iteration]
        _write_index(self.run_dir, [*entries, entry])
        return entry

    def discard_after(self, iteration: int) -> None:
        """Remove every snapshot past ``iteration`` (a resume from there, or a rollback, redoes them)."""
        entries = read_index(self.run_dir)
        kept = [e for e in entries if int(e["iteration"]) <= iteration]
        folder = snapshot_dir(self.run_dir)
        for path in folder.glob("iter-*.*"):
            number = path.name.removeprefix("iter-").split(".")[0]
            if number.isdigit() and int(number) > iteration:
                path.unlink()
        if len(kept) != len(entries):
            _write_index(self.run_dir, kept)


def keep_final_set(run_dir: Path, iteration: int, note: str) -> None:
    """Copy ``synthetic.*`` to snapshot ``iteration`` unless one exists (before an extension replaces it)."""
    folder = snapshot_dir(run_dir)
    if (folder / f"{snapshot_stem(iteration)}.json").exists() or not (
        Path(run_dir) / "synthetic.json"
    ).exists():
        return
    images, labels, lr, meta, extra = load_synthetic(run_dir)
    writer = Snapshots(Path(run_dir), 0, meta, extra)
    writer.save(iteration, images, labels, lr, note=note)
