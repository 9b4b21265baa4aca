"""The observer hooks of a command: ``on_metrics`` for every record, ``on_close`` once at the end.

Experiment trackers (TensorBoard, wandb, ...) are plugins implementing these hooks; the
core only hands them numbers it has already written to its own files. Observers get a
``RunContext`` of their own, so nothing they do can draw from a stage's random stream or
add to its metrics: with or without trackers a run gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from distillkit.context import CloseContext, MetricsContext, Stage
from distillkit.errors import Interrupted
from distillkit.hookcalls import notify
from distillkit.runtime import RunScope


class Observers:
    """Sends records to the observer hooks of one scope's plugins; a plugin that fails is dropped."""

    def __init__(self, scope: RunScope, run_dir: Path | None, warn: Callable[[str], None]) -> None:
        self.hook = scope.host.hook
        #: Over several ranks only rank 0 reports (the others' records are the same run's).
        self.silent = not scope.world.is_main
        self.run = scope.context("observers", out_dir=run_dir)
        self.run_dir = run_dir
        self.warn = warn
        #: plugin name → why it was dropped (recorded in ``run.json``).
        self.dropped: dict[str, str] = {}

    def metrics(
        self,
        stage: Stage,
        step: int,
        values: Mapping[str, Any],
        expert: int | None = None,
        subject: str = "",
    ) -> None:
        """One record of ``values``' numbers (anything else, bools and strings included, is left out)."""
        if self.silent:
            return
        numbers = {
            key: float(value)
            for key, value in values.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        ctx = MetricsContext(stage, step, numbers, self.run_dir, expert, subject)
        notify(self.hook, "on_metrics", self.dropped, self.warn, run=self.run, ctx=ctx)

    def close(self, status: Literal["finished", "failed", "interrupted"]) -> None:
        """``on_close`` for every observer, a dropped one too (so it can release what it holds)."""
        if self.silent:
            return
        failed: dict[str, str] = {}
        notify(self.hook, "on_close", failed, self.warn, run=self.run, ctx=CloseContext(self.run_dir, status))
        self.dropped.update({name: why for name, why in failed.items() if name not in self.dropped})


@contextmanager
def observing(
    scope: RunScope, run_dir: Path | None, warn: Callable[[str], None], given: Observers | None = None
) -> Iterator[Observers]:
    """``given`` as it is (its owner closes it), or new observers closed with the command's status."""
    if given is not None:
        yield given
        return
    observers = Observers(scope, run_dir, warn)
    status: Literal["finished", "failed", "interrupted"] = "failed"
    try:
        yield observers
        status = "finished"
    except (KeyboardInterrupt, Interrupted):
        status = "interrupted"
        raise
    finally:
        observers.close(status)


_NOT_VALUES = ("iteration", "terms", "rollbacks")


def distill_values(line: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers of one ``metrics.jsonl`` line as a record: terms as ``terms/<name>``, no step."""
    values = {k: float(v) if isinstance(v, bool) else v for k, v in line.items() if k not in _NOT_VALUES}
    values.update({f"terms/{name}": value for name, value in line.get("terms", {}).items()})
    return values
