"""`--nproc` workers get the command line the user gave, minus `--nproc`; the CLI needs no `click`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer.main

from distillkit.cli import app
from distillkit.cli.launch import worker_argv


def parsed(argv: list[str]) -> typer.Context:
    """The context of ``distillkit ARGV``'s subcommand, as Typer builds it before calling the command."""
    group = typer.main.get_command(app)
    root = group.make_context("distillkit", list(argv))
    name, command, rest = group.resolve_command(root, list(argv))
    return command.make_context(name, rest, parent=root)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["evaluate", "runs/x", "--nproc", "2", "--set", "evaluate.runs=1", "--quiet"],
            ["evaluate", "runs/x", "--set", "evaluate.runs=1", "--quiet"],
        ),
        (
            ["run", "--nproc", "2", "--max-restarts", "1", "--experts", "store", "-s", "a=1", "-s", "b=2"],
            # In the command's order of parameters; repeated options keep their order.
            ["run", "--set", "a=1", "--set", "b=2", "--experts", "store", "--max-restarts", "1"],
        ),
        (["experts", "--out", "store", "--nproc", "4"], ["experts", "--out", "store"]),
    ],
)
def test_workers_get_what_the_user_gave_without_nproc_or_defaults(argv, expected):
    assert worker_argv(parsed(argv)) == expected


def test_no_module_imports_click_directly():
    """Typer ≥ 0.16 does not install ``click``: the CLI failed to start in a fresh ``pip install -e .``."""
    root = Path(__file__).resolve().parents[1]
    importing = [
        str(path.relative_to(root))
        for folder in ("distillkit", "plugins")
        for path in (root / folder).rglob("*.py")
        if re.search(r"^\s*(import click|from click\b)", path.read_text(encoding="utf-8"), flags=re.M)
    ]
    assert importing == []
