"""The report's sections, each from a :class:`RunReport`; a missing piece reads "not recorded".

Figures come from :mod:`distillkit.report.plots` when matplotlib is installed; without it the
same numbers are shown as tables, with a line saying how to get the plots.
"""

from __future__ import annotations

import json
import math
from typing import Any

from distillkit.plotting import PLOTS_HINT
from distillkit.report import plots
from distillkit.report.collect import RunReport
from distillkit.report.html import (
    NOT_RECORDED,
    esc,
    image,
    missing,
    note,
    number,
    pairs,
    percent,
    section,
    table,
)

#: Without plots, at most this many iterations are listed (evenly spaced, the last included).
TABLE_ROWS = 30


def overview(report: RunReport) -> str:
    cfg, results = report.config, report.results
    done = len(report.metrics)
    planned = cfg.get("distill.iterations")
    final = report.metrics[-1].get("loss") if report.metrics else None
    items = [
        ("run directory", esc(report.run_dir)),
        ("status", esc(report.status)),
        ("command", esc(f"distillkit {report.command}" if report.command else NOT_RECORDED)),
        ("dataset", esc(cfg.get("data.dataset", NOT_RECORDED))),
        ("model", esc(report.model or NOT_RECORDED)),
        ("images per class", number(cfg.get("distill.ipc"))),
        ("plugins", esc(", ".join(cfg.get("plugins") or []) or "none (plain MTT)")),
        ("iterations", esc(f"{done} of {planned if planned is not None else NOT_RECORDED}")),
        ("final loss", number(final)),
        ("learned lr α", number(results.get("learned_lr", _synthetic_lr(report)))),
        ("start set", esc(results.get("init") or report.recorded("init") or NOT_RECORDED)),
    ]
    soft = report.synthetic.soft_labels if report.synthetic is not None else None
    if soft is not None:
        items.append(("labels", esc(soft)))
    body = pairs(items) + "".join(note(text) for text in report.notes)
    return section("overview", "Overview", body)


def _synthetic_lr(report: RunReport) -> float | None:
    return report.synthetic.lr if report.synthetic is not None else None


def synthetic(report: RunReport) -> str:
    from distillkit.artifacts import grid_image, png_bytes

    title = "Synthetic set (pixel space)"
    found = report.synthetic
    if found is None:
        return section("synthetic", title, missing(report.missing.get("synthetic", NOT_RECORDED)))
    try:
        grid = grid_image(found.pixels, found.labels, len(found.class_names), found.class_names)
    except ValueError as exc:
        return section("synthetic", title, missing(f"{NOT_RECORDED} (the set cannot be drawn: {exc})"))
    zca = report.config.get("data.zca")
    caption = (
        f"{len(found.labels)} images, one row per class (class name on the left); "
        + ("ZCA whitening inverted, " if zca else "")
        + "normalisation undone. Learned lr α = "
        + f"{found.lr:.4g}."
        + (f" Status: {found.status}." if found.status else "")
    )
    return section("synthetic", title, note(caption) + image(png_bytes(grid), "synthetic set", "grid"))


def training(report: RunReport, figures: bool) -> str:
    """Matching loss, α, start epochs and experts, inner-loss weight, plugin terms, rollbacks."""
    if not report.metrics:
        body = missing(report.missing.get("metrics", NOT_RECORDED))
        return section("distillation", "Distillation over iterations", body)
    x = _iterations(report)
    starts, match = report.series("start_epoch"), report.series("match_loss")
    means = report.loss_per_start()
    per_start = table(
        ["start epoch t", "iterations", "mean matching loss"],
        [(esc(t), esc(n), number(mean)) for t, (mean, n) in means.items()],
    )
    terms = report.term_keys()
    parts: list[str] = []
    if figures:
        loss = {"matching loss": match}
        total = report.series("loss")
        if any(a != b for a, b in zip(total, match, strict=True) if math.isfinite(a)):
            loss = {"loss (matching + plugin terms)": total, **loss}
        alpha = report.series("alpha")
        weight = report.series("inner_weight")
        parts += [
            "<h3>Matching loss and α (the learned student lr)</h3>",
            _figures(
                image(plots.lines(x, loss, "matching loss", "loss", log=True), "matching loss"),
                image(plots.lines(x, {"α": alpha}, "learned lr α", "α"), "alpha"),
            ),
            "<h3>Start epoch and expert per iteration (the AST paper's Fig. 2 and Fig. 9 views)</h3>",
            _figures(
                image(plots.start_epochs(x, starts, report.series("expert")), "start epochs"),
                image(plots.loss_by_start(starts, match, means), "matching loss per start epoch"),
            ),
            per_start,
            "<h3>Inner-loss weight and plugin terms</h3>",
            _figures(
                image(plots.lines(x, {"weight": weight}, "inner-loss weight", "weight"), "weight"),
                *_term_figures(report, x, terms),
            ),
            "" if terms else note("No plugin logged a term (plain MTT, or plugins that log none)."),
        ]
    else:
        parts.append(
            note(f"Plots need matplotlib, which is not installed ({PLOTS_HINT}); the numbers as tables.")
        )
        parts.append("<h3>Per iteration</h3>" + _series_table(report, terms))
        parts.append("<h3>Matching loss per start epoch (AST Fig. 9 view)</h3>" + per_start)
    parts.append("<h3>Divergence guard</h3>" + _rollbacks(report))
    return section("distillation", "Distillation over iterations", "".join(parts))


