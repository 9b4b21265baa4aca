"""The library example runs as documented (at a tiny budget)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_runs(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "quickstart.py"),
            "--tiny",
            "--out",
            str(tmp_path / "qs"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "distilled" in proc.stdout and "random real" in proc.stdout
    assert "constant-weight" in proc.stdout and "bil" in proc.stdout
    assert (tmp_path / "qs" / "synthetic.safetensors").exists()
