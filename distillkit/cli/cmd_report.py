"""``report``: a run directory as one self-contained ``report.html`` (also written by ``run``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from distillkit.cli.app import app, cli_errors, err, out
from distillkit.cli.options import Debug


@app.command("report")
def report_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (written by `distillkit run`/`distill`).")],
    debug: Debug = False,
) -> None:
    """Write RUN_DIR/report.html: the set, loss/α/start-epoch plots, evaluation, config, timings."""
    with cli_errors(debug):
        from distillkit.report import write_report

        path = write_report(run_dir)
        _note_missing_plots()
        out.print(f"report: {path}", highlight=False, soft_wrap=True)


def refresh_report(run_dir: Path, announce: bool = True) -> None:
    """Write ``report.html`` after a command that changed the run; a failure is a warning, not an error.

    The run's own files are written already, so nothing here may turn a finished run into a failed one.
    ``announce=False`` prints nothing on success (``--json`` output stays pure JSON).
    """
    try:
        from distillkit.report import write_report

        path = write_report(run_dir)
    except Exception as exc:
        err.print(
            f"Warning: report.html was not written ({type(exc).__name__}: {exc}); "
            f"try again with: distillkit report {run_dir}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return
    if announce:
        _note_missing_plots()
        out.print(f"report: {path}", highlight=False, soft_wrap=True)


def _note_missing_plots() -> None:
    from distillkit.plotting import PLOTS_HINT
    from distillkit.report.plots import available

    if not available():
        err.print(f"Note: report.html has tables instead of plots; for plots: {PLOTS_HINT}", markup=False)
