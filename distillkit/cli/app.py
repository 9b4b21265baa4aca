"""The typer app, the two consoles, and how errors become one line and an exit code."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console

from distillkit.errors import DistillkitError, ExitCode, memory_cause, os_error_exit_code, out_of_memory
from distillkit.hostmemory import keep_freed_memory
from distillkit.processexit import skip_native_destructors

app = typer.Typer(
    name="distillkit",
    help="Dataset distillation by trajectory matching (MTT + AST techniques as plugins).",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console()


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        out.print(f"distillkit {version('distillkit')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_version, is_eager=True, metavar=""
        ),
    ] = False,
) -> None:
    """Dataset distillation by trajectory matching (MTT + AST techniques as plugins)."""


err = Console(stderr=True)
#: Out of memory outside the distillation loop (which names its own settings): expert training,
#: evaluation, initialisation.
MEMORY_HINT = (
    "lower the batch that failed (experts.batch_size, evaluate.batch_size, experts.pack_size; "
    "for distillation --memory constant); files written before are kept"
)


@contextmanager
def warning_lines(enabled: bool) -> Iterator[None]:
    """Show each Python warning as one ``Warning:`` line on stderr, as errors are shown.

    Python's own format names the file and line that called ``warnings.warn`` (for a plugin's
    warning, the hook caller inside distillkit) and repeats that source line; ``--debug`` keeps it.
    """
    import warnings

    def one_line(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
        kind = "" if category is UserWarning else f"{category.__name__}: "
        err.print(f"Warning: {kind}{message}", markup=False, highlight=False, soft_wrap=True)

    shown = warnings.showwarning
    if enabled:
        warnings.showwarning = one_line
    try:
        yield
    finally:
        warnings.showwarning = shown


@contextmanager
def cli_errors(debug: bool) -> Iterator[None]:
    """Map errors to one stderr line (+ hint) and the documented exit codes.

    In a ``torch.distributed`` job the line names the rank, and is left to the launcher
    when ``--nproc`` started the job (:func:`distillkit.cli.launch.worker_error`).
    """
    debug = debug or os.environ.get("DISTILLKIT_DEBUG") == "1"
    try:
        with warning_lines(enabled=not debug):
            yield
    except DistillkitError as exc:
        _fail(exc, str(exc), exc.hint, exc.exit_code, debug)
    except KeyboardInterrupt as exc:
        _fail(exc, "Interrupted.", None, ExitCode.INTERRUPTED, debug=False, plain=True)
    except typer.Exit:
        raise
    except OSError as exc:  # the environment: a full disk, a read-only or missing location, a long name
        message, hint, code = describe_os_error(exc)
        _fail(exc, message, hint, code, debug)
    except BaseException as exc:  # also what compiled extensions raise outside Exception (a Rust panic)
        if isinstance(exc, (SystemExit, GeneratorExit)):
            raise
        if out_of_memory(exc):
            _fail(exc, f"out of memory: {memory_cause(exc)}", MEMORY_HINT, ExitCode.RUN_FAILED, debug)
        message = f"internal error: {type(exc).__name__}: {exc}"
        _fail(exc, message, "rerun with --debug for the traceback and report it", ExitCode.RUN_FAILED, debug)


def _fail(
    exc: BaseException, message: str, hint: str | None, code: int, debug: bool, plain: bool = False
) -> None:
    """Print the error line (``plain``: without the ``Error:`` prefix) and its hint, then exit ``code``."""
    from rich.markup import escape

    from distillkit.cli.launch import leave_job, worker_error

    message, show = worker_error(message, hint, int(code), exc)
    if not show:
        leave_job(int(code))
    if show:
        if debug:
            err.print_exception()
        line = message if plain else f"[bold red]Error:[/] {escape(message)}"  # gloo names "[file:line]"
        err.print(line, highlight=False, markup=not plain, soft_wrap=True)
        if hint:
            err.print(f"Hint: {hint}", highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(int(code)) from None


def describe_os_error(exc: OSError) -> tuple[str, str, ExitCode]:
    """One line, a hint and an exit code for an operating-system error a user can fix."""
    import errno

    where = f": {exc.filename}" if exc.filename else ""
    what = exc.strerror or str(exc)
    hints = {
        errno.ENOSPC: (
            "free some space (or point --out / DISTILLKIT_CACHE elsewhere) and run again; "
            "files written before are kept, and an interrupted run resumes with --resume"
        ),
        errno.EROFS: "choose a writable location (--out, --experts, DISTILLKIT_CACHE)",
        errno.EACCES: "choose a location you may write to (--out, --experts, DISTILLKIT_CACHE)",
        errno.ENOTDIR: "a path component is a file, not a folder (check --out, --experts, DISTILLKIT_CACHE)",
        errno.ENAMETOOLONG: "choose a shorter path or name",
        errno.ENOENT: "check that the path exists",
    }
    hint = hints.get(exc.errno or -1, "check the path and the disk, then run again")
    return f"{what}{where}", hint, os_error_exit_code(exc)


def terminate_like_interrupt() -> None:
    """Make SIGTERM (``kill``, SLURM, ``timeout``) stop a command exactly as Ctrl-C does.

    Outside distillation (which checkpoints on either signal) this means the same message,
    the same exit code 130 and the same kept files: finished experts, a run's checkpoints.
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def main() -> None:
    """Console-script entry point."""
    terminate_like_interrupt()
    keep_freed_memory()
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(int(ExitCode.INTERRUPTED))
    finally:
        # Past the command nothing is left to save: a SIGTERM during interpreter shutdown (a job's
        # launcher stopping its ranks) ends the process instead of raising into atexit handlers.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if "torch" in sys.modules:  # its CUDA libraries' exit-time destructors page in ≈ 117 MiB
            skip_native_destructors()
