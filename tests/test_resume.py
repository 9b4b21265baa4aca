"""Checkpoints and --resume: a distillation killed with SIGKILL and resumed ends bit-identical."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY
from typer.testing import CliRunner

from distillkit.artifacts import load_synthetic
from distillkit.checkpoint import checkpoint_dir, load_latest_checkpoint
from distillkit.cli import app

runner = CliRunner()
ITERATIONS = 12


def _sets(**changes: object) -> list[str]:
    """TINY with some ``distill.*`` keys replaced (``--set`` refuses a key given twice)."""
    values = dict(item.split("=", 1) for item in TINY[1::2])
    values |= {f"distill.{k}": str(v) for k, v in changes.items()}
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


DISTILL = _sets(iterations=ITERATIONS, checkpoint_every=1, lr_img=1000)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store") / "experts"
    result = runner.invoke(app, ["experts", *TINY, "--out", str(root), "--quiet"])
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture(scope="module")
def reference(store, tmp_path_factory) -> Path:
    """One uninterrupted run, the yardstick of every resumed one."""
    out = tmp_path_factory.mktemp("reference") / "run"
    _distill(store, out)
    return out


def _distill(store: Path, out: Path, sets: list[str] = DISTILL) -> None:
    result = runner.invoke(app, ["distill", "--experts", str(store), *sets, "--out", str(out)])
    assert result.exit_code == 0, result.output


def _same_set(a: Path, b: Path) -> None:
    images_a, labels_a, lr_a, _, _ = load_synthetic(a)
    images_b, labels_b, lr_b, _, _ = load_synthetic(b)
    assert torch.equal(images_a, images_b)
    assert torch.equal(labels_a, labels_b)
    assert lr_a == lr_b


def _metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def _wait_for_checkpoint(run_dir: Path, iteration: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    wanted = checkpoint_dir(run_dir) / f"ckpt-{iteration:06d}.json"
    deadline = time.monotonic() + timeout
    while not wanted.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.005)


def _start(store: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "distillkit", "distill", "--experts", str(store), *DISTILL]
    cmd += ["--out", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=os.environ)


def test_sigkill_then_resume_gives_the_same_bytes(store, reference, tmp_path):

    killed = tmp_path / "killed"
    proc = _start(store, killed)
    rng = random.Random(os.getpid())
    _wait_for_checkpoint(killed, rng.randint(1, ITERATIONS // 2), proc)
    time.sleep(rng.uniform(0, 0.05))  # somewhere inside a later iteration or checkpoint write
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (killed / "synthetic.safetensors").exists()

    result = runner.invoke(app, ["distill", "--resume", str(killed)])
    assert result.exit_code == 0, result.output
    _same_set(reference, killed)
    assert _metrics(reference) == _metrics(killed)


def test_sigterm_checkpoints_and_exits_130_then_resumes(store, reference, tmp_path):
    stopped = tmp_path / "stopped"
    proc = _start(store, stopped)
    _wait_for_checkpoint(stopped, 3, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait() == 130
    assert "--resume" in proc.stderr.read()
    checkpoint, skipped = load_latest_checkpoint(stopped)
    assert checkpoint is not None and not skipped
    assert checkpoint.iteration < ITERATIONS

    result = runner.invoke(app, ["distill", "--resume", str(stopped)])
    assert result.exit_code == 0, result.output
    _same_set(reference, stopped)


def test_resume_skips_a_corrupt_newest_checkpoint(store, reference, tmp_path):
    run_dir = tmp_path / "run"
    _distill(store, run_dir, _sets(iterations=ITERATIONS // 2, checkpoint_every=1, lr_img=1000))
    # Pretend the run was cut short: continue to the full length from a damaged newest checkpoint.
    config = json.loads((run_dir / "config.json").read_text())
    config["distill"]["iterations"] = ITERATIONS
    (run_dir / "config.json").write_text(json.dumps(config))
    for name in ("synthetic.json", "synthetic.safetensors"):  # a run cut short has no set yet
        (run_dir / name).unlink()
    newest = sorted(checkpoint_dir(run_dir).glob("*.safetensors"))[-1]
    data = bytearray(newest.read_bytes())
    data[-1] ^= 0xFF
    newest.write_bytes(bytes(data))

    result = runner.invoke(app, ["distill", "--resume", str(run_dir)])
    assert result.exit_code == 0, result.output
    _same_set(reference, run_dir)


def test_resume_refuses_config_options_and_non_run_dirs(store, tmp_path):
    result = runner.invoke(app, ["distill", "--resume", str(tmp_path), "--set", "distill.ipc=2"])
    assert result.exit_code == 2
    assert "--resume" in result.output
    result = runner.invoke(app, ["run", "--resume", str(tmp_path)])
    assert result.exit_code == 2
    assert "not a resumable run directory" in " ".join(result.output.split())
