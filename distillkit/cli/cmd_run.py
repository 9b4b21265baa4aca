"""``run``, ``experts``, ``convert-store`` and ``distill``: the pipeline stages."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from distillkit.cli.launch import MaxRestarts, Nproc, joined_world, relaunch
from distillkit.cli.options import (
    ConfigFile,
    DataPath,
    Dataset,
    Debug,
    Device,
    Download,
    EvalModels,
    ExpertsStore,
    Ipc,
    Memory,
    Model,
    OutDir,
    Overwrite,
    Plugins,
    Preset,
    Quiet,
    Resume,
    Seed,
    Sets,
    StoreOut,
    astuple,
    collect_overrides,
    resolve,
)
from distillkit.cli.render import RichReporter, print_summary, reporter_for

if TYPE_CHECKING:
    from distillkit.config import RunConfig
    from distillkit.host import PluginHost

from distillkit.cli.app import app, cli_errors, out


@app.command("run")
def run_cmd(
    ctx: typer.Context,
    dataset: Dataset = None,
    data_path: DataPath = None,
    download: Download = False,
    model: Model = None,
    ipc: Ipc = None,
    plugins: Plugins = None,
    preset: Preset = None,
    config: ConfigFile = None,
    sets: Sets = None,
    seed: Seed = None,
    device: Device = None,
    out_dir: OutDir = None,
    experts: ExpertsStore = None,
    eval_models: EvalModels = None,
    overwrite: Overwrite = False,
    memory: Memory = None,
    resume: Resume = None,
    nproc: Nproc = 1,
    max_restarts: MaxRestarts = 0,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Train experts (cached), distill, evaluate against random real images. No arguments: digits.

    Over several ranks (``--nproc N`` or ``torchrun``) every stage is shared out; rank 0
    prints and writes the run files, the others log to ``RUN_DIR/logs/rank-<r>.log``.
    """
    with cli_errors(debug):
        overrides = collect_overrides(
            sets,
            dataset=dataset,
            data_path=data_path,
            download=download,
            model=model,
            ipc=ipc,
            seed=seed,
            eval_models=eval_models,
            memory=memory,
        )
        restarted = _restarted_run(out_dir or resume, max_restarts)
        if resume is not None or restarted is not None:
            if restarted is None:
                _check_resume_alone(overrides, preset, config, plugins, out_dir, experts)
            resume = resume or restarted
            cfg, host, invocation = _recorded(resume, "run", device)
            experts = Path(invocation["experts"]) if invocation.get("experts") else None
            sources = None
        else:
            overrides.update({"device": device} if device else {})
            cfg, host, sources = astuple(resolve(preset, config, overrides, plugins))
        if relaunch(ctx, nproc, max_restarts):
            return
        from distillkit import api, rundir

        with joined_world(cfg.device) as world:
            target = Path(world.main_decides(lambda: str(_claim_run_dir(cfg, out_dir, overwrite, resume))))
            reporter = reporter_for(world.rank, target, quiet)
            try:
                with rundir.discard_on_bad_input(target):
                    summary = api.run(
                        cfg,
                        host,
                        target,
                        experts,
                        reporter,
                        resume=resume is not None,
                        sources=sources,
                        world=world,
                    )
            finally:
                reporter.close()
            if world.is_main:
                print_summary(summary, target)


def _restarted_run(out_dir: Path | None, max_restarts: int) -> Path | None:
    """The run directory to resume when torchrun restarts a failed job (``--max-restarts``).

    A restarted worker runs the original command line again; it continues the run the failed
    attempt left in ``--out`` (which a job that may restart must therefore name).
    """
    import os

    from distillkit.errors import ConfigError

    restarts = max_restarts or int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or "0")
    if restarts > 0 and out_dir is None:
        raise ConfigError(
            "a job that may restart (--max-restarts) needs --out RUN_DIR, where the restarted ranks find it",
            hint="add --out runs/NAME",
        )
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or "0")
    if attempt > 0 and out_dir is not None and (out_dir / "invocation.json").exists():
        return out_dir
    return None


def _check_resume_alone(overrides: dict[str, Any], *options: Any) -> None:
    """``--resume`` continues with the recorded config, so config options would be silently ignored."""
    if overrides or any(option is not None for option in options):
        from distillkit.errors import ConfigError

        raise ConfigError(
            "--resume continues with the run's recorded config and cannot be combined with config options",
            hint="drop --set/--preset/--config/--plugins/--out/--experts/--ipc...; only --device may change",
        )


def _claim_run_dir(cfg: RunConfig, out_dir: Path | None, overwrite: bool, resume: Path | None) -> Path:
    """The locked run directory: the one to resume, or a new one (never one holding another run).

    The device is checked first, so an unusable ``--device`` leaves no directory behind.
    """
    from distillkit import rundir
    from distillkit.runtime import resolve_device

    resolve_device(cfg.device)

    if resume is not None:
        rundir.refuse_finished(resume)
        return rundir.lock_run_dir(resume)
    return rundir.prepare_run_dir(out_dir or rundir.default_run_dir(cfg), overwrite)


def _recorded(run_dir: Path, command: str, device: str | None) -> tuple[RunConfig, PluginHost, dict]:
    from distillkit.errors import ConfigError
    from distillkit.resolve import recorded_run

    cfg, host, invocation = recorded_run(run_dir, device)
    if invocation.get("command") != command:
        raise ConfigError(
            f"{run_dir} was started by `distillkit {invocation.get('command')}`, not `distillkit {command}`",
            hint=f"resume it with: distillkit {invocation.get('command')} --resume {run_dir}",
        )
    return cfg, host, invocation


