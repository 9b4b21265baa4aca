"""Several ranks training into one store: finished experts wait in sidecar entries for rank 0.

Only rank 0 writes ``manifest.json``. A rank that finishes expert ``i`` writes
``expert_<i>.safetensors`` (atomically, as a single process does) and then
``expert_<i>.entry.json``, the manifest entry of that file. Rank 0 records every sidecar in
one manifest write when all ranks are done, and again at the start of the next run on the
store, which adopts the experts finished by a job that died before its end. A sidecar whose
file is missing or whose checksum differs is dropped, and its expert is trained again.
"""

from __future__ import annotations

from pathlib import Path

import torch

from distillkit.artifacts import atomic_write_json, file_sha256, read_json
from distillkit.errors import StoreError
from distillkit.experts.store import FORMAT_VERSION, StoreManifest, TrajectoryStore, expert_filename

SUFFIX = ".entry.json"


def sidecar_path(root: Path, index: int) -> Path:
    return Path(root) / f"expert_{index:03d}{SUFFIX}"


def write_pending(store: TrajectoryStore, index: int, trajectory: torch.Tensor, info: dict) -> None:
    """Write expert ``index``'s file, then its sidecar entry (the manifest is left to rank 0)."""
    entry = store.write_expert_file(index, trajectory, info)
    atomic_write_json(sidecar_path(store.root, index), entry)


def adopt_pending(store: TrajectoryStore) -> list[int]:
    """Record every trustworthy sidecar in the manifest (one write), delete them all; the indices adopted."""
    found = sorted(store.root.glob(f"expert_*{SUFFIX}"))
    entries = [entry for path in found if (entry := _trusted(store, path)) is not None]
    if entries:
        store.record(entries)
    for path in found:
        path.unlink(missing_ok=True)
    return [entry["index"] for entry in entries]


def _trusted(store: TrajectoryStore, path: Path) -> dict | None:
    """The sidecar's entry when it is well formed and its file is present with that checksum."""
    try:
        entry = read_json(path, StoreError, f"{path} cannot be read")
        StoreManifest.from_json({"format_version": FORMAT_VERSION, "key": {}, "experts": [entry]}, path)
    except StoreError:
        return None
    if path != sidecar_path(store.root, entry["index"]) or entry["file"] != expert_filename(entry["index"]):
        return None
    file = store.root / entry["file"]
    return entry if file.is_file() and file_sha256(file) == entry["sha256"] else None
