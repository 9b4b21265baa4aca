"""Skipping the native libraries' exit-time destructors: same exit status, nothing unwritten, lower peak."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

# A command's last moments: a file left open, output still buffered, an atexit function, an exit status.
PROBE = """
import atexit, sys, torch
from distillkit.processexit import skip_native_destructors
torch.randn(500, 500) @ torch.randn(500, 500)
left_open = open(sys.argv[1], "w")
left_open.write("kept " * 1000)
atexit.register(lambda: print("atexit ran"))
print("buffered line", end="")
if sys.argv[2] == "skip":
    assert skip_native_destructors()
sys.exit(3)
"""

# The probe's peak resident set, read by a parent that has no other child.
PEAK = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def _probe(tmp_path: Path, mode: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", PROBE, str(tmp_path / f"{mode}.txt"), mode]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's on_exit")
def test_python_finishes_everything_and_the_status_is_kept(tmp_path: Path) -> None:
    done = _probe(tmp_path, "skip")
    assert done.returncode == 3, done.stderr
    assert done.stdout == "buffered lineatexit ran\n"
    assert (tmp_path / "skip.txt").read_text() == "kept " * 1000


@pytest.mark.skipif(torch.version.cuda is None, reason="only a CUDA build of torch loads the CUDA libraries")
def test_the_cuda_libraries_teardown_no_longer_raises_the_peak(tmp_path: Path) -> None:
    peaks = {}
    for mode in ("skip", "normal"):
        cmd = [sys.executable, "-c", PEAK, sys.executable, "-c", PROBE, str(tmp_path / f"{mode}.txt"), mode]
        peaks[mode] = int(subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout)
    assert peaks["normal"] - peaks["skip"] > 50 * 1024, peaks  # KiB; ≈ 117 MiB on torch 2.14.1 + CUDA 13
