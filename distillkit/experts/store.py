"""The trajectory store: expert trajectories on disk, one safetensors file per expert.

Layout of a store directory::

    manifest.json               {"format_version": 1, "key": {...}, "experts": [...]}
    expert_000.safetensors      tensor "trajectory", [epochs + 1, P], row e = params after e epochs
    expert_001.safetensors      ...

with ``store_dtype = "int8"`` a file holds int8 "codes" [epochs + 1, P] and
float32 "scales" [epochs + 1, slots] instead (see :mod:`distillkit.experts.quantise`).

A key may list ``stored_epochs`` (increasing epoch indices): then the files hold
only those snapshots, row i = epoch ``stored_epochs[i]``, and each manifest entry
records them too. :meth:`TrajectoryStore.load` takes epoch indices either way.

The ``key`` holds everything that determines the trajectories (dataset,
preprocessing, model and parameter layout, optimizer, epochs, seed, expert
plugins); two stores are interchangeable exactly when their keys are equal, so
an existing directory is reused only for an identical key. Fields read here:
``store_dtype`` (``float32`` default, ``float16``, ``bfloat16``, ``int8``), ``num_params``,
``epochs`` and ``stored_epochs`` (checked on write when present), and for
:meth:`TrajectoryStore.check_compatible` the fields in ``COMPATIBILITY_FIELDS``
(``param_layout`` is ``[[name, shape], ...]`` in ``parameters()`` order).

Files are safetensors rather than pickles so that a store can be shared and
read lazily: distillation needs only a few epochs per iteration, and
``safe_open(...).get_slice`` reads just those rows. Each file's sha256 is
recorded in the manifest and checked once per process before first use.
MTT's pickled ``replay_buffer_*.pt`` files are accepted only through
:mod:`distillkit.experts.replay` (MTT, FTD and DATM).

Longer than 400 lines because one class owns the on-disk format (write, verify,
lazy partial loads, the compatibility check against a run); split, the format's
rules would be spread over several modules.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from distillkit.artifacts import atomic_path, atomic_write_json, file_sha256, read_json, save_tensor_file
from distillkit.errors import StoreError
from distillkit.experts import quantise

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TENSOR_NAME = "trajectory"
FLOAT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
STORE_DTYPES = (*FLOAT_DTYPES, "int8")
#: ``validation`` is in a run's key only with a validation split: its experts must not have seen it.
COMPATIBILITY_FIELDS = ("dataset", "image_shape", "num_classes", "param_layout", "num_params", "validation")
_ENTRY_FIELDS = ("index", "file", "sha256", "epochs", "stored_epochs", "dtype", "test_acc", "seconds")
_MISSING = object()

# (resolved path, size, mtime_ns, expected sha256) of files already verified in
# this process: hashing a large trajectory costs a full read, so do it once.
_VERIFIED: set[tuple[str, int, int, str]] = set()


def expert_filename(index: int) -> str:
    """File name of expert ``index`` inside a store."""
    return f"expert_{index:03d}.safetensors"


def _canonical(obj: Any) -> Any:
    """``obj`` as JSON reads it back (tuples become lists), so keys compare like stored ones."""
    return json.loads(json.dumps(obj))


def show_value(value: Any) -> str:
    """A short printable form of a key value for error messages."""
    if value is _MISSING:
        return "missing"
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def first_difference(old: Any, new: Any, path: str) -> tuple[str, Any, Any] | None:
    """The dotted path and both values of the first place where two JSON values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        for name in [*old, *(k for k in new if k not in old)]:
            where = f"{path}.{name}" if path else name
            found = first_difference(old.get(name, _MISSING), new.get(name, _MISSING), where)
            if found:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            found = first_difference(a, b, f"{path}[{i}]")
            if found:
                return found
        return None
    if old is _MISSING or new is _MISSING or old != new:
        return path, old, new
    return None


