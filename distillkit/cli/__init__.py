"""The ``distillkit`` command line (typer): the only package that prints or exits.

torch is imported inside command bodies, never at module level, so ``--help``
and ``list-plugins`` answer quickly. ``app`` holds the shared pieces, ``options``
the option declarations, ``render`` what is printed, and each ``cmd_*`` module a
group of commands.
"""

from distillkit.cli import (  # noqa: F401 (registers)
    cmd_ablate,
    cmd_bench,
    cmd_evaluate,
    cmd_import,
    cmd_info,
    cmd_inspect,
    cmd_interop,
    cmd_presets,
    cmd_report,
    cmd_run,
)
from distillkit.cli.app import app, main

__all__ = ["app", "main"]
