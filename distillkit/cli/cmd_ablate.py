"""``ablate``: plugin sets × seeds, paired by seed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from distillkit.cli.options import (
    ConfigFile,
    DataPath,
    Dataset,
    Debug,
    Device,
    Ipc,
    Memory,
    Model,
    Preset,
    Quiet,
    Sets,
    collect_overrides,
)
from distillkit.cli.render import RichReporter
from distillkit.errors import ExitCode

if TYPE_CHECKING:
    pass

from distillkit.cli.app import app, cli_errors, err, out


@app.command("ablate")
def ablate_cmd(
    seeds: Annotated[str, typer.Option(help="Seeds, e.g. 0,1,2 or 0-4; arms are paired by seed.")] = "0,1,2",
    jobs: Annotated[int, typer.Option(help="Cells run in parallel, each pinned to cores/jobs threads.")] = 1,
    arms: Annotated[
        str | None,
        typer.Option(
            help="Plugin sets separated by ';', e.g. 'plain;smooth;smooth,bil'; KEY=VALUE tokens set "
            "options for that arm. Default: plain, each technique alone, and the cumulative order "
            "of AST's Table 7 (smooth, +kmeans-init, +bil, +itm, +wp).",
        ),
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="Ablation folder (default runs/ablate-<time>).")
    ] = None,
    experts_per_seed: Annotated[
        bool,
        typer.Option(
            "--experts-per-seed",
            help="Each seed trains its own experts (default: one store per recipe, shared by all seeds).",
            metavar="",
        ),
    ] = False,
    dataset: Dataset = None,
    data_path: DataPath = None,
    model: Model = None,
    ipc: Ipc = None,
    preset: Preset = None,
    config: ConfigFile = None,
    sets: Sets = None,
    device: Device = None,
    memory: Memory = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Run a base config with several plugin sets over several seeds: table, JSON and chart."""
    with cli_errors(debug):
        import shlex
        import time

        from distillkit import ablate, ablate_report
        from distillkit.artifacts import atomic_write_bytes, atomic_write_json
        from distillkit.errors import ConfigError

        if jobs < 1:
            raise ConfigError(f"--jobs must be >= 1, got {jobs}")
        arm_list = ablate.parse_arms(arms)
        seed_list = ablate.parse_seeds(seeds)
        overrides = collect_overrides(
            sets, dataset=dataset, data_path=data_path, model=model, ipc=ipc, device=device, memory=memory
        )
        if "seed" in overrides:
            raise ConfigError("ablate takes its seeds from --seeds, not --set seed=...")
        target = out_dir or Path("runs") / time.strftime("ablate-%Y%m%d-%H%M%S")
        plan = ablate.plan_ablation(
            arm_list, seed_list, target, preset, config, overrides, experts_per_seed=experts_per_seed
        )
        ablate.check_out(target, plan)
        target.mkdir(parents=True, exist_ok=True)
        atomic_write_json(target / "ablation-plan.json", plan.identity())
        reporter = RichReporter(not quiet)
        reporter.start("ablate", len(plan.stores) + len(plan.cells))

        def done(name: str, record: dict[str, Any]) -> None:
            status = "failed: " + record["error"] if "error" in record else "done"
            reporter.advance(finished=name, status=status)

        try:
            stores, cells = ablate.execute(plan, jobs, done)
        finally:
            reporter.close()
        summary = ablate_report.summarise(plan, stores, cells)
        command = shlex.join(["distillkit", *sys.argv[1:]])
        atomic_write_json(target / "ablation.json", {"command": command, **summary})
        atomic_write_bytes(target / "ablation.md", ablate_report.markdown(summary, plan, command).encode())
        if not ablate_report.chart(summary, target / "ablation.png"):
            from distillkit.plotting import PLOTS_HINT

            err.print(f"Warning: no ablation.png, matplotlib is not installed ({PLOTS_HINT})", markup=False)
        out.print(
            ablate_report.markdown(summary, plan, command), markup=False, highlight=False, soft_wrap=True
        )
        out.print(f"ablation folder: {target}")
        if any(row["errors"] for row in summary["arms"]):
            raise typer.Exit(int(ExitCode.RUN_FAILED))
