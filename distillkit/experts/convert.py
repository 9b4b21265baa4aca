"""Converting trajectory stores: to another dtype, and from MTT's ``replay_buffer_*.pt`` files."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch

from distillkit.errors import StoreError
from distillkit.experts.store import (
    MANIFEST,
    TrajectoryStore,
    first_difference,
    show_value,
    store_dtype_of,
)
from distillkit.interop import describe_load_failure


def _flatten_mtt(trajectory: Any, layout: list | None, where: str) -> torch.Tensor:
    """One MTT trajectory (list of snapshots, each a list of tensors) → ``[epochs + 1, P]``."""
    if not isinstance(trajectory, list | tuple) or not trajectory:
        raise StoreError(f"{where} is not a trajectory (a non-empty list of snapshots).")
    expected_shapes = None if layout is None else [list(shape) for _, shape in layout]
    rows = []
    for epoch, snapshot in enumerate(trajectory):
        if not isinstance(snapshot, list | tuple) or not all(isinstance(t, torch.Tensor) for t in snapshot):
            raise StoreError(f"{where}: snapshot {epoch} is not a list of tensors.")
        shapes = [list(t.shape) for t in snapshot]
        if expected_shapes is not None and len(shapes) != len(expected_shapes):
            raise StoreError(
                f"{where}: snapshot {epoch} holds {len(shapes)} parameter tensors but the store "
                f"layout has {len(expected_shapes)}.",
                hint="--model (and --dataset) must name the network the buffer was trained with.",
            )
        if not snapshot:
            raise StoreError(f"{where}: snapshot {epoch} holds no tensors.")
        if expected_shapes is not None and (
            found := first_difference(expected_shapes, shapes, "param_layout")
        ):
            place, want, got = found
            raise StoreError(
                f"{where}: snapshot {epoch} does not fit the store layout: {place} is "
                f"{show_value(got)} in the file but {show_value(want)} in the store key.",
                hint="--model (and --dataset) must name the network the buffer was trained with.",
            )
        # torch.cat copies, so the stored rows never alias the loaded snapshots.
        rows.append(torch.cat([t.detach().reshape(-1).to(torch.float32) for t in snapshot]))
    return torch.stack(rows)


def convert_store(source: TrajectoryStore, root: Path, store_dtype: str) -> TrajectoryStore:
    """Re-encode every finished expert of ``source`` into a new store with another ``store_dtype``.

    Shrinks stores trained (or imported from MTT) as float32 without retraining;
    the new key differs only in ``store_dtype``, so distillation accepts either store.
    """
    key = json.loads(json.dumps(source.key))
    key["store_dtype"] = store_dtype
    if isinstance(key.get("experts"), dict) and "store_dtype" in key["experts"]:
        key["experts"]["store_dtype"] = store_dtype
    store_dtype_of(key)
    target = TrajectoryStore.create_or_open(Path(root), key)
    done = set(target.finished())
    for entry in source.manifest.experts:
        index = int(entry["index"])
        if index in done:
            continue
        info = {k: entry[k] for k in ("test_acc", "seconds") if k in entry}
        target.write_expert(index, source.load(index), info)
    return target


def import_mtt_buffer(pt_files: list[Path], root: Path, key: dict) -> TrajectoryStore:
    """Convert MTT ``replay_buffer_*.pt`` files into a store at ``root``.

    Trajectories are numbered in file order; those already in the store are
    skipped, so an interrupted import resumes. Files load with
    ``weights_only=True``: plain nested lists of tensors pass, arbitrary
    pickled objects are refused. A new store is created only once the first
    trajectory has been read and fits the key (so a refused first file leaves
    nothing behind). Each trajectory must hold ``key["epochs"] + 1`` snapshots
    (MTT keeps the start and every epoch); with ``stored_epochs`` in the key only
    those rows are stored.
    """
    root = Path(root)
    store = TrajectoryStore.create_or_open(root, key) if (root / MANIFEST).exists() else None
    if store is None:
        TrajectoryStore.refuse_foreign(root)  # before any file is read
    done = set(store.finished()) if store is not None else set()
    layout = key.get("param_layout")
    index = 0
    for pt_file in map(Path, pt_files):
        try:
            buffer = torch.load(pt_file, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise StoreError(f"{pt_file} is missing.", hint="Check the replay_buffer_*.pt paths.") from None
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
            raise StoreError(
                f"{pt_file} cannot be read as an MTT replay buffer ({describe_load_failure(exc)}).",
                hint="Only MTT replay_buffer_*.pt files (nested lists of tensors) can be imported.",
            ) from None
        if not isinstance(buffer, list):
            raise StoreError(
                f"{pt_file} is not an MTT replay buffer: expected a list of trajectories, "
                f"found {type(buffer).__name__}."
            )
        for position, trajectory in enumerate(buffer):
            if index not in done:
                where = f"{pt_file}[{position}]"
                flat = _stored_rows(_flatten_mtt(trajectory, layout, where), key, where)
                if store is None:
                    store = TrajectoryStore.create_or_open(root, key)
                store.write_expert(index, flat, {"source": f"{pt_file.name}[{position}]"})
            index += 1
        del buffer  # free this file's tensors before the next one is loaded
    if index == 0:
        raise StoreError(f"{', '.join(map(str, pt_files)) or 'no file'}: no trajectories to import.")
    assert store is not None  # every index was either done (store open) or written (store created)
    return store


def _stored_rows(flat: torch.Tensor, key: dict, where: str) -> torch.Tensor:
    """The rows of an MTT trajectory (all ``epochs + 1`` snapshots) that a store with ``key`` keeps."""
    epochs = key.get("epochs")
    if epochs is None:
        return flat
    if flat.shape[0] != epochs + 1:
        held = flat.shape[0] - 1
        raise StoreError(
            f"{where} holds {held} epochs ({held + 1} snapshots) but the store key has {epochs}.",
            hint=f"import with --set experts.epochs={held}, the epochs the buffer's experts trained for.",
        )
    stored = key.get("stored_epochs")
    return flat if stored is None else flat[list(stored)]
