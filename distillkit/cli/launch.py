"""``--nproc N``: the same command as a ``torch.distributed`` job of N local processes.

The job is started by torch's elastic launcher API (:mod:`torch.distributed.launcher.api`, what
``torchrun`` runs) with a c10d rendezvous on localhost, so ``distillkit experts --nproc 2 …``
and ``torchrun --standalone --nproc-per-node 2 -m distillkit experts …`` start the same job.
Each worker gets ``OMP_NUM_THREADS`` = usable cores // N (at least 1) unless it is set already.
Rank 0 keeps the terminal; the other ranks' output goes to files under a temporary folder,
kept (and named) only when the job fails.

A worker that fails records its one-line error in torchrun's error file
(``TORCHELASTIC_ERROR_FILE``); the launcher turns the first real failure into one
``Error: rank R: …`` line and the worker's exit code. Collective failures that merely follow
another rank's death (:class:`~distillkit.errors.CollectiveError`) are reported only when no
rank failed on its own. Outside this launcher (plain ``torchrun``) workers print their error
themselves, prefixed with their rank.

Torch-free until a job starts: ``cli_errors`` calls :func:`worker_error` on every failure.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from distillkit.errors import CollectiveError, DistillkitError, ExitCode, RunFailed

if TYPE_CHECKING:
    from distillkit.distributed import World

#: Set for the workers of :func:`relaunch`: they leave error reporting to the launcher.
LAUNCHED_ENV = "DISTILLKIT_LAUNCHED"

Nproc = Annotated[
    int,
    typer.Option(
        "--nproc",
        min=1,
        help="Run as a torch.distributed job of N local processes (torchrun's launcher; "
        "OMP_NUM_THREADS defaults to cores/N each). docs/distributed.md",
    ),
]


MaxRestarts = Annotated[
    int,
    typer.Option(
        "--max-restarts",
        min=0,
        help="With --nproc: restart the whole job this many times after a rank fails "
        "(torchrun's --max-restarts); a restarted run resumes from its last checkpoint (needs --out).",
    ),
]


def job_rank() -> int | None:
    """This process's rank when it belongs to a job of several processes, else None."""
    if int(os.environ.get("WORLD_SIZE", "1") or "1") <= 1:
        return None
    return int(os.environ.get("RANK", "0") or "0")


def will_relaunch(nproc: int) -> bool:
    """Whether :func:`relaunch` starts a job (so this process will not run the command itself)."""
    return nproc > 1 and job_rank() is None


