"""examples/interop/train_mtt_set.py: a torch-only trainer for `distillkit export --format mtt` sets."""

from __future__ import annotations

import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, invoke

from distillkit.data import load_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "interop" / "train_mtt_set.py"
#: Runs the script as ``python SCRIPT ...`` would, with distillkit made unimportable.
WITHOUT_DISTILLKIT = (
    "import runpy, sys; sys.modules['distillkit'] = None; sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


def _tiny(**changes: str) -> list[str]:
    """conftest's TINY with some ``--set`` values changed."""
    return [next((f"{k}={v}" for k, v in changes.items() if arg.startswith(f"{k}=")), arg) for arg in TINY]


def test_the_script_gives_distillkits_networks_on_an_exported_digits_set(tmp_path, monkeypatch, capsys):
    """2 epochs × 2 networks: with --distillkit-seed every accuracy equals `distillkit run`'s evaluation."""
    run_dir, mtt, npz = tmp_path / "run", tmp_path / "mtt", tmp_path / "digits-test.npz"
    budget = [*_tiny(**{"evaluate.epochs": "2"}), "--set", "model.name=convnet-w8-d1"]
    result = invoke("run", *budget, "--out", run_dir, "--quiet")
    assert result.exit_code == 0, result.output
    result = invoke("export", run_dir, "--format", "mtt", "--out", mtt)
    assert result.exit_code == 0, result.output
    digits = load_dataset("digits")  # the docstring's recipe for the test split
    np.savez(npz, images=digits.test_images[:].numpy(), labels=digits.test_labels.numpy())

    args = [SCRIPT, mtt, "--test", npz, "--model", "convnet-w8-d1", "--epochs", "2", "--runs", "2"]
    args += ["--augment", "color_crop_cutout_scale_rotate", "--device", "cpu"]  # the digits preset's DSA
    threads = str(torch.get_num_threads())  # the same kernels as this process's evaluation
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_DISTILLKIT, *map(str, args), "--distillkit-seed", "0", "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    summary = json.loads((run_dir / "results.json").read_text())
    assert report["images"] == 10 and report["lr"] == np.float32(summary["learned_lr"])
    assert report["runs"] == summary["distilled"]["runs"]  # the same networks, bit for bit

    monkeypatch.setattr(sys, "argv", list(map(str, args)))  # own seeds 0, 1: other networks
    runpy.run_path(str(SCRIPT), run_name="__main__")
    line = capsys.readouterr().out.strip()
    acc = r"\d+\.\d\d"
    assert re.fullmatch(rf"10 images, lr [0-9.e-]+: {acc} ± {acc} % \({acc}, {acc}\)", line), line


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


@pytest.mark.parametrize("shape", [(6, 1, 28, 28), (6, 1, 8, 8), (4, 3, 32, 32)])
def test_the_scripts_dsa_and_convnet_are_distillkits_bit_for_bit(shape):
    """Its own code, the same numbers: each DSA op from one generator state, the network's init and output."""
    from distillkit.data import augment
    from distillkit.models import build_model

    script = runpy.run_path(str(SCRIPT))  # the module's functions, without running main()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    for op in (op for group in script["OPS"].values() for op in group):
        ours = getattr(augment, op.__name__)(x, torch.Generator().manual_seed(1))
        theirs = op(x, torch.Generator().manual_seed(1))
        assert torch.equal(theirs, ours), op.__name__
        assert theirs.stride() == ours.stride(), op.__name__  # the layout picks the conv kernels
    size = tuple(shape[2:])
    torch.manual_seed(2)
    reference = build_model("convnet-w16-d2", shape[1], 10, size)
    torch.manual_seed(2)
    net = script["ConvNet"](shape[1], 10, size, 16, 2)
    assert all(torch.equal(a, b) for a, b in zip(reference.parameters(), net.parameters(), strict=True))
    assert torch.equal(reference(x), net(x))


def test_the_scripts_fashion_mnist_test_set_is_distillkits():
    folder = Path("/usr/share/datasets/fashion-mnist")
    if not folder.is_dir():
        pytest.skip("FashionMNIST is not installed (apt-get install dataset-fashion-mnist)")
    images, labels = runpy.run_path(str(SCRIPT))["load_test"]("fashion-mnist", None)
    dataset = load_dataset("fashion-mnist")
    assert torch.equal(images, dataset.test_images[:]) and torch.equal(labels, dataset.test_labels)
