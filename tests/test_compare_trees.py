"""examples/benchmarks/compare_trees.py: what it refuses before running any job (one line, exit 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "benchmarks" / "compare_trees.py"


def _run(*args: str, out: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPT), *args, "--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_a_baseline_that_is_not_a_work_tree_is_one_line(tmp_path: Path) -> None:
    done = _run("--baseline", str(tmp_path), out=tmp_path / "out")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "not a distillkit work tree" in done.stderr
    assert not (tmp_path / "out").exists()  # nothing ran, nothing written


def test_fewer_than_two_expert_epochs_cannot_be_matched(tmp_path: Path) -> None:
    done = _run("--baseline", str(ROOT), "--expert-epochs", "1", out=tmp_path / "out")
    assert done.returncode == 2 and "at least 2" in done.stderr


def test_an_unknown_stage_is_one_line(tmp_path: Path) -> None:
    done = _run("--baseline", str(ROOT), "--stages", "experts,whole", out=tmp_path / "out")
    assert done.returncode == 2 and "unknown stage whole" in done.stderr
    assert not (tmp_path / "out").exists()


def test_candidate_first_runs_the_candidate_first(tmp_path: Path) -> None:
    """With --candidate-first the first job is the candidate's: here it fails first, on missing data."""
    args = ("--baseline", str(ROOT), "--stages", "experts", "--data", str(tmp_path / "no-data"))
    for flag, first in (("--candidate-first", "candidate-experts"), (None, "baseline-experts")):
        done = _run(*args, *([flag] if flag else []), out=tmp_path / f"out-{first}")
        assert done.returncode == 1 and first in done.stderr