def _iterations(report: RunReport) -> list[float]:
    """The recorded iteration numbers (a resumed run's continue), the line's position where one lacks it."""
    return [v if math.isfinite(v) else float(i) for i, v in enumerate(report.series("iteration"))]


def _figures(*images: str) -> str:
    return f'<div class="figures">{"".join(images)}</div>'


def _term_figures(report: RunReport, x: list[float], terms: list[str]) -> list[str]:
    """One figure per key plugins logged in ``terms`` (e.g. ``wp/rel_norm``)."""
    return [
        image(plots.lines(x, {key: report.term_series(key)}, f"term {key}", key), f"term {key}")
        for key in terms
    ]


def _series_table(report: RunReport, terms: list[str]) -> str:
    count = len(report.metrics)
    step = max(1, math.ceil(count / TABLE_ROWS))
    rows = sorted({*range(0, count, step), count - 1})
    keys = ["iteration", "loss", "match_loss", "alpha", "start_epoch", "expert", "inner_weight"]
    body = [
        [number(report.metrics[i].get(k)) for k in keys]
        + [number(_term(report.metrics[i], key)) for key in terms]
        for i in rows
    ]
    shown = "every iteration" if step == 1 else f"every {step}th iteration and the last"
    headers = ["iteration", "loss", "matching loss", "α", "start epoch", "expert", "inner weight", *terms]
    return note(f"{count} iterations, {shown}.") + table(headers, body)


def _term(line: dict[str, Any], key: str) -> Any:
    terms = line.get("terms")
    return terms.get(key) if isinstance(terms, dict) else None


def _rollbacks(report: RunReport) -> str:
    rows = [
        (number(line.get("iteration")), esc(text))
        for line in report.metrics
        for text in (line.get("rollbacks") or [] if isinstance(line.get("rollbacks"), list) else [])
    ]
    if not rows:
        return note("No rollback: every iteration passed the divergence guard.")
    return table(["iteration", "rollback"], rows)


def evaluation(report: RunReport) -> str:
    """Distilled vs random real (results.json), then later evaluations (evaluation.json)."""
    from distillkit.config import EvaluateConfig
    from distillkit.evaluate import protocol_line

    rows, protocols = [], []
    results = report.results
    for label, key in (("distilled", "distilled"), ("random real", "random_real")):
        models = results.get(key, {}).get("models", {}) if isinstance(results.get(key), dict) else {}
        rows += [_eval_row(label, name, res, report.model, "distillkit run") for name, res in models.items()]
    proto = results.get("protocol")
    if isinstance(proto, dict):
        fields = {k: v for k, v in proto.items() if k in EvaluateConfig.__dataclass_fields__}
        lr, real_lr = proto.get("distilled_lr"), proto.get("random_real_lr")
        try:
            line = protocol_line(EvaluateConfig(**fields), float(lr))
            protocols.append(f"distillkit run: {line}; random real at lr {float(real_lr):.4g}")
        except (TypeError, ValueError):
            protocols.append(f"distillkit run: {NOT_RECORDED} (protocol unreadable)")
    for entry in report.evaluation:
        if entry.get("command") == "run":
            continue  # the run's own evaluation is results.json, shown above
        source = f"distillkit {entry.get('command', 'evaluate')}, {entry.get('date') or 'date not recorded'}"
        label = _set_label(entry.get("set"))
        for key, name in (("models", label), ("random_real", "random real")):
            models = entry.get(key) if isinstance(entry.get(key), dict) else {}
            rows += [_eval_row(name, model, res, report.model, source) for model, res in models.items()]
        protocols += _entry_protocol(source, entry.get("protocol"))
    if not rows:
        reason = report.missing.get("results", NOT_RECORDED)
        return section("evaluation", "Evaluation", missing(f"{reason}: no evaluation yet"))
    headers = ["set", "model", "accuracy", "runs (%)", "", "from"]
    body = table(headers, rows) + "".join(note(f"protocol — {p}") for p in protocols)
    return section("evaluation", "Evaluation (final-epoch test accuracy)", body)


