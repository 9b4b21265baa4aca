"""Expert trajectories other tools saved: the ``replay_buffer_*.pt`` files of MTT, FTD and DATM.

All three write the same layout (MTT's ``buffer.py``; FTD's and DATM's ``buffer/buffer_FTD.py``):
``torch.save`` of a list of trajectories, each a list of ``epochs + 1`` snapshots (the start and
every epoch), each a list of the network's parameter tensors in ``parameters()`` order, with no
names, learning rate or seed. Their ConvNet (``networks.py``) is the same class in all three, so
the parameter order is too. One reader therefore serves all three sources; what differs is how the
experts were trained (FTD and DATM wrap SGD in the sharpness-aware GSAM optimizer), which the files
cannot say, so the caller names the source and the store key records it.

Files load with ``torch.load(weights_only=True)``: nested lists of tensors pass, pickled objects are
refused and never unpickled. Anything that is not this layout is refused in one line that says what
the file holds instead (a state_dict, flattened snapshots, one trajectory without the outer list...).
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from distillkit.errors import ConfigError, StoreError
from distillkit.experts.store import MANIFEST, TrajectoryStore, first_difference, show_value
from distillkit.interop import describe_load_failure

#: The tools whose buffers can be imported, and how each trained its experts.
SOURCES: dict[str, str] = {
    "mtt": "MTT (github.com/GeorgeCazenavette/mtt-distillation): plain SGD",
    "ftd": "FTD (github.com/AngusDujw/FTD-distillation): SGD inside GSAM (sharpness-aware)",
    "datm": "DATM (github.com/NUS-HPC-AI-Lab/DATM): SGD inside GSAM (sharpness-aware), FTD's buffer code",
}
#: Sources whose training the ``experts`` section cannot describe: their store key names the trainer,
#: so ``distillkit experts`` never adds its own SGD experts to such a store.
_OTHER_TRAINER = {"ftd": "ftd-gsam", "datm": "datm-gsam"}
LAYOUT = "a list of trajectories, each a list of snapshots, each a list of parameter tensors"


@dataclass(frozen=True)
class Imported:
    """What an import did: the store, and how many trajectories each file held."""

    store: TrajectoryStore
    per_file: tuple[int, ...]


def check_source(source: str) -> str:
    """``source`` when it names a tool in :data:`SOURCES`, else a :class:`ConfigError`."""
    if source not in SOURCES:
        raise ConfigError(
            f"--source {source!r} is not one of {', '.join(SOURCES)}",
            hint="all three save the same layout; the source says how the experts were trained",
        )
    return source


def import_key(key: dict[str, Any], source: str) -> dict[str, Any]:
    """The store key for experts from ``source``: ``key`` as the config builds it, plus a foreign trainer.

    MTT's experts are plain SGD, which the config describes, so their key is the one
    ``distillkit experts`` builds; FTD's and DATM's add ``"trainer"``.
    """
    trainer = _OTHER_TRAINER.get(check_source(source))
    return key if trainer is None else {**key, "trainer": trainer}


def import_replay_buffers(pt_files: list[Path], root: Path, key: dict, source: str = "mtt") -> Imported:
    """Convert ``replay_buffer_*.pt`` files into a store at ``root`` whose key is ``import_key(key, source)``.

    Trajectories are numbered in file order; those already in the store are skipped,
    so an interrupted import resumes. A new store is created only once the first
    trajectory has been read and fits the key (a refused first file leaves nothing
    behind). Each trajectory must hold ``key["epochs"] + 1`` snapshots; with
    ``stored_epochs`` in the key only those rows are stored.
    """
    root, key = Path(root), import_key(key, source)
    store = TrajectoryStore.create_or_open(root, key) if (root / MANIFEST).exists() else None
    if store is None:
        TrajectoryStore.refuse_foreign(root)  # before any file is read
    done = set(store.finished()) if store is not None else set()
    layout = key.get("param_layout")
    index, per_file = 0, []
    for pt_file in map(Path, pt_files):
        buffer = read_buffer(pt_file, layout)
        for position, trajectory in enumerate(buffer):
            if index not in done:
                where = f"{pt_file}[{position}]"
                rows = _stored_rows(trajectory_rows(trajectory, layout, where), key, where)
                if store is None:
                    store = TrajectoryStore.create_or_open(root, key)
                store.write_expert(index, rows, {"source": f"{source}:{pt_file.name}[{position}]"})
            index += 1
        per_file.append(len(buffer))
        del buffer  # free this file's tensors before the next one is loaded
    if index == 0:
        raise StoreError(f"{', '.join(map(str, pt_files)) or 'no file'}: no trajectories to import.")
    assert store is not None  # every index was either done (store open) or written (store created)
    return Imported(store, tuple(per_file))


def read_buffer(pt_file: Path, layout: list | None = None) -> list:
    """A replay buffer's list of trajectories, tensor-only, or a one-line :class:`StoreError`.

    With the store's ``layout`` (``[[name, shape], ...]``), a file holding one trajectory
    without the outer list (its first item a snapshot of exactly those shapes) is named as such.
    """
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not for the user
            warnings.simplefilter("ignore")
            buffer = torch.load(pt_file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise StoreError(f"{pt_file} is missing.", hint="Check the replay_buffer_*.pt paths.") from None
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise StoreError(
            f"{pt_file} cannot be read as a replay buffer ({describe_load_failure(exc)}).",
            hint="Only replay_buffer_*.pt files of MTT, FTD or DATM (nested lists of tensors) import.",
        ) from None
    if not isinstance(buffer, list | tuple):
        raise StoreError(
            f"{pt_file} is not a replay buffer: it holds {describe(buffer)}, where MTT, FTD and DATM "
            f"save {LAYOUT}."
        )
    first = buffer[0] if buffer else None
    is_snapshot = isinstance(first, list | tuple) and all(isinstance(t, torch.Tensor) for t in first)
    shapes = [list(t.shape) for t in first] if is_snapshot else None
    if layout is not None and shapes == [list(shape) for _, shape in layout]:
        raise StoreError(
            f"{pt_file} holds one trajectory ({describe(buffer)}), not a list of trajectories.",
            hint="MTT, FTD and DATM save a list of trajectories; wrap this one in a list "
            "(torch.save([trajectory], path)).",
        )
    return list(buffer)


def trajectory_rows(trajectory: Any, layout: list | None, where: str) -> torch.Tensor:
    """One trajectory (a list of snapshots, each a list of tensors) as ``[snapshots, P]`` float32."""
    if not isinstance(trajectory, list | tuple) or not trajectory:
        raise StoreError(
            f"{where} is {describe(trajectory)}, not a trajectory (a non-empty list of snapshots)."
        )
    expected_shapes = None if layout is None else [list(shape) for _, shape in layout]
    rows = []
    for epoch, snapshot in enumerate(trajectory):
        if not isinstance(snapshot, list | tuple) or not all(isinstance(t, torch.Tensor) for t in snapshot):
            raise StoreError(
                f"{where}: snapshot {epoch} is {describe(snapshot)}, not a list of parameter tensors.",
                hint=_layout_hint(snapshot),
            )
        if not snapshot:
            raise StoreError(f"{where}: snapshot {epoch} holds no tensors.")
        shapes = [list(t.shape) for t in snapshot]
        if expected_shapes is not None and len(shapes) != len(expected_shapes):
            raise StoreError(
                f"{where}: snapshot {epoch} holds {len(shapes)} parameter tensors but the store "
                f"layout has {len(expected_shapes)}.",
                hint="--model (and --dataset) must name the network the buffer was trained with.",
            )
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


def describe(value: Any) -> str:
    """A few words on what a loaded object is, for saying how a file differs from the layout."""
    if isinstance(value, torch.Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {list(value.shape)}"
    if isinstance(value, dict):
        named = value and all(isinstance(v, torch.Tensor) for v in value.values())
        what = (
            _count(len(value), "named tensor") + " (a state_dict)" if named else _count(len(value), "entry")
        )
        return f"a dict of {what}"
    if isinstance(value, list | tuple):
        if not value:
            return "an empty list"
        kinds = {_kind(item) for item in value}
        return f"a list of {_count(len(value), kinds.pop() if len(kinds) == 1 else 'mixed item')}"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _count(n: int, noun: str) -> str:
    plural = noun if n == 1 else noun[:-1] + "ies" if noun.endswith("y") else noun + "s"
    return f"{n} {plural}"


def _kind(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return "tensor"
    return "list" if isinstance(value, list | tuple) else type(value).__name__


def _layout_hint(snapshot: Any) -> str:
    """How a snapshot in another layout could be brought into MTT's."""
    if isinstance(snapshot, dict):
        return "save the tensors as a list in parameters() order, e.g. list(state_dict.values())."
    if isinstance(snapshot, torch.Tensor):
        return "a flattened snapshot has lost its per-parameter shapes; save the list of parameter tensors."
    return f"MTT, FTD and DATM save {LAYOUT}."


def _stored_rows(flat: torch.Tensor, key: dict, where: str) -> torch.Tensor:
    """The rows of a trajectory (all ``epochs + 1`` snapshots) that a store with ``key`` keeps."""
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
