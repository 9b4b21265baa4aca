"""Which failed rank ``--nproc`` reports: the one that failed first on its own, not its followers."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from distillkit.cli.launch import _first_failure
from distillkit.errors import ExitCode


def _failure(tmp_path: Path, rank: int, exitcode: int, record: dict | None = None) -> ProcessFailure:
    """torch's own record of a dead worker, with distillkit's error file when ``record`` is given."""
    error_file = tmp_path / f"error-{rank}.json"
    if record is not None:
        error_file.write_text(json.dumps(record), encoding="utf-8")
    return ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=exitcode, error_file=str(error_file))


def test_a_crashed_rank_is_reported_before_the_rank_the_launcher_stopped(tmp_path: Path) -> None:
    # Rank 1 aborts (no error file); the launcher then stops rank 0 with SIGTERM within the same second.
    failures = {0: _failure(tmp_path, 0, -signal.SIGTERM), 1: _failure(tmp_path, 1, -signal.SIGABRT)}
    error = _first_failure(failures, tmp_path)
    assert str(error).startswith("rank 1 (pid 1001) died: signal SIGABRT")
    assert error.exit_code == ExitCode.RUN_FAILED


def test_a_rank_that_recorded_its_own_error_comes_before_followers(tmp_path: Path) -> None:
    own = {"message": "rank 1: disk full", "timestamp": 5, "distillkit": {"exit_code": 2, "time": 5.5}}
    follower = {
        "message": "rank 0: all_reduce failed",
        "timestamp": 5,
        "distillkit": {"exit_code": 1, "time": 5.1, "secondary": True},
    }
    failures = {0: _failure(tmp_path, 0, 1, follower), 1: _failure(tmp_path, 1, 2, own)}
    error = _first_failure(failures, tmp_path)
    assert str(error) == "rank 1: disk full" and error.exit_code == ExitCode(2)


@pytest.mark.parametrize("code", [-signal.SIGTERM, 3])
def test_a_lone_failure_is_reported_whatever_it_was(tmp_path: Path, code: int) -> None:
    error = _first_failure({0: _failure(tmp_path, 0, code)}, tmp_path)
    assert str(error).startswith("rank 0 (pid 1000) died: ")
