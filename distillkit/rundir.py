"""Run directories: where a run writes, who may write there, and what a failed start leaves behind.

A run directory belongs to one process at a time. :func:`lock_run_dir` takes an
exclusive, non-blocking ``flock`` on ``RUN_DIR/.lock`` and keeps it until the
process exits; the kernel drops it when the process dies however it dies, so a
crashed or killed run never leaves a stale lock. A second writer is refused with
a one-line :class:`ConfigError` naming the directory and the holder's pid.
Where ``fcntl`` (or ``flock`` on the file system) is unavailable, runs proceed
unlocked rather than not at all.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from distillkit.errors import ConfigError, DistillkitError, ExitCode, os_error_exit_code

if TYPE_CHECKING:
    from distillkit.config import RunConfig

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"
#: Files a run writes before any result; a directory holding only these has lost nothing.
SETUP_FILES = frozenset({LOCK_FILE, "config.json", "invocation.json"})
#: Entries meaning the directory holds a finished run, or one that got far enough to resume.
RESULT_FILES = ("results.json", "synthetic.safetensors")
PROGRESS_FILES = ("checkpoints", "metrics.jsonl")
#: errno values meaning "the file system cannot lock", as opposed to "someone holds the lock".
_NO_LOCKING = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}

# Locks this process holds (resolved dir -> fd), kept open for the process lifetime, and the
# directories it created itself (only those may be removed again by discard_on_bad_input).
_HELD: dict[str, int] = {}
_CREATED: set[str] = set()


def default_run_dir(config: RunConfig) -> Path:
    """``runs/<time>-<dataset>-ipc<k>``."""
    name = config.data.dataset.replace("imagefolder:", "").replace("/", "_").strip("_")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{name}-ipc{config.distill.ipc}"


def lock_run_dir(run_dir: Path) -> Path:
    """Hold an exclusive lock on ``run_dir`` until this process exits (re-entrant within it)."""
    run_dir = Path(run_dir)
    key = str(run_dir.resolve())
    if key in _HELD or fcntl is None:
        return run_dir
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigError(f"cannot lock run directory {run_dir}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if exc.errno in _NO_LOCKING:
            return run_dir
        raise ConfigError(
            f"{run_dir} is being written by another distillkit process (pid {holder})",
            hint="wait for it to finish, or choose another --out",
        ) from None
    try:  # the pid only names the holder in messages; a full disk must not stop the lock
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError:
        pass
    _HELD[key] = fd
    return run_dir


def being_trained(folder: Path) -> bool:
    """Whether another process holds ``folder/.lock`` right now (an expert store still in training)."""
    if fcntl is None or not (Path(folder) / LOCK_FILE).exists():
        return False
    try:
        fd = os.open(Path(folder) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno not in _NO_LOCKING
    finally:
        os.close(fd)
    return False


def written_elsewhere(run_dir: Path) -> bool:
    """Whether another process holds ``run_dir``'s lock now (a run still going); this one's is not."""
    return str(Path(run_dir).resolve()) not in _HELD and being_trained(run_dir)


@contextmanager
def exclusive(folder: Path, waiting: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold ``folder/.lock`` for the body, waiting for any other holder first.

    For expert stores: a second process training into the same store waits, then
    reuses every expert the first one finished, instead of racing on the same files.
    With ``waiting``, the wait polls instead of blocking and calls ``waiting()`` about
    once a second (rank 0 of a job keeps its other ranks, waiting on it, informed).
    """
    if fcntl is None:
        yield
        return
    fd = os.open(Path(folder) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if waiting is None else fcntl.LOCK_NB))
                break
            except OSError as exc:
                if exc.errno in _NO_LOCKING:
                    break
                if waiting is None or exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                    raise ConfigError(f"cannot lock {folder}: {exc.strerror}") from None
                waiting()
                time.sleep(1.0)
        yield
    finally:
        os.close(fd)


def _refuse_existing_run(out_dir: Path, overwrite: bool) -> None:
    markers = (*SETUP_FILES, *RESULT_FILES, *PROGRESS_FILES)
    foreign = out_dir.is_dir() and not any((out_dir / name).exists() for name in markers)
    if foreign and any(out_dir.iterdir()):  # a folder of the user's (or /): never write a run into it
        raise ConfigError(
            f"{out_dir} is not empty and holds no distillkit run",
            hint="choose a new or empty folder for --out",
        )
    if overwrite:
        return
    if any((out_dir / name).exists() for name in RESULT_FILES):
        raise ConfigError(f"{out_dir} already holds a run", hint="choose another --out or pass --overwrite")
    if any((out_dir / name).exists() for name in PROGRESS_FILES):
        raise ConfigError(
            f"{out_dir} holds an unfinished run",
            hint=f"continue it with --resume {out_dir}, choose another --out, or pass --overwrite",
        )


def refuse_finished(run_dir: Path) -> None:
    """``--resume`` on a finished run has nothing to do (unless it extends the run); it must not rewrite
    its results."""
    import json

    try:
        command = json.loads((Path(run_dir) / "invocation.json").read_text()).get("command")
    except (OSError, ValueError, AttributeError):
        return  # recorded_run reports a missing or unreadable record
    done = "results.json" if command == "run" else "synthetic.json"
    if (Path(run_dir) / done).exists():
        raise ConfigError(
            f"{run_dir} holds a finished run ({done}): there is nothing to resume",
            hint=f"evaluate it again with: distillkit evaluate {run_dir}, or extend it with "
            "--set distill.iterations=N (more than it ran)",
        )


def prepare_run_dir(out_dir: Path, overwrite: bool = False) -> Path:
    """Create and lock a run directory; refuse one holding another run, finished or not, unless overwrite.

    The existing-run check runs before anything is written (so a refused directory
    is left exactly as it was) and again once the lock is held (a run that finished
    in between is not overwritten either).
    """
    out_dir = Path(out_dir)
    _refuse_existing_run(out_dir, overwrite)
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create run directory {out_dir}: {exc.strerror}") from None
    if created:
        _CREATED.add(str(out_dir.resolve()))
    lock_run_dir(out_dir)
    _refuse_existing_run(out_dir, overwrite)
    return out_dir


def _release(run_dir: Path) -> None:
    fd = _HELD.pop(str(Path(run_dir).resolve()), None)
    if fd is not None:
        os.close(fd)


@contextmanager
def discard_on_bad_input(run_dir: Path) -> Iterator[None]:
    """Remove ``run_dir`` again if the body fails on bad input before writing any result.

    Only a directory this process created, still holding nothing but
    :data:`SETUP_FILES`, is removed, and only for a usage or plugin error (exit 2
    or 3: a missing dataset, an ipc larger than a class...) or an operating-system
    error (a full disk), so a mistyped option leaves no empty run behind while a run
    that got anywhere is always kept.
    """
    try:
        yield
    except (DistillkitError, OSError) as exc:
        run_dir = Path(run_dir)
        key = str(run_dir.resolve())
        code = os_error_exit_code(exc) if isinstance(exc, OSError) else exc.exit_code
        # bad input, or an environment fault (a full disk) hit before anything but setup files
        bad_input = code in (ExitCode.USAGE_ERROR, ExitCode.PLUGIN_ERROR) or isinstance(exc, OSError)
        if bad_input and key in _CREATED and run_dir.is_dir():
            entries = list(run_dir.iterdir())
            if all(p.is_file() and p.name in SETUP_FILES for p in entries):
                _release(run_dir)
                for path in entries:
                    path.unlink()
                run_dir.rmdir()
                _CREATED.discard(key)
        raise
