"""Read a run directory into a :class:`RunReport`: plain values, and why each missing one is missing.

Nothing here fails on a run that is still going or was stopped: an absent or unreadable
file becomes an entry of ``RunReport.missing`` (shown as "not recorded" in the page).
Only a folder that holds no run at all is an error.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distillkit.errors import ConfigError, DistillkitError

#: Files of which at least one marks a folder as a run directory.
RUN_MARKERS = ("config.json", "invocation.json", "metrics.jsonl", "synthetic.json", "results.json")


@dataclass
class SyntheticSet:
    """The distilled images in pixel space (ZCA inverted, normalisation undone) and what names them."""

    pixels: Any  # torch.Tensor [n, C, H, W] in [0, 1]
    labels: Any  # torch.Tensor [n]
    class_names: list[str]
    lr: float
    init: str | None
    status: str | None  # e.g. "stopped by the divergence guard"; None for a finished set
    meta: dict[str, Any] = field(default_factory=dict)  # synthetic.json (environment, plugins...)

    @property
    def soft_labels(self) -> str | None:
        """The report's phrase "soft labels (learned from <source>)" (or fixed), None for hard labels.

        Read from ``synthetic.json``'s ``labels`` entry (``{"kind": "soft", "source": ..., "learned": ...}``);
        a set without one has hard labels.
        """
        entry = self.meta.get("labels")
        if not isinstance(entry, dict) or entry.get("kind") != "soft":
            return None
        source = entry.get("source")
        origin = f" from {source}" if isinstance(source, str) and source else ""
        return f"soft labels ({'learned' if entry.get('learned') is True else 'fixed'}{origin})"


@dataclass
class RunReport:
    """Everything the page shows, read once from the run directory."""

    run_dir: Path
    status: str
    command: str | None = None
    config: dict[str, Any] = field(default_factory=dict)  # dotted key → value
    sources: dict[str, str] = field(default_factory=dict)  # dotted key → the layer that set it
    metrics: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl lines, in order
    synthetic: SyntheticSet | None = None
    results: dict[str, Any] = field(default_factory=dict)  # results.json
    evaluation: list[dict[str, Any]] = field(default_factory=list)  # evaluation.json's entries
    run_info: dict[str, Any] = field(default_factory=dict)  # run.json
    missing: dict[str, str] = field(default_factory=dict)  # section → why it is not recorded
    notes: list[str] = field(default_factory=list)  # things the reader should know (skipped lines)

    @property
    def model(self) -> str | None:
        return self.config.get("model.name")

    def recorded(self, key: str) -> Any:
        """``key`` of ``run.json``, else of ``synthetic.json`` (``distillkit distill`` writes no run.json)."""
        if key in self.run_info:
            return self.run_info[key]
        return self.synthetic.meta.get(key) if self.synthetic is not None else None

    def series(self, key: str) -> list[float]:
        """One metrics value per iteration, NaN where a line lacks it (a plot gap, not a crash)."""
        return [_number(line.get(key)) for line in self.metrics]

    def term_keys(self) -> list[str]:
        """Every key any plugin logged in ``terms``, in the order they first appear."""
        keys: dict[str, None] = {}
        for line in self.metrics:
            terms = line.get("terms")
            if isinstance(terms, dict):
                keys.update(dict.fromkeys(str(k) for k in terms))
        return list(keys)

    def loss_per_start(self) -> dict[int, tuple[float, int]]:
        """``{start epoch: (mean matching loss, iterations)}`` over the iterations that record both."""
        groups: dict[int, list[float]] = {}
        for start, loss in zip(self.series("start_epoch"), self.series("match_loss"), strict=True):
            if math.isfinite(start) and math.isfinite(loss):
                groups.setdefault(int(start), []).append(loss)
        return {t: (sum(v) / len(v), len(v)) for t, v in sorted(groups.items())}

    def term_series(self, key: str) -> list[float]:
        return [
            _number(line["terms"].get(key)) if isinstance(line.get("terms"), dict) else math.nan
            for line in self.metrics
        ]


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan


def collect(run_dir: Path) -> RunReport:
    """Read ``run_dir``; a folder holding no run is a one-line :class:`ConfigError`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not any((run_dir / name).exists() for name in RUN_MARKERS):
        raise ConfigError(
            f"{run_dir} is not a run directory (no config.json, metrics.jsonl or results.json)",
            hint="give the folder `distillkit run` or `distillkit distill` wrote (--out)",
        )
    report = RunReport(run_dir=run_dir, status="")
    invocation = _read_json(report, "invocation.json", "invocation")
    report.command = invocation.get("command") if isinstance(invocation.get("command"), str) else None
    _read_config(report)
    _read_metrics(report)
    report.results = _read_json(report, "results.json", "results")
    report.evaluation = _read_evaluations(report)
    report.run_info = _read_json(report, "run.json", "run")
    _read_synthetic(report)
    report.status = _status(report)
    return report


