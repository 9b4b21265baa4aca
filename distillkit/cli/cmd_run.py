"""``run``, ``experts``, ``convert-store`` and ``distill``: the pipeline stages."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from distillkit.cli.cmd_report import refresh_report
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
    Smoke,
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
    no_report: Annotated[
        bool, typer.Option("--no-report", help="Do not write report.html at the end.", metavar="")
    ] = False,
    smoke: Smoke = False,
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
        options = (preset, config, plugins, out_dir, experts, smoke or None)
        continued = _continued("run", resume, out_dir, max_restarts, device, overrides, options)
        extending = False
        if continued is not None:
            resume, cfg, host, invocation, extending = continued
            experts = Path(invocation["experts"]) if invocation.get("experts") else None
            sources = None
        else:
            overrides.update({"device": device} if device else {})
            cfg, host, sources = astuple(resolve(preset, config, overrides, plugins, smoke=smoke))
        if relaunch(ctx, nproc, max_restarts):
            return
        from distillkit import api, rundir

        with joined_world(cfg.device) as world:
            target = Path(
                world.main_decides(lambda: str(_claim_run_dir(cfg, out_dir, overwrite, resume, extending)))
            )
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
            if not no_report:
                refresh_report(target)


def _continued(
    command: str,
    resume: Path | None,
    out_dir: Path | None,
    max_restarts: int,
    device: str | None,
    overrides: dict[str, Any],
    options: tuple[Any, ...],
) -> tuple[Path, RunConfig, PluginHost, dict[str, Any], bool] | None:
    """The run to continue and its recorded config, or None for a new run.

    That is ``--resume RUN`` (refused beside config ``options``), or the run a torchrun restart
    left in ``--out``; the last item says whether ``--set distill.iterations`` extends it.
    """
    restarted = _restarted_run(out_dir or resume, max_restarts)
    if resume is None and restarted is None:
        return None
    if restarted is None:
        _check_resume_alone(*options)
    run_dir = resume or restarted
    return (run_dir, *_recorded(run_dir, command, device, overrides))


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


def _check_resume_alone(*options: Any) -> None:
    """``--resume`` continues with the recorded config, so config options would be silently ignored.

    ``--set`` (and the key shortcuts) pass: :func:`distillkit.resolve.extended_config` accepts
    an unchanged value or a raised ``distill.iterations`` and refuses anything else by name.
    """
    if any(option is not None for option in options):
        from distillkit.errors import ConfigError

        raise ConfigError(
            "--resume continues with the run's recorded config and cannot be combined with config options",
            hint="drop --preset/--config/--plugins/--smoke/--out/--experts; only --device and "
            "--set distill.iterations=N (to extend the run) may be given",
        )


def _claim_run_dir(
    cfg: RunConfig, out_dir: Path | None, overwrite: bool, resume: Path | None, extending: bool = False
) -> Path:
    """The locked run directory: the one to resume, or a new one (never one holding another run).

    The device is checked first, so an unusable ``--device`` leaves no directory behind. A
    finished run is resumed only to extend it (``extending``: more iterations than recorded).
    """
    from distillkit import rundir
    from distillkit.runtime import resolve_device

    resolve_device(cfg.device)

    if resume is not None:
        if not extending:
            rundir.refuse_finished(resume)
        return rundir.lock_run_dir(resume)
    return rundir.prepare_run_dir(out_dir or rundir.default_run_dir(cfg), overwrite)


def _recorded(
    run_dir: Path, command: str, device: str | None, overrides: dict[str, Any]
) -> tuple[RunConfig, PluginHost, dict, bool]:
    """The recorded config (with a raised ``distill.iterations``, if given), host, invocation, and
    whether this resume extends the run."""
    from distillkit.errors import ConfigError
    from distillkit.resolve import extended_config, recorded_run

    cfg, host, invocation = recorded_run(run_dir, device)
    if invocation.get("command") != command:
        raise ConfigError(
            f"{run_dir} was started by `distillkit {invocation.get('command')}`, not `distillkit {command}`",
            hint=f"resume it with: distillkit {invocation.get('command')} --resume {run_dir}",
        )
    if not overrides:
        return cfg, host, invocation, False
    extended = extended_config(cfg, overrides)
    return extended, host, invocation, extended.distill.iterations > cfg.distill.iterations


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
    smoke: Smoke = False,
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
        cfg, host, _sources = astuple(resolve(preset, config, overrides, plugins, smoke=smoke))
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
    smoke: Smoke = False,
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
        options = (preset, config, plugins, out_dir, experts, smoke or None)
        continued = _continued("distill", resume, out_dir, max_restarts, device, overrides, options)
        extending = False
        if continued is not None:
            resume, cfg, host, invocation, extending = continued
            experts = Path(invocation["experts"])
            sources = None
        elif experts is None:
            from distillkit.errors import ConfigError

            raise ConfigError("distill needs --experts STORE (or --resume RUN_DIR)")
        else:
            overrides.update({"device": device} if device else {})
            cfg, host, sources = astuple(resolve(preset, config, overrides, plugins, smoke=smoke))
        if relaunch(ctx, nproc, max_restarts):
            return
        from distillkit import api, rundir
        from distillkit.experts.store import TrajectoryStore

        with joined_world(cfg.device) as world:
            store = TrajectoryStore.open(experts)
            data = api.prepare_data(cfg.data)
            api.check_ipc(cfg.distill.ipc, data)
            target = Path(
                world.main_decides(lambda: str(_claim_run_dir(cfg, out_dir, overwrite, resume, extending)))
            )
            if world.is_main and resume is None:
                api.record_invocation(target, cfg, "distill", experts, sources)
            elif world.is_main:
                api.record_resume(target, cfg, "distill")
            reporter = reporter_for(world.rank, target, quiet)
            try:
                with rundir.discard_on_bad_input(target):
                    job = api.distill_job(cfg, host, data, store, world)
                    snapshots = api.snapshot_writer(cfg, host, data, store, target) if world.is_main else None
                    result = api.distill(
                        job,
                        target,
                        reporter,
                        resume=resume is not None,
                        release_data=True,
                        snapshots=snapshots,
                    )
            finally:
                reporter.close()
            if not world.is_main:
                return
        api.save_distilled(target, cfg, host, data, result, store)
        out.print(
            f"distilled {len(result.images)} images in {result.seconds:.1f}s "
            f"({result.seconds_per_iteration:.3f} s/it), learned lr {result.lr:.4g} → {target}"
        )
