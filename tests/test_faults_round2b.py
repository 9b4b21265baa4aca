"""Round two, continued: signals, non-JSON plugin state, damaged manifests, decompression bombs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import ClassVar

import pytest
from conftest import TINY

import distillkit
from distillkit import api
from distillkit.errors import DataError, PluginRuntimeError, StoreError
from distillkit.experts.store import StoreManifest
from distillkit.hookspecs import hookimpl


def start(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = os.environ | {"DISTILLKIT_CACHE": str(tmp_path / "cache"), "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "distillkit", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(folder: Path, pattern: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not any(folder.glob(pattern)):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, f"{pattern} never appeared"
        time.sleep(0.05)


def with_epochs(epochs: int) -> list[str]:
    """TINY with longer experts."""
    return [f"experts.epochs={epochs}" if arg == "experts.epochs=4" else arg for arg in TINY]


def test_sigterm_stops_expert_training_like_ctrl_c(tmp_path):
    proc = start(tmp_path, "experts", "--out", "store", "--quiet", *with_epochs(100_000))
    wait_for(tmp_path / "store", "*.partial.*", proc)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Interrupted" in err and "Traceback" not in err
    assert not list((tmp_path / "store").glob("*.tmp"))


def test_sigterm_mid_distillation_says_it_is_stopping_and_checkpoints(tmp_path):
    argv = ["run", "--out", "run", *[a.replace("iterations=4", "iterations=1000000") for a in TINY]]
    proc = start(tmp_path, *argv)
    wait_for(tmp_path / "run", "metrics.jsonl", proc)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Stopping" in err and "Traceback" not in err
    assert list((tmp_path / "run" / "checkpoints").glob("ckpt-*.json"))


class NotJsonState:
    name: ClassVar[str] = "not-json-state"

    @hookimpl
    def inner_loss_weight(self, run, ctx):
        return 1.0

    def state_dict(self):
        return {"seen": {1, 2}}

    def load_state_dict(self, state):
        pass


def test_a_state_dict_that_is_not_json_is_a_plugin_error_before_any_checkpoint(tmp_path):
    tiny = {
        "experts.count": 1, "experts.epochs": 3, "distill.max_start_epoch": 1, "distill.syn_steps": 3,
        "distill.iterations": 2, "evaluate.runs": 1, "evaluate.epochs": 2,
    }  # fmt: skip
    config, host = distillkit.resolve_config(overrides=tiny, extra_plugins=[NotJsonState()])
    with pytest.raises(PluginRuntimeError, match=r"plugin 'not-json-state': state_dict\(\) must return JSON"):
        api.run(config, host, tmp_path / "run")
    assert not list((tmp_path / "run").rglob("ckpt-*"))


@pytest.mark.parametrize("where", ["key", "entry"])
def test_a_manifest_announcing_too_many_epochs_is_refused(tmp_path, where):
    entry = {"index": 0, "file": "expert_000.safetensors", "sha256": "0" * 64, "epochs": 4}
    raw = {"format_version": 1, "key": {"epochs": 4}, "experts": [entry]}
    (raw["key"] if where == "key" else entry)["epochs"] = 10**12
    with pytest.raises(StoreError, match=r"epochs|malformed expert entry"):
        StoreManifest.from_json(json.loads(json.dumps(raw)), tmp_path / "manifest.json")


def test_stored_epochs_beyond_the_trained_ones_are_refused(tmp_path):
    entry = {"index": 0, "file": "e.safetensors", "sha256": "0", "epochs": 4, "stored_epochs": [0, 9]}
    with pytest.raises(StoreError, match="malformed expert entry"):
        StoreManifest.from_json({"format_version": 1, "key": {}, "experts": [entry]}, tmp_path / "m.json")


def test_a_decompression_bomb_is_bad_input_without_a_warning(tmp_path):
    from PIL import Image

    from distillkit.data.images import open_image

    path = tmp_path / "huge.png"
    Image.new("1", (10_000, 10_000)).save(path)  # 100 megapixels: above PIL's warning limit
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DataError, match="too large to decode safely"):
            open_image(path)
    assert not caught