def _read_evaluations(report: RunReport) -> list[dict[str, Any]]:
    """evaluation.json's entries, oldest first; an unreadable file is "not recorded"."""
    from distillkit.errors import DistillkitError
    from distillkit.evaluation_log import load_entries

    try:
        return load_entries(report.run_dir)
    except DistillkitError as exc:
        report.missing["evaluation"] = f"not recorded ({exc})"
        return []


def _read_json(report: RunReport, name: str, section: str) -> dict[str, Any]:
    """A JSON object from the run directory, or ``{}`` with the reason in ``report.missing``."""
    path = report.run_dir / name
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        report.missing[section] = f"not recorded (no {name})"
        return {}
    except (OSError, ValueError) as exc:
        report.missing[section] = f"not recorded ({name} cannot be read: {exc})"
        return {}
    if not isinstance(value, dict):
        report.missing[section] = f"not recorded ({name} does not hold a JSON object)"
        return {}
    return value


def _read_config(report: RunReport) -> None:
    """The recorded config as dotted keys (the same listing as ``distillkit config``) and its sources."""
    from distillkit.config import from_dict
    from distillkit.resolve import flat_values

    recorded = _read_json(report, "config.json", "config")
    if not recorded:
        return
    sources = recorded.pop("sources", {})
    report.sources = {str(k): str(v) for k, v in sources.items()} if isinstance(sources, dict) else {}
    try:
        report.config = flat_values(from_dict(recorded))
    except (DistillkitError, TypeError, ValueError, AttributeError) as exc:
        report.missing["config"] = f"not recorded (config.json is not a valid config: {exc})"


def _read_metrics(report: RunReport) -> None:
    """``metrics.jsonl`` line by line; a line that is not a JSON object is skipped and counted."""
    path = report.run_dir / "metrics.jsonl"
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        report.missing["metrics"] = "not recorded (no metrics.jsonl: distillation has not started)"
        return
    except OSError as exc:
        report.missing["metrics"] = f"not recorded (metrics.jsonl cannot be read: {exc})"
        return
    skipped = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            value = None
        if isinstance(value, dict):
            report.metrics.append(value)
        else:
            skipped += 1
    if skipped:
        report.notes.append(f"metrics.jsonl: {skipped} line(s) that are not JSON objects were skipped")
    if not report.metrics:
        report.missing["metrics"] = "not recorded (metrics.jsonl holds no iteration yet)"


def _read_synthetic(report: RunReport) -> None:
    """The saved set in pixel space; a missing or unusable one is a reason, not an error."""
    if not (report.run_dir / "synthetic.json").exists():
        report.missing["synthetic"] = "not recorded (no synthetic.json: the distilled set is not saved yet)"
        return
    from distillkit.artifacts import load_synthetic, synthetic_pixels

    try:
        images, labels, lr, meta, extra = load_synthetic(report.run_dir)
        pixels = synthetic_pixels(images, meta, extra)
    except DistillkitError as exc:
        report.missing["synthetic"] = f"not recorded ({exc})"
        return
    names = meta.get("class_names")
    if not isinstance(names, list) or not names:
        top = int(labels.max()) + 1 if labels.numel() else 0
        names = [str(c) for c in range(top)]
    report.synthetic = SyntheticSet(
        pixels=pixels,
        labels=labels,
        class_names=[str(n) for n in names],
        lr=lr,
        init=meta.get("init") if isinstance(meta.get("init"), str) else None,
        status=meta.get("status") if isinstance(meta.get("status"), str) else None,
        meta=meta,
    )


def _status(report: RunReport) -> str:
    """One phrase: running, finished, distilled only, stopped, or unfinished."""
    from distillkit.rundir import written_elsewhere

    if written_elsewhere(report.run_dir):
        return "running (another process is writing this run directory)"
    if report.synthetic is not None and report.synthetic.status:
        return report.synthetic.status
    if report.results:
        return "finished"
    if report.command == "distill" and report.synthetic is not None:
        return "distilled (distillkit distill: no evaluation)"
    return "unfinished (not running; continue it with --resume)"
