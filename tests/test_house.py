"""House rules a reader relies on: the repository stands on its own, modules stay small."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [
    *(ROOT / "distillkit").rglob("*.py"),
    *(ROOT / "distillkit").rglob("*.toml"),
    *(ROOT / "plugins").rglob("*.py"),
    *(ROOT / "docs").rglob("*.md"),
    *(ROOT / "examples").rglob("*.py"),
    *(ROOT / "examples").rglob("*.md"),
    ROOT / "README.md",
]
#: Files only the developers had: the repository must cite papers and public repositories instead.
PRIVATE = re.compile(
    r"shared/|algorithms\.md|benchmarks\.md|design\.md|design §|architecture-anchors|ecosystem\.md"
)


def test_no_file_points_outside_the_repository():
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in SOURCES
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if PRIVATE.search(line)
    ]
    assert offenders == []


def test_no_module_is_longer_than_400_lines_without_saying_why():
    long = []
    for path in (ROOT / "distillkit").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > 400 and "Longer than 400 lines because" not in text:
            long.append(f"{path.relative_to(ROOT)} ({text.count(chr(10))} lines)")
    assert long == []
