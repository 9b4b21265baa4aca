"""``distillkit run --nproc 2``: a killed rank ends the job in one line, and the run resumes or restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY, invoke, one_line_error

from distillkit.checkpoint import checkpoint_dir

ITERATIONS = 30


def _sets(**changes: object) -> list[str]:
    """TINY with some keys replaced (``--set`` refuses a key given twice)."""
    values = dict(item.split("=", 1) for item in TINY[1::2]) | {k: str(v) for k, v in changes.items()}
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


RUN = _sets(**{"distill.iterations": ITERATIONS, "distill.checkpoint_every": 2, "evaluate.runs": 1})


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store") / "experts"
    result = invoke("experts", *TINY, "--out", root, "--quiet")
    assert result.exit_code == 0, result.output
    return root


def _start(store: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "distillkit", "run", "--nproc", "2", "--experts", str(store), *RUN]
    cmd += ["--out", str(out), "--quiet", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def _rank_pid(rank: int, attempt: int = 0) -> int:
    """The pid of this test's worker of ``rank`` (found by its environment: this test's cache)."""
    marker = f"DISTILLKIT_CACHE={os.environ['DISTILLKIT_CACHE']}".encode()
    wanted = {marker, f"RANK={rank}".encode(), f"TORCHELASTIC_RESTART_COUNT={attempt}".encode()}
    for entry in Path("/proc").iterdir():
        try:
            environ = set((entry / "environ").read_bytes().split(b"\0"))
        except (OSError, ValueError):
            continue
        if wanted <= environ:
            return int(entry.name)
    raise AssertionError(f"no worker of rank {rank} found")


def _iterations(run_dir: Path) -> list[int]:
    return [json.loads(line)["iteration"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's pid through /proc")
def test_a_killed_rank_ends_the_job_in_one_line_and_resume_finishes_it(store, tmp_path):
    run_dir = tmp_path / "run"
    proc = _start(store, run_dir)
    _wait_for(checkpoint_dir(run_dir) / "ckpt-000004.json", proc)
    os.kill(_rank_pid(1), signal.SIGKILL)
    killed = time.monotonic()
    _, stderr = proc.communicate(timeout=60)
    assert time.monotonic() - killed < 60
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, stderr
    assert lines[0].startswith("Error: rank 1 (pid ") and "SIGKILL" in lines[0], stderr
    assert len(lines) == 2 and lines[1].startswith("Hint: ") and "Traceback" not in stderr
    assert not (run_dir / "results.json").exists()

    result = invoke("run", "--resume", run_dir, "--quiet")
    assert result.exit_code == 0, result.output
    assert _iterations(run_dir) == list(range(ITERATIONS))
    assert (run_dir / "results.json").exists()


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's pid through /proc")
def test_max_restarts_restarts_the_job_from_its_last_checkpoint(store, tmp_path):
    run_dir = tmp_path / "run"
    proc = _start(store, run_dir, "--max-restarts", "1")
    _wait_for(checkpoint_dir(run_dir) / "ckpt-000004.json", proc)
    os.kill(_rank_pid(1), signal.SIGKILL)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr
    assert _iterations(run_dir) == list(range(ITERATIONS))  # each iteration once: the restart resumed
    assert (run_dir / "results.json").exists()
    log = (run_dir / "logs" / "rank-1.log").read_text()  # rank 1 logs, rank 0 alone writes run files
    assert f"distill {ITERATIONS}/{ITERATIONS}" in log and f"resuming {run_dir} at iteration" in log


def test_a_job_that_may_restart_needs_out(store):
    result = invoke("run", "--nproc", "2", "--max-restarts", "1", "--experts", store, *RUN)
    one_line_error(result, 2, "needs --out RUN_DIR")
