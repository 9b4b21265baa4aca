"""examples/benchmarks/compare_trees.py: what it refuses before running any job (one line, exit 2),
the order of its jobs, and which of them run under conv_profile.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "examples" / "benchmarks"
SCRIPT = BENCHMARKS / "compare_trees.py"


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


def test_profiling_wraps_the_candidates_jobs_only(tmp_path: Path) -> None:
    """The candidate's failing expert job ran under conv_profile.py (its JSON holds the exit code);
    the baseline's, whose times are the bound's denominator, ran as it is."""
    args = ("--baseline", str(ROOT), "--stages", "experts", "--data", str(tmp_path / "no-data"))
    first = _run(*args, "--profile-convolutions", "--candidate-first", out=tmp_path / "candidate-first")
    assert first.returncode == 1 and "candidate-experts" in first.stderr
    profiles = tmp_path / "candidate-first" / "profiles"
    assert [p.name for p in profiles.iterdir()] == ["candidate-experts.json"]
    profiled = json.loads((profiles / "candidate-experts.json").read_text())
    assert profiled["exit_code"] != 0 and profiled["command"][:2] == ["-m", "distillkit"]
    baseline = _run(*args, "--profile-convolutions", out=tmp_path / "baseline-first")
    assert baseline.returncode == 1 and "baseline-experts" in baseline.stderr
    assert not (tmp_path / "baseline-first" / "profiles").exists()


def test_the_bound_is_the_candidates_convolutions_over_the_baselines_time() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import compare_trees
    finally:
        sys.path.remove(str(BENCHMARKS))
    stages = {
        "experts": {"baseline": {"s_per_epoch": 60.0}, "candidate": {"s_per_epoch": 40.0, "conv_s": 27.0}},
        "distill-ipc10": {"baseline": {"s_per_iter": 5.0}, "candidate": {"s_per_iter": 4.0, "conv_s": 2.5}},
        "evaluate": {"baseline": {"wall_s": 300.0}, "candidate": {"wall_s": 200.0}},  # not profiled
        "run": {"baseline": {"wall_s": 3000.0}, "candidate": {"wall_s": 2000.0, "conv_s": 1200.0}},
    }
    lines = compare_trees.convolution_lines(stages)
    assert [line.split(":")[0] for line in lines] == ["experts", "distill-ipc10", "run"]
    assert [line.rsplit("bound ", 1)[1] for line in lines] == ["0.45x", "0.50x", "0.40x"]
