"""``RUN_DIR/evaluation.json``: every evaluation of a run, oldest first, as a JSON list of entries.

An entry records what was evaluated and how, so results under different protocols or of
different sets never overwrite each other::

    {"date": ..., "command": "evaluate", "set": {"kind": "final" | "snapshot", "iteration": 200, ...},
     "protocol": {runs, epochs, lr, momentum, ..., "split": "test"},
     "models": {name: {"model", "mean", "std", "runs": [per-network accuracies]}},
     "random_real": {name: {...}} or null}

Files of earlier versions held one object ``{model: {mean, std, runs, protocol}}``; they are
read as one entry per model, and converted on the next append (the old file is kept beside it as
``evaluation.single.json``). :func:`latest_by_model` gives that old view (the newest result of
each model) to whatever reads it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from distillkit.artifacts import atomic_write_bytes, atomic_write_json, read_json
from distillkit.errors import StoreError

FILE = "evaluation.json"
OLD_COPY = "evaluation.single.json"


def _from_single(old: dict[str, Any]) -> list[dict[str, Any]]:
    """An earlier single-object file as entries, one per model (each had its own protocol)."""
    entries = []
    for name, result in old.items():
        if not isinstance(result, dict):
            continue
        entries.append(
            {
                "date": None,
                "command": "evaluate",
                "set": {"kind": "final"},
                "protocol": result.get("protocol", {}),
                "models": {name: {k: v for k, v in result.items() if k != "protocol"}},
                "random_real": None,
                "converted_from": "single-entry evaluation.json",
            }
        )
    return entries


def _read(run_dir: Path) -> Any:
    path = Path(run_dir) / FILE
    if not path.exists():
        return []
    data = read_json(path, StoreError, f"{path} is missing")
    if not isinstance(data, (list, dict)):
        raise StoreError(f"{path} holds neither a list of evaluations nor a single one")
    return data


def load_entries(run_dir: Path) -> list[dict[str, Any]]:
    """Every recorded evaluation of ``run_dir``, oldest first (an old single-entry file converted)."""
    data = _read(run_dir)
    return _from_single(data) if isinstance(data, dict) else [e for e in data if isinstance(e, dict)]


def append_entry(run_dir: Path, entry: dict[str, Any]) -> None:
    """Add ``entry`` at the end, atomically; an old single-entry file is first kept as ``OLD_COPY``."""
    run_dir = Path(run_dir)
    data = _read(run_dir)
    if isinstance(data, dict):
        atomic_write_bytes(run_dir / OLD_COPY, (run_dir / FILE).read_bytes())
    atomic_write_json(run_dir / FILE, [*load_entries(run_dir), entry])


def new_entry(
    command: str,
    evaluated: dict[str, Any],
    protocol: dict[str, Any],
    models: dict[str, dict[str, Any]],
    random_real: dict[str, dict[str, Any]] | None,
) -> dict[str, Any]:
    """One evaluation: the set, the protocol (with its lr and split), the results, the date."""
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command,
        "set": evaluated,
        "protocol": protocol,
        "models": models,
        "random_real": random_real,
    }


def latest_by_model(run_dir: Path) -> dict[str, dict[str, Any]]:
    """``{model: {mean, std, runs, protocol}}``: the newest result of each model, as files used to hold."""
    view: dict[str, dict[str, Any]] = {}
    for entry in load_entries(run_dir):
        for name, result in entry.get("models", {}).items():
            view[name] = {**result, "protocol": entry.get("protocol", {})}
    return view
