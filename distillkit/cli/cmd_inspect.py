"""``inspect-experts``: how smooth and how accurate the experts of one or more stores are."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from distillkit.cli.app import app, cli_errors, out
from distillkit.cli.options import Debug, JsonOut, PlotFile

if TYPE_CHECKING:
    from distillkit.experts.smoothness import StoreSmoothness

AVG_VAR = "AvgVar = mean over epochs t of ‖θt − θt+1‖² (AST paper Table 6; a mean, despite the name)"


@app.command("inspect-experts")
def inspect_experts_cmd(
    stores: Annotated[
        list[Path], typer.Argument(help="Trajectory stores (folders written by `distillkit experts`/`run`).")
    ],
    plot: PlotFile = None,
    json_out: JsonOut = False,
    debug: Debug = False,
) -> None:
    """Per-epoch ‖θt − θt+1‖², AvgVar and expert accuracies of stores, side by side (AST Fig. 4)."""
    with cli_errors(debug):
        from distillkit.experts.smoothness import inspect_stores
        from distillkit.experts.smoothness_plot import plot_smoothness, require_matplotlib
        from distillkit.experts.store import describe_epochs

        if plot is not None:
            require_matplotlib()  # before any work: a missing extra is one line, not a late failure
        measured = inspect_stores(stores)
        if plot is not None:
            plot_smoothness(measured, plot)
        baseline = measured[0].avg_var
        if json_out:
            payload = {
                "avg_var": AVG_VAR,
                "stores": [m.to_json(baseline) for m in measured],
                "plot": None if plot is None else str(plot),
            }
            out.print_json(json.dumps(payload))
            return
        out.print(summary_table(measured))
        out.print(epoch_table(measured))
        for i, m in enumerate(measured, 1):
            if m.missing:
                out.print(
                    f"[{i}] {m.root}: no ‖θt − θt+1‖² for epochs t = {describe_epochs(m.missing)} "
                    "(snapshot t or t + 1 not stored; experts.store_epochs=needed keeps only some)",
                    highlight=False,
                    markup=False,
                    soft_wrap=True,
                )
        if plot is not None:
            out.print(f"figure → {plot}", highlight=False)


def _num(value: float | None, fmt: str = ".4g") -> str:
    return "-" if value is None else format(value, fmt)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _spread(store: StoreSmoothness, epoch: int, what: str, fmt: str, scale: float = 1.0) -> str:
    """Mean over experts, ± their standard deviation when there are several."""
    mean, std = store.mean_std(epoch, what)
    if mean is None:
        return "-"
    text = format(scale * mean, fmt)
    return text if std is None else f"{text} ± {format(scale * std, fmt)}"


def summary_table(measured: list[StoreSmoothness]) -> Table:
    table = Table(title=f"expert stores · {AVG_VAR}")
    for column in ("#", "recipe", "store", "experts", "epochs", "AvgVar", "× [1]", "final test acc %"):
        if column in ("recipe", "store"):
            table.add_column(column, overflow="fold")
        else:
            table.add_column(column, justify="right", overflow="fold")
    baseline = measured[0].avg_var
    for i, m in enumerate(measured, 1):
        table.add_row(
            f"[{i}]",
            escape(m.label),
            escape(m.root.name),
            str(len(m.experts)),
            str(m.epochs),
            _num(m.avg_var),
            _num(m.ratio_to(baseline), ".2f"),
            _pct(m.final_test_acc),
        )
    return table


def epoch_table(measured: list[StoreSmoothness]) -> Table:
    """One row per epoch t; per store the mean over experts (± std) of Δ², test and train accuracy."""
    table = Table(title="per epoch t (0-based): ‖θt − θt+1‖², then accuracy (%) after epoch t")
    table.add_column("t", justify="right")
    for i, _ in enumerate(measured, 1):
        for column in ("‖Δθ‖²", "test", "train"):
            table.add_column(f"[{i}] {column}", justify="right", overflow="fold")
    for t in range(max(m.epochs for m in measured)):
        cells = [str(t)]
        for m in measured:
            cells += [
                _spread(m, t, "change", ".4g"),
                _spread(m, t, "test_acc", ".2f", 100),
                _spread(m, t, "train_acc", ".2f", 100),
            ]
        table.add_row(*cells)
    return table