def _eval_row(label: str, model: str, res: Any, own: str | None, source: str) -> list[str]:
    res = res if isinstance(res, dict) else {}
    runs = res.get("runs") if isinstance(res.get("runs"), list) else []
    text = " ".join(f"{100 * r:.1f}" for r in runs if isinstance(r, int | float))
    kind = "" if own is None or model == own else "cross-architecture"
    accuracy = percent(res.get("mean"), res.get("std"))
    return [esc(label), esc(model), accuracy, esc(text), esc(kind), esc(source)]


def _set_label(evaluated: Any) -> str:
    """ "distilled" for the final set, "snapshot N" for a snapshot (evaluation.json's ``set``)."""
    if isinstance(evaluated, dict) and evaluated.get("kind") == "snapshot":
        return f"snapshot {evaluated.get('iteration', '?')}"
    return "distilled"


def _entry_protocol(source: str, proto: Any) -> list[str]:
    from distillkit.config import EvaluateConfig
    from distillkit.evaluate import protocol_line

    if not isinstance(proto, dict) or not isinstance(proto.get("lr"), int | float):
        return []
    fields = {k: v for k, v in proto.items() if k in EvaluateConfig.__dataclass_fields__}
    try:
        return [f"{source}: {protocol_line(EvaluateConfig(**fields), float(proto['lr']))}"]
    except (TypeError, ValueError):
        return []


def config(report: RunReport) -> str:
    if not report.config:
        return section("config", "Config", missing(report.missing.get("config", NOT_RECORDED)))
    rows, dim = [], []
    for key, value in report.config.items():
        source = report.sources.get(key, "default" if report.sources else NOT_RECORDED)
        rows.append((esc(key), esc(json.dumps(value, ensure_ascii=False)), esc(source)))
        dim.append(source == "default")
    body = note("Each key with the layer that set it (defaults are grey).") + table(
        ["key", "value", "set by"], rows, dim, align=False
    )
    return section("config", "Config", body)


def plugins(report: RunReport) -> str:
    records = report.recorded("plugins")
    if not isinstance(records, list):
        names = report.config.get("plugins")
        body = missing(report.missing.get("run", NOT_RECORDED))
        if names:
            body += note(f"selected: {', '.join(map(str, names))} (versions not recorded)")
        return section("plugins", "Plugins", body)
    if not records:
        return section("plugins", "Plugins", note("none (plain MTT)"))
    rows = [
        [esc(r.get(k, "")) for k in ("name", "package", "version", "source")]
        + [esc(", ".join(map(str, r.get("hooks") or [])))]
        for r in records
        if isinstance(r, dict)
    ]
    return section("plugins", "Plugins", table(["name", "package", "version", "source", "hooks"], rows))


def timings(report: RunReport) -> str:
    found = report.results.get("timings_s") or report.run_info.get("timings_s")
    items: list[tuple[str, str]] = []
    if isinstance(found, dict):
        items += [(f"{stage} (s)", number(seconds)) for stage, seconds in found.items()]
    per_iter = report.results.get("distill_s_per_iter")
    seconds = [s for s in report.series("seconds") if math.isfinite(s)]
    if per_iter is None and seconds:
        per_iter = sum(seconds) / len(seconds)
    items.append(("distillation s/iteration", number(per_iter)))
    for key, label in (("peak_rss_mb", "peak RSS (MiB)"), ("peak_cuda_mb", "peak CUDA memory (MiB)")):
        value = report.results.get(key, report.run_info.get(key))
        if value is not None or key == "peak_rss_mb":
            items.append((label, number(value, 5)))
    body = pairs(items)
    if not isinstance(found, dict):
        body = missing(f"{NOT_RECORDED}: stage timings are written when the run finishes") + body
    return section("timings", "Timings", body)


def environment(report: RunReport) -> str:
    env = report.recorded("environment")
    if not isinstance(env, dict):
        return section("environment", "Environment", missing(report.missing.get("run", NOT_RECORDED)))
    items = [(str(k), esc(v)) for k, v in env.items()]
    items.append(("device", esc(report.run_info.get("device", NOT_RECORDED))))
    store = report.results.get("expert_store") or report.recorded("expert_store")
    items.append(("expert store", esc(store or NOT_RECORDED)))
    return section("environment", "Environment", pairs(items))
