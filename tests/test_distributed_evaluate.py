"""Evaluation over two real gloo ranks (``distillkit evaluate --nproc 2``) gives the one-process results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from conftest import invoke

#: 3 networks × 2 architectures × 6 epochs on 10 images: the ranks share 6 networks unevenly per model.
SETTINGS = [
    "--set=evaluate.runs=3",
    "--set=evaluate.epochs=6",
    "--set=data.augment=none",
    "--set=device=cpu",
    "--eval-models=convnet-w8-d1,convnet-w4-d1-nn",
]


def _mtt_folder(root: Path) -> Path:
    """Ten digits-shaped images, one per class, saved as MTT saves a distilled set."""
    generator = torch.Generator().manual_seed(3)
    root.mkdir()
    torch.save(torch.randn(10, 1, 8, 8, generator=generator), root / "images_best.pt")
    torch.save(torch.arange(10), root / "labels_best.pt")
    torch.save(torch.tensor(0.02), root / "lr_best.pt")
    return root


def test_evaluation_over_two_ranks_equals_one_process(tmp_path: Path) -> None:
    folder = _mtt_folder(tmp_path / "mtt")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank has
    try:
        alone = invoke("evaluate", "--mtt", folder, *SETTINGS, "--json", "--quiet")
    finally:
        torch.set_num_threads(threads)
    assert alone.exit_code == 0, alone.output
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "NO_COLOR": "1"}
    command = ["evaluate", "--mtt", str(folder), *SETTINGS, "--out", str(tmp_path / "out"), "--json"]
    done = subprocess.run(
        [sys.executable, "-m", "distillkit", *command, "--nproc", "2", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    together = json.loads(done.stdout)  # rank 0 alone printed
    assert together == json.loads(alone.output)
    assert set(together) == {"convnet-w8-d1", "convnet-w4-d1-nn"}
    assert all(len(result["runs"]) == 3 for result in together.values())
    written = json.loads((tmp_path / "out" / "evaluation.json").read_text())[-1]["models"]
    assert {name: written[name]["runs"] for name in written} == {n: r["runs"] for n, r in together.items()}
