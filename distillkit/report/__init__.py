"""``distillkit report``: a run directory as one self-contained ``report.html``.

:mod:`.collect` reads the run directory into a plain :class:`RunReport`, :mod:`.plots` draws
its figures (when matplotlib is installed), :mod:`.sections` and :mod:`.html` write the page.
The page loads nothing: CSS is inline, images are ``data:`` URIs, there is no script.
"""

from __future__ import annotations

from pathlib import Path

from distillkit.report.collect import RunReport, collect

REPORT_FILE = "report.html"

__all__ = ["REPORT_FILE", "RunReport", "collect", "render", "write_report"]


def render(report: RunReport, figures: bool | None = None) -> str:
    """The page for ``report``; ``figures=None`` draws plots exactly when matplotlib is installed."""
    from distillkit import __version__
    from distillkit.report import html, plots, sections

    figures = plots.available() if figures is None else figures
    cfg = report.config
    plugins = ", ".join(cfg.get("plugins") or []) or "plain MTT"
    title = f"distillkit run report: {cfg.get('data.dataset', 'run')} · ipc {cfg.get('distill.ipc', '?')}"
    subtitle = f"{report.run_dir} · {plugins} · {report.status} · written by distillkit {__version__}"
    parts = [
        sections.overview(report),
        sections.synthetic(report),
        sections.training(report, figures),
        sections.evaluation(report),
        sections.config(report),
        sections.plugins(report),
        sections.timings(report),
        sections.environment(report),
    ]
    return html.page(title, subtitle, parts)


def write_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.html`` (atomically) and return its path."""
    from distillkit.artifacts import atomic_write_bytes

    path = Path(run_dir) / REPORT_FILE
    atomic_write_bytes(path, render(collect(run_dir)).encode("utf-8"))
    return path