def threads_per_process(nproc: int) -> int:
    """Usable cores shared out over ``nproc`` processes, at least one each."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // nproc)


def worker_argv(ctx: typer.Context) -> list[str]:
    """The command line of ``ctx``'s command as the user gave it, without ``--nproc``.

    Parameters and their sources are told apart by name, not by Click's classes: Typer ≥ 0.16
    carries its own copy of Click, whose classes are not those of a ``click`` package installed
    beside it (nor need one be installed).
    """
    argv = [ctx.info_name or ""]
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        source = ctx.get_parameter_source(param.name or "")
        if param.name == "nproc" or value is None or source is None or source.name == "DEFAULT":
            continue
        values = list(value) if isinstance(value, list | tuple) else [value]
        if param.param_type_name == "argument":
            argv += [str(v) for v in values]
        elif getattr(param, "is_flag", False):
            names = param.opts if value else param.secondary_opts
            argv += names[:1]
        else:
            for item in values:
                argv += [param.opts[0], str(item)]
    return argv


def relaunch(ctx: typer.Context, nproc: int, max_restarts: int = 0, log_dir: Path | None = None) -> bool:
    """Run ``ctx``'s command as a job of ``nproc`` local ranks; False when this process should run it.

    False for ``nproc == 1`` and inside a job already (a worker of this very launch, or of
    ``torchrun``). True once every rank finished; a failed rank raises the error described
    in the module docstring. ``max_restarts`` is torchrun's ``--max-restarts``.
    """
    if not will_relaunch(nproc):
        return False
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    logs = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="distillkit-ranks-"))
    quiet_ranks = {rank: Std.ALL for rank in range(1, nproc)}
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=max_restarts,
        monitor_interval=0.1,
        start_method="spawn",
        logs_specs=DefaultLogsSpecs(log_dir=str(logs), redirects=quiet_ranks),
    )
    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_process(nproc)))
    os.environ[LAUNCHED_ENV] = "1"
    logging.getLogger("torch.distributed").setLevel(logging.CRITICAL)  # the failure is our one line
    try:
        elastic_launch(config, sys.executable)("-m", "distillkit", *worker_argv(ctx))
    except ChildFailedError as exc:
        raise _first_failure(exc.failures, logs) from None
    except SignalException:
        raise KeyboardInterrupt from None
    finally:
        os.environ.pop(LAUNCHED_ENV, None)
    if log_dir is None:
        shutil.rmtree(logs, ignore_errors=True)
    return True


@contextlib.contextmanager
def joined_world(device: str) -> Iterator[World]:
    """This process's :class:`~distillkit.distributed.World` for a command's body, left at the end.

    After a body that ended normally the ranks settle (:meth:`~distillkit.distributed.World.settle`)
    first, so rank-0-only work (printing, reports) belongs after the block, not in it.
    """
    from distillkit.distributed import join_world, leave_world

    world = join_world(device=device)
    try:
        yield world
        world.settle()
    finally:
        leave_world(world)


def _first_failure(failures: dict[int, Any], logs: Path) -> DistillkitError:
    """The error to report for a failed job: the earliest rank that failed on its own."""

    def recorded(failure: Any) -> dict[str, Any]:
        data = failure.error_file_data if isinstance(failure.error_file_data, dict) else {}
        return data.get("distillkit", {}) if isinstance(data.get("distillkit"), dict) else {}

    def order(rank: int) -> tuple[bool, float, int]:
        # Followers sort last: a rank whose collective failed because a peer died, and a rank the
        # launcher itself stopped with SIGTERM once another failed (whole-second timestamps
        # cannot order those against the rank that crashed first).
        failure, info = failures[rank], recorded(failures[rank])
        stopped = not info and failure.exitcode == -signal.SIGTERM
        return bool(info.get("secondary")) or stopped, float(info.get("time", failure.timestamp)), rank

    rank = min(failures, key=order)
    failure, info = failures[rank], recorded(failures[rank])
    if info:
        error = RunFailed(str(failure.message), hint=info.get("hint"))
        code = info.get("exit_code", int(ExitCode.RUN_FAILED))
    else:
        how = f"signal {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
        error = RunFailed(
            f"rank {rank} (pid {failure.pid}) died: {how}",
            hint=f"the other ranks were stopped; rank logs: {logs}",
        )
        code = int(ExitCode.RUN_FAILED)
    error.exit_code = ExitCode(code) if code in {int(c) for c in ExitCode} else ExitCode.RUN_FAILED
    return error


def worker_error(message: str, hint: str | None, exit_code: int, exc: BaseException) -> tuple[str, bool]:
    """In a job: record the error for the launcher; the message to print and whether to print it.

    The message names the rank. Workers of :func:`relaunch` print nothing (the launcher
    reports); outside a job this changes nothing.
    """
    rank = job_rank()
    if rank is None:
        return message, True
    if not message.startswith(f"rank {rank}:"):
        message = f"rank {rank}: {message}"
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        extra = {"hint": hint, "exit_code": exit_code, "time": time.time()}
        extra["secondary"] = isinstance(exc, CollectiveError | KeyboardInterrupt)
        record = {"message": message, "timestamp": int(time.time()), "distillkit": extra}
        with contextlib.suppress(OSError):  # unwritable: the launcher reports the exit code instead
            Path(path).write_text(json.dumps(record), encoding="utf-8")
    return message, os.environ.get(LAUNCHED_ENV) != "1"


def leave_job(code: int) -> NoReturn:
    """End a failed worker of :func:`relaunch` now, with ``code``, once its streams are flushed.

    The launcher reports the failure from the error file :func:`worker_error` wrote. A normal
    interpreter exit would first run C++ destructors, and a collective's thread still running
    then makes the runtime print "terminate called without an active exception" on the
    console ahead of the launcher's one line; ``os._exit`` skips that teardown.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
