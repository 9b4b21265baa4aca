"""The prepared GPU script parses, names what it runs correctly and refuses a call without its arguments.

Running it takes minutes (its own ``QUICK=1 ... cpu`` mode checks it end to end on a CPU), so only
what can break silently between GPU loans is tested here: a renamed script or option.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import invoke

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "benchmarks" / "gpu_checks.sh"


def test_the_script_parses_and_wants_its_arguments() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    refused = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, cwd=ROOT)
    assert refused.returncode != 0 and "usage: gpu_checks.sh" in refused.stderr


def _help(command: str) -> str:
    """The ``--help`` text of the program a step of the script runs."""
    script = re.search(r"(examples/benchmarks/\w+\.py)( steps| evaluate)?", command)
    if script is None:
        assert "-m distillkit bench" in command, command
        return invoke("bench", "--help").output
    assert (ROOT / script[1]).is_file(), script[1]
    argv = [sys.executable, str(ROOT / script[1]), *(script[2] or "").split(), "--help"]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def test_every_script_and_option_its_steps_name_exists() -> None:
    text = SCRIPT.read_text()
    # Each step's command with the option lists it splices in (defined before the first step).
    lists = dict(re.findall(r"^\s*(\w+)=\((.*?)\)", text, flags=re.M | re.S))
    steps = re.split(r"^\s*step ", text, flags=re.M)[1:]  # each call of step(), indented or not
    assert len(steps) >= 6
    for chunk in steps:
        lines = chunk.split("\n")
        command = " ".join(lines[: next(i for i, line in enumerate(lines) if not line.endswith("\\")) + 1])
        for name, values in [*lists.items()] * 2:  # twice: a list may splice in another
            command = command.replace(f'"${{{name}[@]}}"', values)
        if "python3 -m pip" in command or "pytest" in command:
            continue
        help_text = _help(command)
        for option in set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", command)):
            assert option in help_text, (option, command)
