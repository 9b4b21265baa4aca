"""``evaluate``: a run's set again, or another tool's (``--mtt``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from distillkit.cli.cmd_report import refresh_report
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
            "lr_<tag>.pt (MTT, AST, DATM; tensors only), evaluated under this config's protocol. "
            "Float labels [N, classes] are soft-label logits (DATM).",
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
    snapshot: Annotated[
        int | None,
        typer.Option(
            help="With RUN_DIR: evaluate snapshot ITERATION (in RUN_DIR/snapshots/), not the final set."
        ),
    ] = None,
    runs: Annotated[int | None, typer.Option(help="Networks per model (= --set evaluate.runs=K).")] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Epochs per network (= --set evaluate.epochs=E).")
    ] = None,
    json_out: JsonOut = False,
    nproc: Nproc = 1,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Evaluate a distilled set again (other architectures with --eval-models), or another tool's (--mtt).

    A run's set is evaluated beside the run's random-real baseline, and every evaluation is
    appended to RUN_DIR/evaluation.json (or --out's), so earlier results are kept. Over several
    ranks (``--nproc N`` or ``torchrun``) the networks are shared out; rank 0 writes and prints.
    """
    with cli_errors(debug):
        from distillkit import api, evaluation_log, invocation
        from distillkit.artifacts import SYNTHETIC_TENSORS, load_synthetic, read_json, training_labels
        from distillkit.config import ConfigError, apply_overrides, from_dict
        from distillkit.interop import load_mtt_set
        from distillkit.rundir import lock_run_dir
        from distillkit.snapshots import load_snapshot, snapshot_dir, snapshot_stem
        from distillkit.validation import validate

        if (run_dir is None) == (mtt is None):
            raise ConfigError("evaluate takes a RUN_DIR or --mtt FOLDER (one of them)")
        overrides = _protocol_shortcuts(sets, runs, epochs)
        if mtt is not None:
            if snapshot is not None:
                raise ConfigError("--snapshot selects a set of RUN_DIR; --mtt takes --tag")
            overrides = collect_overrides(
                overrides,
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
            evaluated = {"kind": "mtt", "folder": str(mtt.resolve()), "tag": tag}
        else:
            if any(v is not None for v in (dataset, data_path, model, preset, config, seed, tag, out_dir)):
                raise ConfigError(
                    "a run is evaluated with its recorded config",
                    hint="only --eval-models, --set evaluate.*, --runs, --epochs, --snapshot, --device and "
                    "--json apply to RUN_DIR",
                )
            if not (run_dir / "config.json").exists():
                raise ConfigError(f"{run_dir} is not a run directory (no config.json)")
            if job_rank() in (None, 0) and not will_relaunch(nproc):  # the rank that writes
                lock_run_dir(run_dir)
            recorded = read_json(run_dir / "config.json", ConfigError, f"{run_dir} has no config.json")
            cfg = from_dict(recorded)
            cfg = apply_overrides(
                cfg, collect_overrides(overrides, device=device, eval_models=eval_models), set()
            )
            validate(cfg)
            if snapshot is None:
                images, labels, lr, meta, extra = load_synthetic(run_dir)
                label = str(run_dir)
                evaluated = {"kind": "final", "file": SYNTHETIC_TENSORS, "iteration": meta.get("iteration")}
            else:
                images, labels, lr, meta, extra = load_snapshot(run_dir, snapshot)
                label = f"{run_dir} (snapshot {snapshot})"
                file = snapshot_dir(run_dir).name + "/" + snapshot_stem(snapshot) + ".safetensors"
                evaluated = {"kind": "snapshot", "file": file, "iteration": snapshot}
            labels = training_labels(labels, extra)
            target = run_dir
        if relaunch(ctx, nproc):
            return
        with joined_world(cfg.device) as world:
            results = _evaluate_here(cfg, (images, labels, lr), run_dir, meta, quiet, world)
        if not world.is_main:
            return
        if target is not None:
            invocation.append_record(target, "evaluate", cfg.plugins)
            evaluation_log.append_entry(target, api.evaluation_entry("evaluate", cfg, evaluated, results, lr))
        _print_results(cfg, results, lr, label, json_out)
        if run_dir is not None:
            refresh_report(run_dir, announce=not json_out)


def _evaluate_here(
    cfg: RunConfig,
    distilled: tuple[torch.Tensor, torch.Tensor, float],
    run_dir: Path | None,
    meta: dict,
    quiet: bool,
    world: World,
) -> dict[str, dict[str, EvalResult]]:
    """Check the set against the dataset and evaluate it beside a run's random-real baseline.

    Over several ranks each evaluates its share of the networks; all return every result.
    """
    from distillkit import api
    from distillkit.config import ConfigError

    data = api.prepare_data(cfg.data)
    if run_dir is not None and meta.get("dataset") not in (None, data.dataset.name):
        raise ConfigError(
            f"{run_dir}: the synthetic set was distilled from {meta.get('dataset')}, but the run's "
            f"config names {data.dataset.name}",
            hint="the run directory was altered; evaluate the set with the dataset it came from",
        )
    api.check_synthetic_set(*distilled, data)
    sets = {"distilled": distilled}
    if run_dir is not None:
        on = api.device_for(cfg.device, cfg.deterministic)
        sets["random_real"] = (*api.random_real_set(cfg, data, on), cfg.distill.lr_init)
    reporter = RichReporter(not quiet and world.is_main)
    try:
        return api.evaluate_many(cfg, data, sets, reporter=reporter, world=world)
    finally:
        reporter.close()


def _print_results(
    cfg: RunConfig, results: dict[str, dict[str, EvalResult]], lr: float, label: str, json_out: bool
) -> None:
    """The distilled set's results as JSON, or a table with the random-real baseline when evaluated."""
    payload = {name: res.as_dict() for name, res in results["distilled"].items()}
    if json_out:
        out.print_json(json.dumps(payload))
        return
    from distillkit.evaluate import protocol_line

    baseline = f"; random real at lr {cfg.distill.lr_init:.4g}" if "random_real" in results else ""
    out.print(f"[dim]protocol: {protocol_line(cfg.evaluate, lr)}{baseline}[/]")
    rows = [("distilled", name, res) for name, res in payload.items()]
    rows += [("random real", name, res.as_dict()) for name, res in results.get("random_real", {}).items()]
    out.print(results_table(label, rows))


def _protocol_shortcuts(sets: list[str] | None, runs: int | None, epochs: int | None) -> list[str]:
    """``--runs K --epochs E`` as the ``--set evaluate.runs=K --set evaluate.epochs=E`` they stand for."""
    shortcuts = {"evaluate.runs": runs, "evaluate.epochs": epochs}
    return [*(sets or []), *(f"{key}={value}" for key, value in shortcuts.items() if value is not None)]
