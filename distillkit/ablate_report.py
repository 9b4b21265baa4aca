"""The report of ``distillkit ablate``: paired statistics, ``ablation.md`` and ``ablation.png``.

Arms are compared with the first arm **paired by seed**: Δ_s = acc(arm, s) − acc(base, s),
reported as mean Δ and the half-width of its 95 % Student-t interval over seeds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distillkit.ablate import Plan
from distillkit.config import RunConfig, to_dict

#: Two-sided 95 % quantiles of Student's t by degrees of freedom (normal beyond 30).
T_975 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
    10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110,
    18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060,
    26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042,
}  # fmt: skip


def _cell_accuracy(record: dict[str, Any]) -> float | None:
    distilled = record.get("distilled")
    return None if not distilled else 100 * distilled["mean"]


def paired_interval(differences: Sequence[float]) -> tuple[float, float]:
    """Mean of paired differences and the half-width of its 95 % t interval (nan below 2 pairs)."""
    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return mean, math.nan
    t = T_975.get(len(differences) - 1, 1.96)
    return mean, t * statistics.stdev(differences) / math.sqrt(len(differences))


def summarise(plan: Plan, stores: dict[str, dict[str, Any]], cells: dict[str, dict[str, Any]]) -> dict:
    """Per arm: accuracy per seed, mean ± std over seeds, paired Δ vs the first arm, s/iteration."""
    by_arm: dict[str, dict[int, dict[str, Any]]] = {}
    for cell in plan.cells:
        if cell.arm is not None:
            by_arm.setdefault(cell.arm.label, {})[cell.seed] = cells.get(cell.out_dir, {})
    base_label = plan.arms[0].label
    rows = []
    for arm in plan.arms:
        records = by_arm[arm.label]
        accs = {s: _cell_accuracy(r) for s, r in records.items()}
        ok = [s for s in plan.seeds if accs.get(s) is not None]
        values = [accs[s] for s in ok]
        row: dict[str, Any] = {
            "arm": arm.label,
            "plugins": list(arm.plugins),
            "overrides": dict(arm.overrides),
            "per_seed": {str(s): accs.get(s) for s in plan.seeds},
            "eval_std_per_seed": {
                str(s): 100 * r["distilled"]["std"] for s, r in records.items() if r.get("distilled")
            },
            "errors": {str(s): r["error"] for s, r in records.items() if "error" in r},
            "mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None,
            "s_per_iter": statistics.fmean([records[s]["distill_s_per_iter"] for s in ok]) if ok else None,
            "stores": sorted({c.store for c in plan.cells if c.arm == arm}),
        }
        base = {s: _cell_accuracy(r) for s, r in by_arm[base_label].items()}
        pairs = [accs[s] - base[s] for s in ok if base.get(s) is not None]
        if arm.label != base_label and pairs:
            row["delta"], row["delta_ci95"] = paired_interval(pairs)
            row["wins"] = sum(d > 0 for d in pairs)
            row["pairs"] = len(pairs)
        rows.append(row)
    real = {
        str(c.seed): 100 * cells[c.out_dir]["random_real"]["mean"]
        for c in plan.cells
        if c.arm is None and "random_real" in cells.get(c.out_dir, {})
    }
    return {
        "base": base_label,
        "seeds": plan.seeds,
        "arms": rows,
        "random_real": real,
        "stores": stores,
        "config": to_dict(plan.base),
    }


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _expert_accuracies(accs: list[float]) -> str:
    """A few experts' final test accuracies listed; many as their mean and range."""
    if len(accs) <= 3:
        return ", ".join(f"{a:.1f}" for a in accs) or "–"
    return f"{statistics.fmean(accs):.1f} ({min(accs):.1f}–{max(accs):.1f}, {len(accs)} experts)"


def budget_line(config: RunConfig) -> str:
    """The budget of an ablation in one line (what a reader needs to judge the figures)."""
    d, e, x = config.distill, config.evaluate, config.experts
    return (
        f"{config.data.dataset}, {config.model.name}, ipc {d.ipc}; experts {x.count} × {x.epochs} epochs; "
        f"N {d.syn_steps}, M {d.expert_epochs}, T⁺ {d.max_start_epoch}, {d.iterations} iterations, "
        f"lr_img {d.lr_img:g}, α₀ {d.lr_init:g}; evaluation {e.runs} nets × {e.epochs} epochs "
        f"(SGD momentum {e.momentum}, wd {e.weight_decay}, lr ×{e.lr_decay_factor} at half, DSA), "
        "final-epoch test accuracy"
    )


