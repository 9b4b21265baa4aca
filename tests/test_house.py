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


def _anchors(page: Path) -> set[str]:
    """The fragment each heading of ``page`` gets on GitHub (lower case, punctuation dropped)."""
    anchors, fenced = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        fenced ^= line.startswith("```")
        if not fenced and re.match(r"#{1,6} ", line):
            title = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower())
            anchors.add(title.replace(" ", "-"))
    return anchors


def test_every_link_between_the_docs_lands_on_a_file_and_heading_that_exist():
    pages = [ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").glob("*.md")]
    broken = []
    for page in pages:
        for link in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", link):
                continue  # a web address
            path, _, fragment = link.partition("#")
            target = (page.parent / path) if path else page
            if not target.exists() or (
                fragment and target.suffix == ".md" and fragment not in _anchors(target)
            ):
                broken.append(f"{page.relative_to(ROOT)}: {link}")
    assert broken == []
