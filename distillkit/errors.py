"""Typed errors shown to users; only ``distillkit.cli`` turns them into exit codes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit statuses of the ``distillkit`` command (public, stable)."""

    OK = 0
    RUN_FAILED = 1
    USAGE_ERROR = 2
    PLUGIN_ERROR = 3
    INTERRUPTED = 130


class DistillkitError(Exception):
    """Base class: the message is a complete sentence for the user; ``hint`` says how to fix it."""

    exit_code: ExitCode = ExitCode.RUN_FAILED

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class ConfigError(DistillkitError):
    """Bad configuration: unknown key, wrong type, out-of-range value, unknown preset."""

    exit_code = ExitCode.USAGE_ERROR


class DataError(DistillkitError):
    """A dataset that cannot be found or read, or that does not fit the run."""

    exit_code = ExitCode.USAGE_ERROR


class StoreError(DistillkitError):
    """A trajectory store or synthetic-set file that is missing, corrupt or mismatched."""

    exit_code = ExitCode.USAGE_ERROR


class PluginError(DistillkitError):
    """A plugin could not be found, loaded, combined with others, or failed while running."""

    exit_code = ExitCode.PLUGIN_ERROR


class UnknownPluginError(PluginError):
    """A name given to ``--plugins`` that no installed distribution provides."""

    exit_code = ExitCode.USAGE_ERROR


class PluginConflictError(PluginError):
    """Two selected plugins both claim an exclusive hook, or one name comes from two packages."""


class PluginRuntimeError(PluginError):
    """A hook implementation raised, or returned something that cannot be combined (exit 3)."""


class RunFailed(DistillkitError):
    """A run could not finish (for example the matching loss kept diverging)."""


class OutOfMemory(RunFailed):
    """The device ran out of memory; the hint names the settings that need less."""


#: What a failed allocation is raised as (CUDA's ``torch.OutOfMemoryError`` is a RuntimeError);
#: catch these, then ask :func:`out_of_memory`.
ALLOCATION_ERRORS = (RuntimeError, MemoryError)


def out_of_memory(exc: BaseException) -> bool:
    """A failed allocation: CUDA's (``torch.OutOfMemoryError``), the CPU allocator's (a RuntimeError)
    or Python's own (``MemoryError``)."""
    if isinstance(exc, MemoryError) or any(cls.__name__ == "OutOfMemoryError" for cls in type(exc).__mro__):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def memory_cause(exc: BaseException) -> str:
    """The allocator's own words, short: what it tried to allocate (and, on CUDA, what was free)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = text.split("err == 0. ", 1)[-1]  # the CPU allocator's "[enforce fail at ...]" prefix
    return text if len(text) <= 200 else text[:199] + "…"


@contextmanager
def failed_allocations(message: str, hint: str) -> Iterator[None]:
    """Re-raise a failed allocation in the block as :class:`OutOfMemory`: "message (the allocator's words)".

    The original's traceback is dropped first: its frames hold what the failed work allocated
    (a distillation step's graph), which is then freed at once, not when the error is handled.
    """
    try:
        yield
    except ALLOCATION_ERRORS as exc:
        if not out_of_memory(exc):
            raise
        exc.with_traceback(None)
        raise OutOfMemory(f"{message} ({memory_cause(exc)})", hint=hint) from None


class CollectiveError(RunFailed):
    """A collective across the ranks of a job failed or timed out: another rank died or hangs."""


class Interrupted(DistillkitError):
    """SIGINT/SIGTERM stopped a run after its state was checkpointed."""

    exit_code = ExitCode.INTERRUPTED


def os_error_exit_code(exc: OSError) -> ExitCode:
    """A full disk or an I/O failure stops a run (1); a bad location is bad input (2)."""
    import errno

    failed = (errno.ENOSPC, errno.EIO, errno.EDQUOT)
    return ExitCode.RUN_FAILED if exc.errno in failed else ExitCode.USAGE_ERROR