def store_dtype_of(key: dict[str, Any]) -> str:
    name = key.get("store_dtype", "float32")
    if name not in STORE_DTYPES:
        raise StoreError(
            f"store_dtype {name!r} is not one of {', '.join(STORE_DTYPES)}.",
            hint="Set experts.store_dtype to float32, float16, bfloat16 or int8.",
        )
    return name


def _slot_sizes(key: dict[str, Any], width: int, where: Path) -> list[int]:
    """Parameter-tensor sizes from the key's ``param_layout`` (the int8 scales are per slot)."""
    layout = key.get("param_layout")
    sizes = [math.prod(shape) for _, shape in layout] if isinstance(layout, list) else []
    if sum(sizes) != width:
        raise StoreError(
            f"{where}: int8 trajectories need the store key's param_layout to cover the "
            f"{width} parameters, but it covers {sum(sizes)}.",
            hint="Use store_dtype float32/float16/bfloat16, or give the key the model's param_layout.",
        )
    return sizes


def describe_epochs(epochs: Sequence[int]) -> str:
    """Epoch indices for messages, consecutive ones as ranges: ``0..11, 20``."""
    parts = [str(a) if b - a == 1 else f"{a}..{b - 1}" for a, b in _runs(epochs)]
    return ", ".join(parts) or "none"


#: More epochs than any trajectory-matching expert trains; a manifest announcing more is damaged
#: (and would make readers build epoch lists that exhaust memory).
MAX_EPOCHS = 100_000


def _is_epoch_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_EPOCHS


def _is_epoch_list(value: Any) -> bool:
    """Strictly increasing non-negative ints (what ``stored_epochs`` must be)."""
    return (
        isinstance(value, list)
        and all(isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in value)
        and all(a < b for a, b in itertools.pairwise(value))
    )


def _stored_epochs(key: dict[str, Any], rows: int) -> tuple[int, list[int]]:
    """(epochs trained, epochs stored) that a ``rows``-row trajectory must have under ``key``."""
    stored, epochs = key.get("stored_epochs"), key.get("epochs")
    if stored is None:
        epochs = rows - 1 if epochs is None else epochs
        return epochs, list(range(epochs + 1))
    return (max(stored, default=0) if epochs is None else epochs), list(stored)


