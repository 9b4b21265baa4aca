"""The prepared GPU script parses, names what it runs correctly and refuses a call without its arguments.

Running it takes minutes (its own ``QUICK=1 ... cpu`` mode checks it end to end on a CPU), so only
what can break silently between GPU loans is tested here: a renamed script or option.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from conftest import invoke

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "benchmarks" / "gpu_checks.sh"


def test_the_script_parses_and_wants_its_arguments() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    refused = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, cwd=ROOT)
    assert refused.returncode != 0 and "usage: gpu_checks.sh" in refused.stderr


def test_every_script_and_bench_option_it_names_exists() -> None:
    text = SCRIPT.read_text()
    for script in re.findall(r"examples/benchmarks/\w+\.py", text):
        assert (ROOT / script).is_file(), script
    bench_help = invoke("bench", "--help").output
    bench_lines = text[text.index("short=(") :]
    for option in set(re.findall(r"(--[a-z][a-z-]+)", bench_lines)):
        assert option in bench_help, option
