"""``RUN_DIR/invocation.json``: how a run was started and every command run on it since.

``command`` and ``experts`` say what ``--resume`` needs (they stay those of the first
command); ``invocations`` lists one entry per command that wrote to the directory (the start,
each resume or extension, each ``evaluate``): the command line as typed (``sys.argv``, and
``sys.orig_argv`` with the interpreter), the working directory, the date, the Python, torch and
distillkit versions, and the package and version of every installed plugin.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from distillkit.artifacts import atomic_write_json, read_json
from distillkit.errors import ConfigError

FILE = "invocation.json"


def plugin_versions(selected: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Every installed plugin's distribution and version (no plugin is imported), selected ones marked."""
    from distillkit.host import discover, distribution_of

    chosen = set(selected)
    versions = {}
    for name, entry_point in sorted(discover().items()):
        package, version = distribution_of(entry_point)
        versions[name] = {"package": package, "version": version, "selected": name in chosen}
    for name in sorted(chosen - set(versions)):
        versions[name] = {"package": "-", "version": "-", "selected": True, "installed": False}
    return versions


def invocation_entry(command: str, plugins: Iterable[str]) -> dict[str, Any]:
    """This process's command line, directory, date and versions."""
    from distillkit.runtime import environment

    return {
        "command": command,
        "argv": list(sys.argv),
        "orig_argv": list(getattr(sys, "orig_argv", sys.argv)),
        "cwd": os.getcwd(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": environment(),
        "plugins": plugin_versions(plugins),
    }


def start_record(run_dir: Path, command: str, experts: str | None, plugins: Iterable[str]) -> None:
    """A new run's ``invocation.json``: the starting command, its store, its first entry."""
    record = {"command": command, "experts": experts, "invocations": [invocation_entry(command, plugins)]}
    atomic_write_json(Path(run_dir) / FILE, record)


def append_record(run_dir: Path, command: str, plugins: Iterable[str]) -> None:
    """Add this process's entry to ``invocation.json`` (created, without a starting command, if absent)."""
    path = Path(run_dir) / FILE
    record = read_json(path, ConfigError, "") if path.exists() else {}
    if not isinstance(record, dict):
        raise ConfigError(f"{path} does not hold a JSON object", hint="restore it, or start a new run")
    earlier = record.get("invocations")
    entries = earlier if isinstance(earlier, list) else []
    atomic_write_json(path, {**record, "invocations": [*entries, invocation_entry(command, plugins)]})
