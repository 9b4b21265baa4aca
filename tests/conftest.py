"""Shared fixtures: every test gets its own expert cache, so nothing leaks between tests."""

from __future__ import annotations

import os

import pytest

if "PYTEST_XDIST_WORKER" in os.environ:
    # Parallel workers share the cores: one thread each (and in the processes they start), as two
    # 2-thread PyTorch jobs on 2 cores slow each other several-fold.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    # xdist hands each worker the terminal's size; rich would fix the CLI's width to it at import.
    for name in ("COLUMNS", "LINES"):
        os.environ.pop(name, None)
    import torch

    torch.set_num_threads(1)

import torch  # after the thread settings above

#: A test of the CUDA path: skipped with the reason on a machine without CUDA, so a CPU-only run
#: reports what it left out.
NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
#: The devices of a test whose subject depends on the device (packed kernels, generators that live
#: on the device): the CPU always, CUDA where this machine has it.
DEVICES = ["cpu", pytest.param("cuda", marks=NEEDS_CUDA)]


@pytest.fixture
def exact_kernels():
    """cuDNN without TF32 (its default on Ampere and later rounds convolution inputs to 10 bits),
    so a comparison of two CUDA code paths measures their difference, not TF32's; a no-op on CPU."""
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False):
        yield


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one worker per core this process may run on, at most 8 (each imports torch,
    ≈ 0.5 GiB, and trains real networks). xdist's own count is the machine's physical cores where
    psutil is installed, which in a container can be far more than it is given."""
    return min(len(os.sched_getaffinity(0)), 8)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DISTILLKIT_CACHE", str(tmp_path_factory.mktemp("cache")))


#: A digits run small enough for a unit test (seconds on 2 cores).
TINY = [
    "--set", "experts.count=1",
    "--set", "experts.epochs=4",
    "--set", "distill.max_start_epoch=2",
    "--set", "distill.syn_steps=5",
    "--set", "distill.iterations=4",
    "--set", "evaluate.runs=2",
    "--set", "evaluate.epochs=10",
]  # fmt: skip


#: Library overrides for experts that train in about a second on a busy CPU (small net, no augmentation).
TINY_EXPERTS = {
    "device": "cpu",
    "model.name": "convnet-w8-d1",
    "data.augment": "none",
    "experts.count": 1,
    "experts.epochs": 4,
    "distill.max_start_epoch": 1,
    "distill.expert_epochs": 2,
}


CLI_ENV = {"COLUMNS": "200", "NO_COLOR": "1"}


def invoke(*args: object, env: dict[str, str] | None = None):
    """Run the ``distillkit`` CLI in-process (wide, uncoloured output) with extra environment."""
    from typer.testing import CliRunner

    from distillkit.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env=CLI_ENV | (env or {}))


def one_line_error(result, code: int, fragment: str) -> None:
    """The documented failure: exit ``code``, one ``Error:`` line naming ``fragment`` (+ a hint)."""
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[0].startswith("Error: ") and fragment in lines[0], result.output
    assert len(lines) <= 2 and "Traceback" not in result.output
