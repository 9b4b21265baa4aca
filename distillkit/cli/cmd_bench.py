"""``bench``: s/it, memory, FLOPs, expert throughput and store size."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from distillkit.cli.app import app, cli_errors, out
from distillkit.cli.options import (
    ConfigFile,
    DataPath,
    Dataset,
    Debug,
    Device,
    ExpertsStore,
    Ipc,
    JsonOut,
    Memory,
    Model,
    Plugins,
    Preset,
    Quiet,
    Seed,
    Sets,
    astuple,
    collect_overrides,
    resolve,
)
from distillkit.cli.render import RichReporter, print_bench


@app.command("bench")
def bench_cmd(
    preset: Preset = None,
    ipc: Ipc = None,
    plugins: Plugins = None,
    sets: Sets = None,
    experts: ExpertsStore = None,
    warmup: Annotated[int, typer.Option(help="Iterations run before timing starts.")] = 5,
    window: Annotated[int, typer.Option(help="Timed iterations; s/it is their median.")] = 20,
    sweep: Annotated[
        str | None,
        typer.Option(
            metavar="KEY=V1,V2,...",
            help="Measure distillation once per value, e.g. distill.syn_steps=20,80.",
        ),
    ] = None,
    json_out: JsonOut = False,
    json_path: Annotated[
        Path | None, typer.Option("--json-out", metavar="PATH", help="Also write every figure to PATH.")
    ] = None,
    device: Device = None,
    memory: Memory = None,
    skip_experts_throughput: Annotated[
        bool,
        typer.Option("--skip-experts-throughput", help="Do not time one fresh expert epoch.", metavar=""),
    ] = False,
    whole_run: Annotated[
        bool,
        typer.Option(
            "--whole-run",
            help="Also time one whole run (fresh experts, distillation, evaluation) in a temporary folder.",
            metavar="",
        ),
    ] = False,
    dataset: Dataset = None,
    data_path: DataPath = None,
    model: Model = None,
    config: ConfigFile = None,
    seed: Seed = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Measure s/it, peak memory, FLOPs, expert throughput and store size (default preset fmnist-cpu)."""
    with cli_errors(debug):
        from distillkit.bench import BenchSettings, parse_sweep

        key, values = parse_sweep(sweep) if sweep is not None else (None, ())
        overrides = collect_overrides(
            sets,
            dataset=dataset,
            data_path=data_path,
            model=model,
            ipc=ipc,
            seed=seed,
            device=device,
            memory=memory,
        )
        cfg, host, _sources = astuple(
            resolve(preset, config, overrides, plugins, default_dataset="fashion-mnist")
        )
        import shlex

        from distillkit.artifacts import atomic_write_json
        from distillkit.bench import run_bench

        settings = BenchSettings(warmup, window, key, values, not skip_experts_throughput, whole_run)
        reporter = RichReporter(not quiet)
        try:
            result = run_bench(cfg, host, settings, experts, reporter)
        finally:
            reporter.close()
        result["command"] = shlex.join(["distillkit", *sys.argv[1:]])
        if json_path is not None:
            atomic_write_json(json_path, result)
        if json_out:
            out.print_json(json.dumps(result))
        else:
            print_bench(result)