@app.command("experts")
def experts_cmd(
    ctx: typer.Context,
    dataset: Dataset = None,
    data_path: DataPath = None,
    download: Download = False,
    model: Model = None,
    plugins: Plugins = None,
    preset: Preset = None,
    config: ConfigFile = None,
    sets: Sets = None,
    seed: Seed = None,
    device: Device = None,
    out_dir: StoreOut = None,
    nproc: Nproc = 1,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Train expert trajectories into a store (finished experts with the same manifest are kept).

    Over several ranks (``--nproc N`` or ``torchrun``) the ranks share the missing experts.
    """
    with cli_errors(debug):
        overrides = collect_overrides(
            sets,
            dataset=dataset,
            data_path=data_path,
            download=download,
            model=model,
            seed=seed,
            device=device,
        )
        cfg, host, _sources = astuple(resolve(preset, config, overrides, plugins))
        if relaunch(ctx, nproc):
            return
        from distillkit import api

        with joined_world(cfg.device) as world:
            data = api.prepare_data(cfg.data)
            reporter = RichReporter(not quiet and world.is_main)
            try:
                store = api.train_experts(cfg, host, data, out_dir, reporter, world)
            finally:
                reporter.close()
            if not world.is_main:
                return
        table = Table(title=f"experts in {store.root}")
        for column in ("expert", "epochs", "final test acc", "seconds"):
            table.add_column(column, justify="right")
        for entry in store.manifest.experts:
            accs = entry.get("test_acc") or []
            table.add_row(
                str(entry["index"]),
                str(entry["epochs"]),
                f"{100 * accs[-1]:.2f} %" if accs else "-",
                f"{entry.get('seconds', 0):.1f}",
            )
        out.print(table)


@app.command("convert-store")
def convert_store_cmd(
    source: Annotated[Path, typer.Argument(help="An existing trajectory store.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the converted store.")],
    dtype: Annotated[str, typer.Option("--dtype", help="float32, float16, bfloat16 or int8.")] = "int8",
    debug: Debug = False,
) -> None:
    """Re-encode a store's experts in another dtype (int8: about a quarter of MTT's bytes)."""
    with cli_errors(debug):
        from distillkit.experts.convert import convert_store
        from distillkit.experts.store import TrajectoryStore

        target = convert_store(TrajectoryStore.open(source), out_dir, dtype)
        before = sum(p.stat().st_size for p in source.glob("expert_*.safetensors"))
        after = sum(p.stat().st_size for p in target.root.glob("expert_*.safetensors"))
        out.print(
            f"{len(target.finished())} experts → {target.root} ({dtype}): "
            f"{before / 1e3:.1f} KB → {after / 1e3:.1f} KB ({after / max(before, 1):.2f}×)"
        )


@app.command("distill")
def distill_cmd(
    ctx: typer.Context,
    experts: Annotated[Path | None, typer.Option("--experts", help="Trajectory store to match.")] = None,
    dataset: Dataset = None,
    data_path: DataPath = None,
    model: Model = None,
    ipc: Ipc = None,
    plugins: Plugins = None,
    preset: Preset = None,
    config: ConfigFile = None,
    sets: Sets = None,
    seed: Seed = None,
    device: Device = None,
    out_dir: OutDir = None,
    overwrite: Overwrite = False,
    memory: Memory = None,
    resume: Resume = None,
    nproc: Nproc = 1,
    max_restarts: MaxRestarts = 0,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Distill from an existing trajectory store; writes the synthetic set (no evaluation).

    Over several ranks (``--nproc N`` or ``torchrun``) each rank matches its own segments.
    """
    with cli_errors(debug):
        overrides = collect_overrides(
            sets, dataset=dataset, data_path=data_path, model=model, ipc=ipc, seed=seed, memory=memory
        )
        restarted = _restarted_run(out_dir or resume, max_restarts)
        if resume is not None or restarted is not None:
            if restarted is None:
                _check_resume_alone(overrides, preset, config, plugins, out_dir, experts)
            resume = resume or restarted
            cfg, host, invocation = _recorded(resume, "distill", device)
            experts = Path(invocation["experts"])
            sources = None
        elif experts is None:
            from distillkit.errors import ConfigError

            raise ConfigError("distill needs --experts STORE (or --resume RUN_DIR)")
        else:
            overrides.update({"device": device} if device else {})
            cfg, host, sources = astuple(resolve(preset, config, overrides, plugins))
        if relaunch(ctx, nproc, max_restarts):
            return
        from distillkit import api, rundir
        from distillkit.experts.store import TrajectoryStore

        with joined_world(cfg.device) as world:
            store = TrajectoryStore.open(experts)
            data = api.prepare_data(cfg.data)
            api.check_ipc(cfg.distill.ipc, data)
            target = Path(world.main_decides(lambda: str(_claim_run_dir(cfg, out_dir, overwrite, resume))))
            if resume is None and world.is_main:
                api.record_invocation(target, cfg, "distill", experts, sources)
            reporter = reporter_for(world.rank, target, quiet)
            try:
                with rundir.discard_on_bad_input(target):
                    job = api.distill_job(cfg, host, data, store, world)
                    result = api.distill(job, target, reporter, resume=resume is not None, release_data=True)
            finally:
                reporter.close()
            if not world.is_main:
                return
        api.save_distilled(target, cfg, host, data, result, store)
        out.print(
            f"distilled {len(result.images)} images in {result.seconds:.1f}s "
            f"({result.seconds_per_iteration:.3f} s/it), learned lr {result.lr:.4g} → {target}"
        )
