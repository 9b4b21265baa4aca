"""examples/interop/train_mtt_set.py: a torch-only trainer for `distillkit export --format mtt` sets."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, invoke

from distillkit.artifacts import load_synthetic
from distillkit.data import load_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "interop" / "train_mtt_set.py"
#: Runs the script as ``python SCRIPT ...`` would, with distillkit made unimportable.
WITHOUT_DISTILLKIT = (
    "import runpy, sys; sys.modules['distillkit'] = None; sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


def test_the_script_trains_on_an_exported_digits_set_without_distillkit(tmp_path):
    run_dir, mtt, npz = tmp_path / "run", tmp_path / "mtt", tmp_path / "digits-test.npz"
    no_evaluation = ["evaluate.runs=0" if arg == "evaluate.runs=2" else arg for arg in TINY]
    small = ["--set", "model.name=convnet-w8-d1", "--set", "data.augment=none"]
    result = invoke("run", *no_evaluation, *small, "--out", run_dir, "--quiet")
    assert result.exit_code == 0, result.output
    result = invoke("export", run_dir, "--format", "mtt", "--out", mtt)
    assert result.exit_code == 0, result.output
    digits = load_dataset("digits")  # the docstring's recipe for the test split
    np.savez(npz, images=digits.test_images[:].numpy(), labels=digits.test_labels.numpy())

    args = [SCRIPT, mtt, "--test", npz, "--model", "convnet-w8-d1", "--epochs", "2", "--runs", "2"]
    args += ["--augment", "color_crop_cutout_scale_rotate", "--device", "cpu", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_DISTILLKIT, *map(str, args)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    _images, _labels, lr, _meta, _extra = load_synthetic(run_dir)
    assert report["images"] == 10 and report["lr"] == np.float32(lr)
    assert len(report["runs"]) == 2 and all(0 <= acc <= 1 for acc in report["runs"])
    assert report["mean"] == sum(report["runs"]) / 2 and report["runs"][0] != report["runs"][1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--test", "cifar10"], "--test takes fashion-mnist, mnist or a FILE.npz, got 'cifar10'"),
        (["--test", "absent.npz"], "absent.npz is missing"),
        (["--test", "digits.npz"], "digits.npz is not an .npz of 'images' and 'labels'"),
        (["--test", "mnist", "--data-dir", "."], "holds no t10k-images-idx3-ubyte"),
    ],
)
def test_bad_input_is_one_line(tmp_path, monkeypatch, args, message):
    (tmp_path / "digits.npz").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), str(tmp_path), *args])
    with pytest.raises(SystemExit) as stopped:  # what `python SCRIPT ...` prints, and exit status 1
        runpy.run_path(str(SCRIPT), run_name="__main__")
    text = str(stopped.value.code)
    assert text.startswith("error: ") and message in text and "\n" not in text
