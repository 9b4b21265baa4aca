"""Distillation checkpoints in ``RUN_DIR/checkpoints/``: write atomically, read back verified.

A checkpoint is a pair written in this order::

    ckpt-000120.safetensors   tensors of the current state ("current/…") and of the
                              guard's rollback point ("good/…")
    ckpt-000120.json          metadata of both states, the run's progress fields and
                              the sha256 of the tensor file — written last, so a JSON
                              file exists only for a complete checkpoint

A process killed mid-write leaves at most a stray temporary file; resuming picks
the newest checkpoint whose JSON parses and whose tensor file matches its hash,
and reports any newer one it had to skip. The last ``KEEP`` checkpoints are kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file

from distillkit.artifacts import atomic_path, atomic_write_json, file_sha256, save_tensor_file
from distillkit.engine.loop import EngineState
from distillkit.engine.rankstate import as_object, from_object
from distillkit.errors import StoreError

FORMAT_VERSION = 1
DIRNAME = "checkpoints"
KEEP = 2


@dataclass
class Checkpoint:
    """The engine's current state, its rollback point, and the run's own progress fields."""

    current: EngineState
    last_good: EngineState
    progress: dict[str, Any]

    @property
    def iteration(self) -> int:
        return int(self.current.meta["iteration"])

    @property
    def states(self) -> tuple[EngineState, EngineState]:
        """The current state and the rollback point, in that order."""
        return self.current, self.last_good

    def as_object(self) -> dict[str, Any]:
        """A JSON value with tensors inside, to send to the other ranks."""
        current, good = as_object(self.current), as_object(self.last_good)
        return {"current": current, "good": good, "progress": self.progress}

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> Checkpoint:
        return cls(from_object(obj["current"]), from_object(obj["good"]), dict(obj["progress"]))


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / DIRNAME


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> Path:
    """Write one checkpoint atomically and prune old ones; return the JSON path."""
    folder = checkpoint_dir(run_dir)
    stem = f"ckpt-{checkpoint.iteration:06d}"
    tensors = {f"current/{k}": v.detach().cpu().contiguous() for k, v in checkpoint.current.tensors.items()}
    tensors |= {f"good/{k}": v.detach().cpu().contiguous() for k, v in checkpoint.last_good.tensors.items()}
    tensor_path = folder / f"{stem}.safetensors"
    with atomic_path(tensor_path) as tmp:
        save_tensor_file(tensors, tmp)
    meta = {
        "format_version": FORMAT_VERSION,
        "iteration": checkpoint.iteration,
        "tensors": tensor_path.name,
        "sha256": file_sha256(tensor_path),
        "current": checkpoint.current.meta,
        "good": checkpoint.last_good.meta,
        "progress": checkpoint.progress,
    }
    json_path = folder / f"{stem}.json"
    atomic_write_json(json_path, meta)
    for old in sorted(folder.glob("ckpt-*.json"))[:-KEEP]:
        (folder / f"{old.stem}.safetensors").unlink(missing_ok=True)
        old.unlink(missing_ok=True)
    return json_path


def load_latest_checkpoint(run_dir: Path) -> tuple[Checkpoint | None, list[str]]:
    """The newest intact checkpoint (or None) and a note for every newer one that was unusable."""
    skipped: list[str] = []
    for json_path in sorted(checkpoint_dir(run_dir).glob("ckpt-*.json"), reverse=True):
        try:
            return _read(json_path), skipped
        except StoreError as exc:
            skipped.append(str(exc))
    return None, skipped


def _read(json_path: Path) -> Checkpoint:
    try:
        meta = json.loads(json_path.read_text())
        tensor_path = json_path.parent / meta["tensors"]
        expected = meta["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"checkpoint {json_path} is unreadable: {exc}") from None
    if meta.get("format_version") != FORMAT_VERSION:
        found = meta.get("format_version")
        raise StoreError(f"checkpoint {json_path} has format {found}, not {FORMAT_VERSION}")
    if not tensor_path.is_file() or file_sha256(tensor_path) != expected:
        raise StoreError(f"checkpoint {tensor_path} is missing or does not match its sha256")
    try:
        tensors = load_file(str(tensor_path))
    except SafetensorError as exc:
        raise StoreError(f"checkpoint {tensor_path} is corrupt: {exc}") from None
    current = {k.removeprefix("current/"): v for k, v in tensors.items() if k.startswith("current/")}
    good = {k.removeprefix("good/"): v for k, v in tensors.items() if k.startswith("good/")}
    states = EngineState(current, meta["current"]), EngineState(good, meta["good"])
    return Checkpoint(*states, meta["progress"])
