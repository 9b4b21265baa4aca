"""Reliability, round two: nothing a user had is lost, nothing silently wrong is reported as success."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY, invoke, one_line_error

from distillkit.artifacts import save_synthetic


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("done") / "run"
    result = invoke("run", *TINY, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def done(finished, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy, ignore=shutil.ignore_patterns(".lock"))
    return copy


def test_overwrite_that_fails_on_bad_input_keeps_the_old_run(done):
    before = {p.name: digest(p) for p in done.iterdir() if p.is_file()}
    result = invoke("run", *TINY, "--out", done, "--overwrite", "--ipc", "99999", "--quiet")
    one_line_error(result, 2, "ipc=99999")
    assert {p.name: digest(p) for p in done.iterdir() if p.is_file() and p.name != ".lock"} == {
        k: v for k, v in before.items() if k != ".lock"
    }
    assert (
        invoke(
            "evaluate", done, "--set", "evaluate.runs=1", "--set", "evaluate.epochs=2", "--quiet"
        ).exit_code
        == 0
    )


def test_resume_on_a_finished_run_refuses_and_rewrites_nothing(done):
    before = {name: digest(done / name) for name in ("results.json", "run.json", "synthetic.json")}
    result = invoke("run", "--resume", done, "--quiet")
    one_line_error(result, 2, "nothing to resume")
    assert {name: digest(done / name) for name in before} == before


def test_resume_with_a_shortened_metrics_log_refuses_and_pads_nothing(done):
    (done / "results.json").unlink()  # an unfinished run again
    metrics = done / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes()[:10])
    result = invoke("run", "--resume", done, "--quiet")
    one_line_error(result, 2, "the run log was shortened")
    assert b"\x00" not in metrics.read_bytes() and len(metrics.read_bytes()) == 10


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("evaluate.lr_decay_factor", "-1"),
        ("evaluate.momentum_after_decay", "5"),
        ("evaluate.momentum", "1.5"),
        ("distill.student_momentum", "1"),
    ],
)
def test_out_of_range_protocol_values_are_refused(tmp_path, key, value):
    result = invoke("run", *TINY, "--set", f"{key}={value}", "--out", tmp_path / "r", "--quiet")
    one_line_error(result, 2, key)
    assert not (tmp_path / "r").exists()


def test_a_synthetic_set_naming_another_dataset_is_refused(done):
    images = torch.randn(10, 1, 8, 8)
    save_synthetic(done, images, torch.arange(10), 0.01, {"dataset": "fashion-mnist"})
    result = invoke("evaluate", done, "--quiet")
    one_line_error(result, 2, "distilled from fashion-mnist")


def test_distill_from_a_store_still_in_training_is_refused(finished, tmp_path):
    recorded = json.loads((finished / "invocation.json").read_text())
    store = Path(json.loads((finished / "results.json").read_text())["expert_store"])
    assert recorded["command"] == "run"
    fd = os.open(store / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what a trainer in another process holds
        result = invoke("distill", "--experts", store, *TINY, "--out", tmp_path / "d", "--quiet")
    finally:
        os.close(fd)
    one_line_error(result, 2, "still being trained by another process")
    assert not (tmp_path / "d").exists()
    again = invoke("distill", "--experts", store, *TINY, "--out", tmp_path / "d", "--quiet")
    assert again.exit_code == 0, again.output


def test_a_cache_that_is_a_file_is_one_line_and_leaves_no_run_dir(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.write_text("not a folder")
    monkeypatch.setenv("DISTILLKIT_CACHE", str(cache))
    result = invoke("run", *TINY, "--out", tmp_path / "r", "--quiet")
    one_line_error(result, 2, "Not a directory")
    assert not (tmp_path / "r").exists() and cache.read_text() == "not a folder"


def test_a_read_only_output_location_is_one_line(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        result = invoke("run", *TINY, "--out", parent / "r", "--quiet")
    finally:
        parent.chmod(0o700)
    one_line_error(result, 2, "ermission denied")


@pytest.mark.parametrize("out", ["/", "user-folder"])
def test_a_non_empty_folder_that_is_no_run_is_never_written_into(tmp_path, out):
    target = Path(out) if out == "/" else tmp_path / out
    if out != "/":
        target.mkdir()
        (target / "thesis.tex").write_text("mine")
    before = sorted(p.name for p in target.iterdir())
    result = invoke("run", *TINY, "--out", target, "--overwrite", "--quiet")
    one_line_error(result, 2, "holds no distillkit run")
    assert sorted(p.name for p in target.iterdir()) == before


def test_a_config_that_never_ends_is_refused(tmp_path):
    result = invoke("run", "--config", "/dev/zero", "--out", tmp_path / "r")
    one_line_error(result, 2, "larger than 1 MiB")


@pytest.mark.parametrize("device", ["mps", "meta", "tpu", "cuda:abc"])
def test_unsupported_devices_are_one_line(tmp_path, device):
    result = invoke("run", *TINY, "--device", device, "--out", tmp_path / "r", "--quiet")
    assert result.exit_code == 2 and "device" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()