def _runs(indices: Sequence[int]) -> list[tuple[int, int]]:
    """Group indices into ``[start, stop)`` runs of consecutive values, keeping their order."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


@dataclass(frozen=True)
class StoreManifest:
    """What ``manifest.json`` holds: the store key and one entry per finished expert."""

    key: dict[str, Any]
    experts: list[dict]

    def to_json(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "key": self.key, "experts": self.experts}

    @classmethod
    def from_json(cls, raw: Any, path: Path) -> StoreManifest:
        """Validate a parsed manifest; anything malformed is a StoreError naming ``path``."""
        if not isinstance(raw, dict):
            raise StoreError(f"{path} is not a trajectory-store manifest (not a JSON object).")
        if raw.get("format_version") != FORMAT_VERSION:
            raise StoreError(
                f"{path} has format_version {raw.get('format_version')!r} but this distillkit "
                f"reads {FORMAT_VERSION}.",
                hint="Use the distillkit version that wrote the store, or train new experts.",
            )
        key, experts = raw.get("key"), raw.get("experts")
        if not isinstance(key, dict) or not isinstance(experts, list):
            raise StoreError(f"{path} lacks a 'key' object or an 'experts' list.")
        if "epochs" in key and not _is_epoch_count(key["epochs"]):
            raise StoreError(
                f"{path} announces {show_value(key['epochs'])} epochs per expert, which is not a "
                f"count from 0 to {MAX_EPOCHS}.",
                hint="The manifest is damaged: retrain the experts into a new store.",
            )
        for entry in experts:
            valid = (
                isinstance(entry, dict)
                and isinstance(entry.get("index"), int)
                and isinstance(entry.get("file"), str)
                and Path(entry["file"]).name == entry["file"]
                and entry["file"] not in ("", "..")  # a plain file inside the store, never the store itself
                and isinstance(entry.get("sha256"), str)
                and _is_epoch_count(entry.get("epochs"))
                and _is_epoch_list(entry.get("stored_epochs", []))
                and max(entry.get("stored_epochs", []), default=0) <= entry["epochs"]
            )
            if not valid:
                raise StoreError(f"{path} has a malformed expert entry: {show_value(entry)}.")
        return cls(key=key, experts=experts)


class TrajectoryStore:
    """A directory of expert trajectories described by ``manifest.json``."""

    def __init__(self, root: Path, manifest: StoreManifest) -> None:
        self.root = Path(root)
        self._manifest = manifest

    @property
    def key(self) -> dict[str, Any]:
        return self._manifest.key

    @property
    def manifest(self) -> StoreManifest:
        return self._manifest

    @classmethod
    def create_or_open(cls, root: Path, key: dict) -> TrajectoryStore:
        """Open the store at ``root`` if its key equals ``key``, else create it there.

        Reusing a store keeps its finished experts, so an interrupted expert run
        resumes. A store with a different key is never overwritten.
        """
        root = Path(root)
        key = _canonical(key)
        store_dtype_of(key)
        stored, epochs = key.get("stored_epochs"), key.get("epochs")
        if stored is not None and (
            not _is_epoch_list(stored) or not stored or (epochs is not None and stored[-1] > epochs)
        ):
            raise StoreError(
                f"the key for store {root} has stored_epochs {show_value(stored)}, which is not an "
                f"increasing list of epochs within 0..{epochs}."
            )
        if (root / MANIFEST).exists():
            store = cls.open(root)
            diff = first_difference(store.key, key, "")
            if diff is not None:
                where, old, new = diff
                raise StoreError(
                    f"Trajectory store {root} holds experts for a different setup: "
                    f"{where} is {show_value(old)} there but {show_value(new)} now.",
                    hint="Use another store directory, or delete this one to train new experts.",
                )
            return store
        cls.refuse_foreign(root)
        manifest = StoreManifest(key=key, experts=[])
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(root / MANIFEST, manifest.to_json())
        return cls(root, manifest)

    @staticmethod
    def refuse_foreign(root: Path) -> None:
        """Refuse ``root`` as a place for a new store when it holds anything but a store."""
        root = Path(root)
        if (root / MANIFEST).exists():
            return
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise StoreError(
                f"{root} exists but is not a trajectory store (no {MANIFEST}).",
                hint="Choose a new or empty directory for the experts.",
            )

    @classmethod
    def open(cls, root: Path) -> TrajectoryStore:
        """Open an existing store; a missing or unreadable manifest is a StoreError."""
        root = Path(root)
        path = root / MANIFEST
        raw = read_json(
            path,
            StoreError,
            f"{root} is not a trajectory store: {MANIFEST} is missing.",
            hint="Pass the directory that `distillkit experts` wrote, or train experts first.",
        )
        return cls(root, StoreManifest.from_json(raw, path))

    def finished(self) -> list[int]:
        """Indices of experts recorded in the manifest whose file is present.

        Deleting a corrupt expert file therefore makes the next expert run retrain it.
        """
        return sorted(e["index"] for e in self._manifest.experts if (self.root / e["file"]).exists())

    def write_expert(self, index: int, trajectory: torch.Tensor, info: dict) -> None:
        """Store one expert's trajectory, then record it in the manifest (see :meth:`write_expert_file`)."""
        self.record([self.write_expert_file(index, trajectory, info)])

    def write_expert_file(self, index: int, trajectory: torch.Tensor, info: dict) -> dict[str, Any]:
        """Write expert ``index``'s file atomically and return its manifest entry, not yet recorded.

        ``trajectory`` is ``[epochs + 1, P]``, or one row per epoch of the key's
        ``stored_epochs`` when it has them.

        The tensor is copied to the CPU in the store dtype before writing, so
        later in-place updates of the caller's tensors cannot change what is
        stored. ``info`` adds JSON fields to the entry (``test_acc``, ``seconds``...).
        """
        if index < 0:
            raise ValueError(f"expert index must be >= 0, got {index}")
        name = expert_filename(index)
        if trajectory.dim() != 2:
            raise StoreError(
                f"{name}: a trajectory must be [epochs + 1, P], got shape {list(trajectory.shape)}."
            )
        rows, width = trajectory.shape
        num_params = self.key.get("num_params")
        if num_params is not None and width != num_params:
            raise StoreError(
                f"{name}: the trajectory has {width} parameters but store {self.root} expects {num_params}."
            )
        epochs, stored = _stored_epochs(self.key, rows)
        if rows != len(stored):
            raise StoreError(
                f"{name}: the trajectory has {rows} snapshots but store {self.root} "
                f"expects {len(stored)} (epochs {describe_epochs(stored)})."
            )
        dtype_name = store_dtype_of(self.key)
        if dtype_name == "int8":
            flat = trajectory.detach().to("cpu", torch.float32, copy=True)
            if not torch.isfinite(flat).all():
                raise StoreError(
                    f"{name}: the trajectory holds NaN or inf values, which int8 cannot store.",
                    hint="The expert diverged: lower experts.lr, or store it as float32.",
                )
            tensors = quantise.encode(flat, _slot_sizes(self.key, width, self.root / name))
        else:
            rows_out = trajectory.detach().to("cpu", FLOAT_DTYPES[dtype_name], copy=True)
            tensors = {TENSOR_NAME: rows_out.contiguous()}
        with atomic_path(self.root / name) as tmp:
            save_tensor_file(tensors, tmp)
            digest = file_sha256(tmp)
        entry = {
            "index": index,
            "file": name,
            "sha256": digest,
            "epochs": epochs,
            "stored_epochs": stored,
            "dtype": dtype_name,
            "test_acc": [float(a) for a in info.get("test_acc", [])],
            "seconds": None if info.get("seconds") is None else float(info["seconds"]),
            **_canonical({k: v for k, v in info.items() if k not in _ENTRY_FIELDS}),
        }
        return entry

    def record(self, entries: Sequence[dict[str, Any]]) -> None:
        """Add (or replace) manifest entries, in one atomic write of ``manifest.json``."""
        indices = {e["index"] for e in entries}
        experts = [e for e in self._manifest.experts if e["index"] not in indices] + list(entries)
        experts.sort(key=lambda e: e["index"])
        manifest = StoreManifest(key=self._manifest.key, experts=experts)
        atomic_write_json(self.root / MANIFEST, manifest.to_json())
        self._manifest = manifest

    def _entry(self, index: int) -> dict[str, Any]:
        for entry in self._manifest.experts:
            if entry["index"] == index:
                return entry
        raise StoreError(
            f"Trajectory store {self.root} has no expert {index} (finished: {self.finished()}).",
            hint="Train more experts into this store, or sample from the finished ones.",
        )

    def _verify(self, path: Path, expected: str) -> None:
        """Check the file's sha256 against the manifest, once per process per file version."""
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise StoreError(
                f"{path} is listed in {MANIFEST} but missing.",
                hint="Run `distillkit experts` on this store again to retrain it.",
            ) from None
        token = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, expected)
        if token in _VERIFIED:
            return
        try:
            actual = file_sha256(path)
        except OSError as exc:  # a directory, no permission...
            raise StoreError(f"{path} cannot be read ({exc.strerror}).") from None
        if actual != expected:
            raise StoreError(
                f"{path}: checksum mismatch (file corrupt or truncated).",
                hint=f"Delete {path} and run `distillkit experts` on this store to retrain it.",
            )
        _VERIFIED.add(token)

    def load(
        self,
        index: int,
        epochs: Sequence[int] | None = None,
        device: str | torch.device = "cpu",
    ) -> torch.Tensor:
        """Return float32 ``[len(epochs), P]`` (every stored epoch when None) on ``device``.

        ``epochs`` are epoch indices (not rows); one the file does not hold is a
        StoreError. Only the rows needed are read from disk (consecutive rows in
        one slice); an int8 file is read from row 0 to the last requested row,
        since each row is coded relative to the one before.
        """
        entry = self._entry(index)
        path = self.root / entry["file"]
        self._verify(path, entry["sha256"])
        held = self.stored_epochs(index)
        row_of = {epoch: row for row, epoch in enumerate(held)}
        requested = held if epochs is None else [int(e) for e in epochs]
        missing = [e for e in requested if e not in row_of]
        if missing:
            raise StoreError(
                f"{path} holds epochs {describe_epochs(held)} but epoch {missing[0]} was requested.",
                hint="Train the experts with experts.store_epochs=all, or ask only for stored epochs.",
            )
        wanted = [row_of[e] for e in requested]
        int8 = entry.get("dtype") == "int8"
        try:
            with safe_open(path, framework="pt", device="cpu") as handle:
                rows = handle.get_slice(quantise.CODES if int8 else TENSOR_NAME)
                shape = rows.get_shape()
                if len(shape) != 2:
                    raise StoreError(f"{path} holds a tensor of shape {shape}, not [epochs, params].")
                total, width = shape
                if total != len(held):
                    raise StoreError(
                        f"{path} has {total} rows but {MANIFEST} lists {len(held)} stored epochs.",
                        hint=f"Delete {path} and run `distillkit experts` on this store to retrain it.",
                    )
                if int8:
                    stop = max(wanted, default=-1) + 1
                    codes, scales = rows[0:stop], handle.get_slice(quantise.SCALES)[0:stop]
                    out = quantise.decode(codes, scales, _slot_sizes(self.key, width, path))[wanted]
                else:
                    parts = [rows[start:stop] for start, stop in _runs(wanted)]
                    out = torch.cat(parts) if parts else torch.empty((0, width))
        except SafetensorError as exc:
            raise StoreError(f"{path} cannot be read as safetensors ({exc}).") from exc
        return out.to(device=device, dtype=torch.float32)

    def num_epochs(self, index: int) -> int:
        """Epochs expert ``index`` was trained for (not all may be stored, see :meth:`stored_epochs`)."""
        return self._entry(index)["epochs"]

    def stored_epochs(self, index: int) -> list[int]:
        """Epoch indices whose snapshots expert ``index``'s file holds, in row order."""
        entry = self._entry(index)
        return list(entry.get("stored_epochs", range(entry["epochs"] + 1)))

    def check_compatible(self, expected: dict) -> None:
        """Refuse a store whose experts cannot be matched by the run described by ``expected``.

        Compares the ``COMPATIBILITY_FIELDS`` present in ``expected``; other key
        fields (optimizer, seed...) may legitimately differ.
        """
        expected = _canonical(expected)
        for field in COMPATIBILITY_FIELDS:
            if field not in expected:
                continue
            have = self.key.get(field, _MISSING)
            diff = first_difference(have, expected[field], field)
            if diff is None:
                continue
            where, old, new = diff
            models = self.key.get("model"), expected.get("model")
            if field == "dataset":
                message = (
                    f"store {self.root} was trained on {show_value(have)} but the run uses {show_value(new)}."
                )
            elif field in ("param_layout", "num_params") and None not in models and models[0] != models[1]:
                # Layouts of two different networks differ everywhere; the names say it in one line.
                message = (
                    f"store {self.root} holds experts of model {show_value(models[0])} but the run uses "
                    f"{show_value(models[1])}: their {field} differ."
                )
            else:
                message = (
                    f"store {self.root} does not fit the run: {where} is {show_value(old)} in the "
                    f"store but {show_value(new)} in the run."
                )
            raise StoreError(
                message,
                hint="Use experts trained for this dataset and model, or train new ones.",
            )
