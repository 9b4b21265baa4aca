"""``evaluate``: a run's set again, or another tool's (``--mtt``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from distillkit.cli.launch import Nproc, job_rank, joined_world, relaunch, will_relaunch
from distillkit.cli.options import (
    ConfigFile,
    DataPath,
    Dataset,
    Debug,
    Device,
    EvalModels,
    EvalSets,
    JsonOut,
    Model,
    Preset,
    Quiet,
    Seed,
    collect_overrides,
    resolve,
)
from distillkit.cli.render import RichReporter, results_table

if TYPE_CHECKING:
    import torch

    from distillkit.config import RunConfig
    from distillkit.distributed import World
    from distillkit.evaluate import EvalResult

from distillkit.cli.app import app, cli_errors, out


@app.command("evaluate")
def evaluate_cmd(
    ctx: typer.Context,
    run_dir: Annotated[
        Path | None, typer.Argument(help="A run directory holding synthetic.safetensors.")
    ] = None,
    mtt: Annotated[
        Path | None,
        typer.Option(
            "--mtt",
            help="Instead of a run: a folder with another tool's images_<tag>.pt, labels_<tag>.pt and "
            "lr_<tag>.pt (MTT, AST, DATM; tensors only), evaluated under this config's protocol.",
        ),
    ] = None,
    tag: Annotated[
        str | None, typer.Option(help="With --mtt: which <tag> (default best, or the only one).")
    ] = None,
    eval_models: EvalModels = None,
    dataset: Dataset = None,
    data_path: DataPath = None,
    model: Model = None,
    preset: Preset = None,
    config: ConfigFile = None,
    sets: EvalSets = None,
    seed: Seed = None,
    device: Device = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="With --mtt: also write evaluation.json here.")
    ] = None,
    json_out: JsonOut = False,
    nproc: Nproc = 1,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Evaluate a distilled set again (other architectures with --eval-models), or another tool's (--mtt).

    Over several ranks (``--nproc N`` or ``torchrun``) the networks are shared out; rank 0 writes and prints.
    """
    with cli_errors(debug):
        from distillkit.artifacts import load_synthetic, read_json
        from distillkit.config import ConfigError, apply_overrides, from_dict
        from distillkit.interop import load_mtt_set
        from distillkit.rundir import lock_run_dir
        from distillkit.validation import validate

        if (run_dir is None) == (mtt is None):
            raise ConfigError("evaluate takes a RUN_DIR or --mtt FOLDER (one of them)")
        if mtt is not None:
            overrides = collect_overrides(
                sets,
                dataset=dataset,
                data_path=data_path,
                model=model,
                seed=seed,
                device=device,
                eval_models=eval_models,
            )
            cfg = resolve(preset, config, overrides, None).config
            images, labels, lr, tag = load_mtt_set(mtt, tag)
            label, target, meta = f"{mtt} ({tag})", out_dir, {}
        else:
            if any(v is not None for v in (dataset, data_path, model, preset, config, seed, tag, out_dir)):
                raise ConfigError(
                    "a run is evaluated with its recorded config",
                    hint="only --eval-models, --set evaluate.*, --device and --json apply to RUN_DIR",
                )
            if not (run_dir / "config.json").exists():
                raise ConfigError(f"{run_dir} is not a run directory (no config.json)")
            if job_rank() in (None, 0) and not will_relaunch(nproc):  # the rank that writes
                lock_run_dir(run_dir)
            recorded = read_json(run_dir / "config.json", ConfigError, f"{run_dir} has no config.json")
            cfg = from_dict(recorded)
            cfg = apply_overrides(cfg, collect_overrides(sets, device=device, eval_models=eval_models), set())
            validate(cfg)
            images, labels, lr, meta, _extra = load_synthetic(run_dir)
            label, target = str(run_dir), run_dir
        if relaunch(ctx, nproc):
            return
        with joined_world(cfg.device) as world:
            results = _evaluate_here(cfg, images, labels, lr, run_dir, meta, quiet, world)
        if world.is_main:
            _report(cfg, results, lr, label, target, json_out)


def _evaluate_here(
    cfg: RunConfig,
    images: torch.Tensor,
    labels: torch.Tensor,
    lr: float,
    run_dir: Path | None,
    meta: dict,
    quiet: bool,
    world: World,
) -> dict[str, EvalResult]:
    """Check the set against the dataset and evaluate it (this rank's share of the networks)."""
    from distillkit import api
    from distillkit.config import ConfigError

    data = api.prepare_data(cfg.data)
    if run_dir is not None and meta.get("dataset") not in (None, data.dataset.name):
        raise ConfigError(
            f"{run_dir}: the synthetic set was distilled from {meta.get('dataset')}, but the run's "
            f"config names {data.dataset.name}",
            hint="the run directory was altered; evaluate the set with the dataset it came from",
        )
    api.check_synthetic_set(images, labels, lr, data)
    reporter = RichReporter(not quiet and world.is_main)
    try:
        return api.evaluate(cfg, data, images, labels, lr, reporter=reporter, world=world)
    finally:
        reporter.close()


def _report(
    cfg: RunConfig, results: dict[str, EvalResult], lr: float, label: str, target: Path | None, json_out: bool
) -> None:
    """Rank 0's part: merge into ``evaluation.json`` (when there is a target) and print."""
    from distillkit import api

    payload = {name: res.as_dict() for name, res in results.items()}
    if target is not None:
        api.merge_evaluation(target, payload, cfg)
    if json_out:
        out.print_json(json.dumps(payload))
    else:
        from distillkit.evaluate import protocol_line

        out.print(f"[dim]protocol: {protocol_line(cfg.evaluate, lr)}[/]")
        rows = [("distilled", name, res) for name, res in payload.items()]
        out.print(results_table(label, rows))