def markdown(summary: dict[str, Any], plan: Plan, command: str) -> str:
    """``ablation.md``: the command, the budget, and one row per arm."""
    seeds = plan.seeds
    lines = [
        "# Ablation",
        "",
        "```",
        command,
        "```",
        "",
        f"Budget: {budget_line(plan.base)}. Seeds {', '.join(map(str, seeds))} vary "
        + (
            "experts, distillation and evaluation (each seed trains its own experts). "
            if plan.experts_per_seed
            else "distillation and evaluation; experts are shared (trained once per recipe with the "
            "base seed). "
        )
        + f"Δ = paired difference to `{summary['base']}` per seed, mean and 95 % t interval over seeds; "
        "wins = seeds where the arm is better.",
        "",
        "| arm | "
        + " | ".join(f"seed {s}" for s in seeds)
        + " | mean ± std over seeds | Δ vs base (95 % CI) "
        "| wins | s/it | expert test acc |",
        "|---|" + "---|" * len(seeds) + "---|---|---|---|---|",
    ]
    for row in summary["arms"]:
        per_seed = []
        for s in seeds:
            acc, err = row["per_seed"].get(str(s)), row["errors"].get(str(s))
            spread = row["eval_std_per_seed"].get(str(s))
            per_seed.append("failed" if err else f"{_fmt(acc)} ± {_fmt(spread)}" if acc is not None else "–")
        delta = f"{row['delta']:+.2f} ± {_fmt(row['delta_ci95'])}" if "delta" in row else "— (base)"
        wins = f"{row['wins']}/{row['pairs']}" if "wins" in row else ""
        expert = [
            a for store in row["stores"] for a in summary["stores"].get(store, {}).get("expert_test_acc", [])
        ]
        expert_text = _expert_accuracies([100 * a for a in expert if a is not None])
        lines.append(
            f"| {row['arm']} | "
            + " | ".join(per_seed)
            + f" | **{_fmt(row['mean'])}** ± {_fmt(row['std'])} | "
            f"{delta} | {wins} | {_fmt(row['s_per_iter'], 3)} | {expert_text} |"
        )
    if summary["random_real"]:
        real = [summary["random_real"].get(str(s)) for s in seeds]
        lines.append(
            "| random real (α₀) | "
            + " | ".join(_fmt(r) for r in real)
            + f" | {_fmt(statistics.fmean([r for r in real if r is not None]))} | | | | |"
        )
    errors = [(row["arm"], s, e) for row in summary["arms"] for s, e in row["errors"].items()]
    if errors:
        lines += ["", "Failed cells:", *(f"- {arm}, seed {s}: {e}" for arm, s, e in errors)]
    return "\n".join(lines) + "\n"


def chart(summary: dict[str, Any], path: Path) -> bool:
    """``ablation.png``: Δ vs the base arm per arm (mean over seeds), its paired 95 % interval drawn.

    Returns False (and writes nothing) when matplotlib is not installed.
    """
    from distillkit.plotting import pyplot

    plt = pyplot()
    if plt is None:
        return False
    rows = [r for r in summary["arms"] if "delta" in r]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.8))
    deltas = [r["delta"] for r in rows]
    half = [0.0 if math.isnan(r["delta_ci95"]) else r["delta_ci95"] for r in rows]
    colours = ["#2b7bba" if d >= 0 else "#d95f02" for d in deltas]
    y = list(range(len(rows)))
    ax.barh(y, deltas, xerr=half, color=colours, capsize=4)
    ax.axvline(0, color="#444444", linewidth=1)
    ax.set_yticks(y, [r["arm"] for r in rows])
    ax.invert_yaxis()
    base = next(r for r in summary["arms"] if r["arm"] == summary["base"])
    ax.set_xlabel(
        f"Δ accuracy vs {summary['base']} ({_fmt(base['mean'])} %), percentage points; "
        f"seeds {', '.join(map(str, summary['seeds']))}"
    )
    ax.set_title("ablation: mean paired Δ over seeds, whiskers = 95 % t interval")
    for i, row in enumerate(rows):
        ax.annotate(
            f"{_fmt(row['mean'])} %",
            (deltas[i] + (half[i] if deltas[i] >= 0 else -half[i]), i),
            xytext=(4 if deltas[i] >= 0 else -4, 0),
            textcoords="offset points",
            ha="left" if deltas[i] >= 0 else "right",
            va="center",
            fontsize=8,
        )
    ax.margins(x=0.25)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
