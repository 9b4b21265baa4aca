"""Per-epoch checkpoints of an expert in training, so an interrupted expert run resumes mid-expert.

After every epoch the trainer's whole state is written beside the store's
expert files::

    expert_003.partial.safetensors   model state, trajectory rows so far, optimizer tensors,
                                     RNG states; the header metadata "state" holds the rest
                                     (epoch, test accuracies, seconds, optimizer settings) as JSON
    expert_003.partial.json          {"index", "epoch", "test_acc", "sha256"} of that file

No pickle: tensors go to safetensors, everything else to JSON. Restoring all of
it (including ``run.generator`` and the global torch RNG) makes a resumed
expert bit-identical to an uninterrupted one on the same machine.

The sha256 is checked before use. A partial checkpoint that fails the check
(or cannot be read) is never used: :meth:`PartialCheckpoint.resume` deletes it,
says so through ``note`` and the expert starts over. A crash between writing
the two files looks the same, so it costs at most that one expert's progress.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from distillkit.artifacts import atomic_write_bytes, atomic_write_json
from distillkit.context import RunContext
from distillkit.errors import StoreError

FORMAT_VERSION = 1
_MODEL, _OPTIM, _RNG, _ROWS = "model.", "optimizer.", "rng.", "trajectory"


@dataclass
class TrainingState:
    """Everything an expert's training loop carries from one epoch to the next."""

    epoch: int  # epochs completed
    model: dict[str, torch.Tensor]  # ``model.state_dict()``
    optimizer: dict[str, Any]  # ``optimizer.state_dict()``
    trajectory: torch.Tensor  # the kept snapshots so far, [rows, P]
    test_acc: list[float]
    seconds: float
    rng: dict[str, torch.Tensor]  # "generator", "torch" and, on CUDA, "cuda"
    history: list[dict[str, float]] = field(default_factory=list)  # per-epoch training means


def capture(
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    run: RunContext,
    snapshots: list[torch.Tensor],
    test_acc: list[float],
    seconds: float,
    history: Sequence[dict[str, float]] = (),
) -> TrainingState:
    """The training state after ``epoch`` completed epochs (tensors are not copied here)."""
    rng = {"generator": run.generator.get_state(), "torch": torch.get_rng_state()}
    if run.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(run.device)
    width = sum(p.numel() for p in model.parameters())
    rows = torch.stack(snapshots) if snapshots else torch.empty((0, width))
    return TrainingState(
        epoch, model.state_dict(), optimizer.state_dict(), rows, list(test_acc), seconds, rng, list(history)
    )


def restore(
    state: TrainingState, model: nn.Module, optimizer: torch.optim.Optimizer, run: RunContext
) -> None:
    """Put ``state`` back into a freshly built model and optimizer and the run's RNGs."""
    model.load_state_dict(state.model)
    optimizer.load_state_dict(state.optimizer)
    run.generator.set_state(state.rng["generator"])
    torch.set_rng_state(state.rng["torch"])
    if "cuda" in state.rng:
        torch.cuda.set_rng_state(state.rng["cuda"], run.device)


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", copy=True).contiguous()


def _split_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer tensors (momentum buffers, Adam moments and steps) apart from its JSON settings."""
    tensors, plain = {}, {}
    for pid, slots in state_dict["state"].items():
        plain[str(pid)] = {}
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{_OPTIM}{pid}.{name}"] = _cpu(value)
            else:
                plain[str(pid)][name] = value
    return tensors, {"state": plain, "param_groups": state_dict["param_groups"]}


def _join_optimizer(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`_split_optimizer`; ``tensors`` are named ``<param id>.<slot>``."""
    state: dict[int, dict[str, Any]] = {int(pid): dict(slots) for pid, slots in plain["state"].items()}
    for name, value in tensors.items():
        pid, _, slot = name.partition(".")
        state.setdefault(int(pid), {})[slot] = value
    # JSON turned tuples (Adam's betas) into lists; only "params" is a list in a param group.
    groups = [
        {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in group.items()}
        for group in plain["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


def _header_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file held in memory."""
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]).get("__metadata__", {})


class PartialCheckpoint:
    """The partial checkpoint of expert ``index`` in store directory ``root``."""

    def __init__(self, root: Path, index: int) -> None:
        self.index = index
        self.tensors_path = Path(root) / f"expert_{index:03d}.partial.safetensors"
        self.json_path = Path(root) / f"expert_{index:03d}.partial.json"

    def save(self, state: TrainingState) -> None:
        """Write ``state`` atomically (tensors first, then the JSON that vouches for them)."""
        optimizer_tensors, optimizer_plain = _split_optimizer(state.optimizer)
        tensors = {
            **{_MODEL + name: _cpu(value) for name, value in state.model.items()},
            **optimizer_tensors,
            **{_RNG + name: _cpu(value) for name, value in state.rng.items()},
            _ROWS: _cpu(state.trajectory),
        }
        rest = {
            "format_version": FORMAT_VERSION,
            "index": self.index,
            "epoch": state.epoch,
            "test_acc": state.test_acc,
            "seconds": state.seconds,
            "optimizer": optimizer_plain,
            "history": state.history,
        }
        data = save_safetensors(tensors, metadata={"state": json.dumps(rest)})
        atomic_write_bytes(self.tensors_path, data)
        summary = {"index": self.index, "epoch": state.epoch, "test_acc": state.test_acc}
        atomic_write_json(self.json_path, {**summary, "sha256": hashlib.sha256(data).hexdigest()})

    def exists(self) -> bool:
        """Whether any file of this checkpoint is there (trusted or not: :meth:`resume` decides)."""
        return self.json_path.exists() or self.tensors_path.exists()

    def load(self) -> TrainingState | None:
        """The saved state; None when there is none; a StoreError when it cannot be trusted."""
        if not self.exists():
            return None
        try:
            expected = json.loads(self.json_path.read_text(encoding="utf-8"))["sha256"]
            data = self.tensors_path.read_bytes()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{self.json_path} cannot be read ({type(exc).__name__}: {exc}).") from exc
        if hashlib.sha256(data).hexdigest() != expected:
            raise StoreError(
                f"{self.tensors_path}: checksum mismatch (partial checkpoint corrupt or truncated)."
            )
        try:
            tensors = load_safetensors(data)
            rest = json.loads(_header_metadata(data)["state"])
        except (SafetensorError, ValueError, KeyError) as exc:
            raise StoreError(f"{self.tensors_path} cannot be read ({exc}).") from exc
        if rest.get("format_version") != FORMAT_VERSION or rest.get("index") != self.index:
            raise StoreError(f"{self.tensors_path} is not a partial checkpoint of expert {self.index}.")

        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}

        return TrainingState(
            epoch=rest["epoch"],
            model=part(_MODEL),
            optimizer=_join_optimizer(part(_OPTIM), rest["optimizer"]),
            trajectory=tensors[_ROWS],
            test_acc=rest["test_acc"],
            seconds=rest["seconds"],
            rng=part(_RNG),
            history=list(rest.get("history", [])),
        )

    def resume(self, note: Callable[[str], None]) -> TrainingState | None:
        """The state to resume from, or None (no checkpoint, or an untrusted one, which is deleted)."""
        try:
            state = self.load()
        except StoreError as exc:
            note(f"{exc} Starting expert {self.index} over.")
            self.discard()
            return None
        if state is not None:
            note(f"resuming expert {self.index} after epoch {state.epoch}")
        return state

    def discard(self) -> None:
        """Delete both files (the expert is finished, or its checkpoint is not trusted)."""
        self.json_path.unlink(missing_ok=True)
        self.tensors_path.unlink(missing_ok=True)
