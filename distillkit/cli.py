"""The ``distillkit`` command line (typer). The only module that prints or exits.

torch is imported inside command bodies, never at module level, so ``--help``
and ``list-plugins`` answer quickly.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from distillkit.errors import DistillkitError, ExitCode, os_error_exit_code

if TYPE_CHECKING:
    from distillkit.config import RunConfig
    from distillkit.host import PluginHost
    from distillkit.resolve import Resolved

app = typer.Typer(
    name="distillkit",
    help="Dataset distillation by trajectory matching (MTT + AST techniques as plugins).",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)

# -- shared options ---------------------------------------------------------------------

Dataset = Annotated[
    str | None,
    typer.Option(help="digits, mnist, fashion-mnist, cifar10, cifar100, svhn or imagefolder:PATH."),
]
DataPath = Annotated[Path | None, typer.Option("--data-path", help="Folder holding the dataset files.")]
Download = Annotated[
    bool,
    typer.Option("--download", help="Allow torchvision to download CIFAR/SVHN into --data-path."),
]
Model = Annotated[str | None, typer.Option(help="Network, e.g. convnet, convnet-w32, convnet-d4, resnet18.")]
Ipc = Annotated[int | None, typer.Option(help="Synthetic images per class.")]
Plugins = Annotated[
    str | None,
    typer.Option(
        "--plugins",
        "-p",
        help="Comma-separated plugins, e.g. smooth,kmeans-init,bil,itm,wp. None named = plain MTT.",
    ),
]
Preset = Annotated[
    list[str] | None,
    typer.Option(
        help="Named settings, comma-separated or repeated; later ones win. Dataset presets (digits, "
        "fmnist-cpu, fmnist-ref) set data/model/budget, method presets (ast-code) method choices. "
        "Default: the dataset's own preset. `distillkit config` shows what each layer set.",
    ),
]
ConfigFile = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML file with config keys (docs/config.md).")
]
Sets = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        metavar="KEY=VALUE",
        help="Override one config key; repeatable. e.g. distill.iterations=500, wp.alpha=0.05.",
    ),
]
Seed = Annotated[int | None, typer.Option(help="One seed drives the whole run.")]
Device = Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")]
OutDir = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Run directory (default runs/<time>-<dataset>-ipc<k>)."),
]
ExpertsStore = Annotated[
    Path | None,
    typer.Option("--experts", help="Use this existing trajectory store instead of training experts."),
]
EvalModels = Annotated[
    str | None,
    typer.Option("--eval-models", help="Comma-separated models for cross-architecture evaluation."),
]
Overwrite = Annotated[
    bool, typer.Option("--overwrite", help="Reuse an --out folder that already holds a run.")
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")]
Memory = Annotated[
    str | None,
    typer.Option(help="standard (keep the unrolled graph) or constant (exact recomputation, flat memory)."),
]
Resume = Annotated[
    Path | None,
    typer.Option("--resume", help="Continue this run directory from its newest checkpoint (its own config)."),
]
JsonOut = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@contextmanager
def cli_errors(debug: bool) -> Iterator[None]:
    """Map errors to one stderr line (+ hint) and the documented exit codes."""
    debug = debug or os.environ.get("DISTILLKIT_DEBUG") == "1"
    try:
        yield
    except DistillkitError as exc:
        if debug:
            err.print_exception()
        err.print(f"[bold red]Error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
        if exc.hint:
            err.print(f"Hint: {exc.hint}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(int(exc.exit_code)) from None
    except KeyboardInterrupt:
        err.print("Interrupted.")
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
    except typer.Exit:
        raise
    except OSError as exc:  # the environment: a full disk, a read-only or missing location, a long name
        if debug:
            err.print_exception()
        message, hint, code = describe_os_error(exc)
        err.print(f"[bold red]Error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
        err.print(f"Hint: {hint}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(int(code)) from None
    except Exception as exc:
        if debug:
            err.print_exception()
        err.print(
            f"[bold red]Error:[/] internal error: {type(exc).__name__}: {exc}", markup=True, soft_wrap=True
        )
        err.print("Hint: rerun with --debug for the traceback and report it", markup=False)
        raise typer.Exit(int(ExitCode.RUN_FAILED)) from None


def describe_os_error(exc: OSError) -> tuple[str, str, ExitCode]:
    """One line, a hint and an exit code for an operating-system error a user can fix."""
    import errno

    where = f": {exc.filename}" if exc.filename else ""
    what = exc.strerror or str(exc)
    hints = {
        errno.ENOSPC: (
            "free some space (or point --out / DISTILLKIT_CACHE elsewhere) and run again; "
            "files written before are kept, and an interrupted run resumes with --resume"
        ),
        errno.EROFS: "choose a writable location (--out, --experts, DISTILLKIT_CACHE)",
        errno.EACCES: "choose a location you may write to (--out, --experts, DISTILLKIT_CACHE)",
        errno.ENOTDIR: "a path component is a file, not a folder (check --out, --experts, DISTILLKIT_CACHE)",
        errno.ENAMETOOLONG: "choose a shorter path or name",
        errno.ENOENT: "check that the path exists",
    }
    hint = hints.get(exc.errno or -1, "check the path and the disk, then run again")
    return f"{what}{where}", hint, os_error_exit_code(exc)


class RichReporter:
    """Progress bars on stderr (hidden with --quiet or when stderr is not a terminal)."""

    def __init__(self, enabled: bool) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.enabled = enabled and err.is_terminal
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=err,
            disable=not self.enabled,
        )
        self.task: Any = None

    def start(self, stage: str, total: int) -> None:
        if not self.progress.live.is_started:
            self.progress.start()
        self.task = self.progress.add_task(stage, total=total, info="")

    def advance(self, n: int = 1, **info: Any) -> None:
        text = "  ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items() if v is not None
        )
        self.progress.update(self.task, advance=n, info=text)

    def finish(self) -> None:
        if self.task is not None:
            self.progress.update(self.task, visible=self.enabled)

    def note(self, message: str) -> None:
        if self.enabled:
            err.print(message)

    def close(self) -> None:
        if self.progress.live.is_started:
            self.progress.stop()


def _overrides(
    sets: list[str] | None,
    dataset: str | None = None,
    data_path: Path | None = None,
    download: bool = False,
    model: str | None = None,
    ipc: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    eval_models: str | None = None,
    memory: str | None = None,
) -> dict[str, Any]:
    from distillkit.config import ConfigError, split_set_option

    values: dict[str, Any] = {}
    for item in sets or []:
        key, value = split_set_option(item)
        if key in values:
            raise ConfigError(f"--set {key} is given twice")
        values[key] = value
    shortcuts = {
        "data.dataset": dataset,
        "data.data_path": str(data_path) if data_path else None,
        "data.download": True if download else None,
        "model.name": model,
        "distill.ipc": ipc,
        "seed": seed,
        "device": device,
        "evaluate.models": eval_models,
        "distill.memory": memory,
    }
    values.update({k: v for k, v in shortcuts.items() if v is not None})
    return values


def _resolve(
    preset: list[str] | None,
    config_file: Path | None,
    overrides: dict[str, Any],
    plugins: str | None,
    default_dataset: str = "digits",
) -> Resolved:
    from distillkit.resolve import resolve_layers

    names = None if plugins is None else [p for p in plugins.split(",") if p.strip()]
    return resolve_layers(preset, config_file, overrides, names, default_dataset=default_dataset)


def _astuple(resolved: Resolved) -> tuple[RunConfig, PluginHost, dict[str, str]]:
    return resolved.config, resolved.host, resolved.sources


def _results_table(title: str, rows: list[tuple[str, str, dict]]) -> Table:
    table = Table(title=title)
    for column in ("set", "model", "accuracy", "runs"):
        table.add_column(column, justify="right" if column != "set" else "left")
    for label, model, res in rows:
        table.add_row(
            label,
            model,
            f"{100 * res['mean']:.2f} ± {100 * res['std']:.2f} %",
            " ".join(f"{100 * r:.1f}" for r in res["runs"]),
        )
    return table


def _print_summary(summary: dict[str, Any], out_dir: Path) -> None:
    from distillkit.config import EvaluateConfig
    from distillkit.evaluate import protocol_line

    if "distilled" in summary:
        rows = [("distilled", m, r) for m, r in summary["distilled"]["models"].items()]
        rows += [("random real", m, r) for m, r in summary["random_real"]["models"].items()]
        proto = summary["protocol"]
        cfg = EvaluateConfig(**{k: v for k, v in proto.items() if k in EvaluateConfig.__dataclass_fields__})
        out.print(
            f"[dim]protocol: {protocol_line(cfg, summary['learned_lr'])}; "
            f"random real at lr {proto['random_real_lr']:.4g}[/]"
        )
        plugins = ",".join(summary["plugins"]) or "none (plain MTT)"
        title = f"{summary['dataset']} · ipc {summary['ipc']} · plugins: {plugins}"
        out.print(_results_table(title, rows))
    t = summary["timings_s"]
    out.print(
        f"time: experts {t['experts']:.1f}s, distill {t['distill']:.1f}s "
        f"({summary['distill_s_per_iter']:.3f} s/it), evaluate {t['evaluate']:.1f}s · "
        f"peak RSS {summary['peak_rss_mb']:.0f} MiB · learned lr {summary['learned_lr']:.4g}"
    )
    out.print(f"run directory: {out_dir}")


@app.command("run")
def run_cmd(
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
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Train experts (cached), distill, evaluate against random real images. No arguments: digits."""
    with cli_errors(debug):
        overrides = _overrides(
            sets, dataset, data_path, download, model, ipc, seed, None, eval_models, memory
        )
        if resume is not None:
            _check_resume_alone(overrides, preset, config, plugins, out_dir, experts)
            cfg, host, invocation = _recorded(resume, "run", device)
            experts = Path(invocation["experts"]) if invocation.get("experts") else None
            sources = None
        else:
            overrides.update({"device": device} if device else {})
            cfg, host, sources = _astuple(_resolve(preset, config, overrides, plugins))
        from distillkit import api, rundir

        target = _claim_run_dir(cfg, out_dir, overwrite, resume)
        reporter = RichReporter(not quiet)
        try:
            with rundir.discard_on_bad_input(target):
                summary = api.run(
                    cfg, host, target, experts, reporter, resume=resume is not None, sources=sources
                )
        finally:
            reporter.close()
        _print_summary(summary, target)


def _check_resume_alone(overrides: dict[str, Any], *options: Any) -> None:
    """``--resume`` continues with the recorded config, so config options would be silently ignored."""
    if overrides or any(option is not None for option in options):
        from distillkit.errors import ConfigError

        raise ConfigError(
            "--resume continues with the run's recorded config and cannot be combined with config options",
            hint="drop --set/--preset/--config/--plugins/--out/--experts/--ipc...; only --device may change",
        )


def _claim_run_dir(cfg: RunConfig, out_dir: Path | None, overwrite: bool, resume: Path | None) -> Path:
    """The locked run directory: the one to resume, or a new one (never one holding another run)."""
    from distillkit import rundir

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
    out_dir: OutDir = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Train expert trajectories into a store (finished experts with the same manifest are kept)."""
    with cli_errors(debug):
        overrides = _overrides(sets, dataset, data_path, download, model, None, seed, device)
        cfg, host, _sources = _astuple(_resolve(preset, config, overrides, plugins))
        from distillkit import api

        data = api.prepare_data(cfg)
        reporter = RichReporter(not quiet)
        try:
            store = api.train_experts(cfg, host, data, out_dir, reporter)
        finally:
            reporter.close()
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
        from distillkit.experts.store import TrajectoryStore, convert_store

        target = convert_store(TrajectoryStore.open(source), out_dir, dtype)
        before = sum(p.stat().st_size for p in source.glob("expert_*.safetensors"))
        after = sum(p.stat().st_size for p in target.root.glob("expert_*.safetensors"))
        out.print(
            f"{len(target.finished())} experts → {target.root} ({dtype}): "
            f"{before / 1e3:.1f} KB → {after / 1e3:.1f} KB ({after / max(before, 1):.2f}×)"
        )


@app.command("distill")
def distill_cmd(
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
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Distill from an existing trajectory store; writes the synthetic set (no evaluation)."""
    with cli_errors(debug):
        overrides = _overrides(sets, dataset, data_path, False, model, ipc, seed, None, memory=memory)
        if resume is not None:
            _check_resume_alone(overrides, preset, config, plugins, out_dir, experts)
            cfg, host, invocation = _recorded(resume, "distill", device)
            experts = Path(invocation["experts"])
            sources = None
        elif experts is None:
            from distillkit.errors import ConfigError

            raise ConfigError("distill needs --experts STORE (or --resume RUN_DIR)")
        else:
            overrides.update({"device": device} if device else {})
            cfg, host, sources = _astuple(_resolve(preset, config, overrides, plugins))
        from distillkit import api, rundir
        from distillkit.experts.store import TrajectoryStore

        store = TrajectoryStore.open(experts)
        data = api.prepare_data(cfg)
        api.check_ipc(cfg, data)
        target = _claim_run_dir(cfg, out_dir, overwrite, resume)
        if resume is None:
            api.record_invocation(target, cfg, "distill", experts, sources)
        reporter = RichReporter(not quiet)
        try:
            with rundir.discard_on_bad_input(target):
                result = api.distill(
                    cfg, host, data, store, target, reporter, resume=resume is not None, release_data=True
                )
        finally:
            reporter.close()
        api.save_distilled(target, cfg, host, data, result, store)
        out.print(
            f"distilled {len(result.images)} images in {result.seconds:.1f}s "
            f"({result.seconds_per_iteration:.3f} s/it), learned lr {result.lr:.4g} → {target}"
        )


@app.command("evaluate")
def evaluate_cmd(
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
    sets: Sets = None,
    seed: Seed = None,
    device: Device = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="With --mtt: also write evaluation.json here.")
    ] = None,
    json_out: JsonOut = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Evaluate a distilled set again (other architectures with --eval-models), or another tool's (--mtt)."""
    with cli_errors(debug):
        from distillkit import api
        from distillkit.artifacts import load_mtt_set, load_synthetic
        from distillkit.config import ConfigError, apply_overrides, from_dict, validate
        from distillkit.rundir import lock_run_dir

        if (run_dir is None) == (mtt is None):
            raise ConfigError("evaluate takes a RUN_DIR or --mtt FOLDER (one of them)")
        if mtt is not None:
            overrides = _overrides(sets, dataset, data_path, False, model, None, seed, device, eval_models)
            cfg = _resolve(preset, config, overrides, None).config
            images, labels, lr, tag = load_mtt_set(mtt, tag)
            label, target = f"{mtt} ({tag})", out_dir
        else:
            if any(v is not None for v in (dataset, data_path, model, preset, config, seed, tag, out_dir)):
                raise ConfigError(
                    "a run is evaluated with its recorded config",
                    hint="only --eval-models, --set evaluate.*, --device and --json apply to RUN_DIR",
                )
            if not (run_dir / "config.json").exists():
                raise ConfigError(f"{run_dir} is not a run directory (no config.json)")
            lock_run_dir(run_dir)
            try:
                recorded = json.loads((run_dir / "config.json").read_text())
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{run_dir / 'config.json'} cannot be read as JSON ({exc})") from None
            cfg = from_dict(recorded)
            cfg = apply_overrides(cfg, _overrides(sets, device=device, eval_models=eval_models), set())
            validate(cfg)
            images, labels, lr, meta, _extra = load_synthetic(run_dir)
            label, target = str(run_dir), run_dir
        data = api.prepare_data(cfg)
        if run_dir is not None and meta.get("dataset") not in (None, data.dataset.name):
            raise ConfigError(
                f"{run_dir}: the synthetic set was distilled from {meta.get('dataset')}, but the run's "
                f"config names {data.dataset.name}",
                hint="the run directory was altered; evaluate the set with the dataset it came from",
            )
        api.check_synthetic_set(images, labels, lr, data)
        reporter = RichReporter(not quiet)
        try:
            results = api.evaluate(cfg, data, images, labels, lr, reporter=reporter)
        finally:
            reporter.close()
        payload = {name: res.as_dict() for name, res in results.items()}
        if target is not None:
            api.merge_evaluation(target, payload, cfg)
        if json_out:
            out.print_json(json.dumps(payload))
        else:
            from distillkit.evaluate import protocol_line

            out.print(f"[dim]protocol: {protocol_line(cfg.evaluate, lr)}[/]")
            rows = [("distilled", name, res) for name, res in payload.items()]
            out.print(_results_table(label, rows))


@app.command("config")
def config_cmd(
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
    memory: Memory = None,
    json_out: JsonOut = False,
    debug: Debug = False,
) -> None:
    """Print the resolved config and the layer that set each key; runs nothing, writes nothing."""
    with cli_errors(debug):
        from distillkit.config import to_dict
        from distillkit.resolve import flat_values

        overrides = _overrides(sets, dataset, data_path, False, model, ipc, seed, device, memory=memory)
        resolved = _resolve(preset, config, overrides, plugins)
        values = flat_values(resolved.config)
        if json_out:
            payload = {"config": to_dict(resolved.config), "sources": resolved.sources}
            out.print_json(json.dumps(payload))
            return
        table = Table(
            title="resolved config (lowest layer first: default, dataset preset, plugin, "
            "method preset, config file, command line)"
        )
        for column in ("key", "value", "set by"):
            table.add_column(column)
        for key, value in values.items():
            source = resolved.sources.get(key, "default")
            style = "dim" if source == "default" else None
            table.add_row(key, json.dumps(value, ensure_ascii=False), source, style=style)
        out.print(table)


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

        from distillkit import ablate
        from distillkit.artifacts import atomic_write_bytes, atomic_write_json
        from distillkit.errors import ConfigError

        if jobs < 1:
            raise ConfigError(f"--jobs must be >= 1, got {jobs}")
        arm_list = ablate.parse_arms(arms)
        seed_list = ablate.parse_seeds(seeds)
        overrides = _overrides(sets, dataset, data_path, False, model, ipc, None, device, memory=memory)
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
            reporter.advance(cell=Path(name).name if "seed" in Path(name).name else "experts")
            if not reporter.enabled:
                err.print(f"ablate: {name}: {status}", highlight=False, markup=False)

        try:
            stores, cells = ablate.execute(plan, jobs, done)
        finally:
            reporter.close()
        summary = ablate.summarise(plan, stores, cells)
        command = shlex.join(["distillkit", *sys.argv[1:]])
        atomic_write_json(target / "ablation.json", {"command": command, **summary})
        atomic_write_bytes(target / "ablation.md", ablate.markdown(summary, plan, command).encode())
        ablate.chart(summary, target / "ablation.png")
        out.print(ablate.markdown(summary, plan, command), markup=False, highlight=False, soft_wrap=True)
        out.print(f"ablation folder: {target}")
        if any(row["errors"] for row in summary["arms"]):
            raise typer.Exit(int(ExitCode.RUN_FAILED))


@app.command("list-plugins")
def list_plugins_cmd(
    plugins: Plugins = None,
    json_out: JsonOut = False,
    debug: Debug = False,
) -> None:
    """List installed plugins: package, version, source, hooks, status (broken ones as error rows)."""
    with cli_errors(debug):
        from distillkit.host import PluginHost

        selected = [p.strip() for p in (plugins or "").split(",") if p.strip()]
        records = PluginHost().list_records(selected)
        if json_out:
            out.print_json(json.dumps([r.as_dict() for r in records]))
            return
        table = Table(title="distillkit plugins")
        for column in ("name", "package", "version", "source", "hooks", "status"):
            table.add_column(column)
        for r in records:
            status = f"error: {r.error}" if r.status == "error" else r.status
            table.add_row(r.name, r.package, r.version, r.source, ", ".join(r.hooks), status)
        out.print(table)
        if not records:
            out.print("no plugins installed: runs are plain MTT")


def _print_bench(result: dict[str, Any]) -> None:
    """The bench figures as a table plus one line per other part (the JSON holds every number)."""
    env, cfg = result["environment"], result["config"]
    cuda = any("peak_cuda_mb" in row for row in result["distillation"])
    distill = cfg["distill"]
    swept = {key for row in result["distillation"] for key in row["overrides"]}
    memory = "" if "distill.memory" in swept else f"memory {distill['memory']} · "
    if memory and distill["memory"] == "constant" and "distill.graph_steps" not in swept:
        memory = f"memory constant (graph_steps {distill['graph_steps']}) · "
    table = Table(
        title=f"distillation · {cfg['data']['dataset']} · ipc {distill['ipc']} · N {distill['syn_steps']} · "
        f"{memory}plugins: {','.join(cfg['plugins']) or 'none'}",
        caption="memory in MiB: whole-process peak RSS, peak RSS during the iterations, "
        "and that minus the RSS before them",
    )
    columns = ["setting", "s/it", "peak RSS", "distill RSS", "Δ setup"]
    columns += ["CUDA peak"] if cuda else []
    columns += ["GFLOP/it", "GFLOP/s", "% matmul"]
    for column in columns:
        if column == "setting":
            table.add_column(column, no_wrap=True)
        else:
            table.add_column(column, justify="right")
    for row in result["distillation"]:
        window, setup = row["distill_peak_rss_mb"], row["setup_rss_mb"]
        cells = [
            row["label"],
            f"{row['s_per_iter']:.3f}",
            f"{row['peak_rss_mb']:.0f}",
            "-" if window is None else f"{window:.0f}",
            "-" if window is None or setup is None else f"{window - setup:.0f}",
        ]
        cells += [f"{row['peak_cuda_mb']:.0f}"] if cuda else []
        cells += [
            f"{row['flops_per_iter'] / 1e9:.2f}",
            f"{row['gflops_per_s']:.1f}",
            f"{100 * row['fraction_of_matmul_peak']:.1f}",
        ]
        table.add_row(*cells)
    out.print(table)
    settings, peak, store = result["settings"], result["matmul_peak"], result["storage"]
    loads = [x for row in result["distillation"] for x in row.get("load_average") or [] if x is not None]
    load = f" · system load {min(loads):.1f}–{max(loads):.1f}" if loads else ""
    out.print(
        f"timing: median of {settings['window']} iterations after {settings['warmup']} warm-up, "
        f"each setting in a fresh process{load} · fp32 matmul peak {peak['gflops']:.1f} GFLOP/s "
        f"(n={peak['n']})"
    )
    out.print(
        f"storage: {store['bytes_per_expert'] / 1e3:.1f} KB per expert ({store['snapshots_stored']} "
        f"snapshots of {store['epochs']} epochs, {store['dtype']}) vs MTT format "
        f"{store['mtt_reference_bytes'] / 1e3:.1f} KB = "
        f"{store['ratio_to_mtt']:.3f}× · {store['path']}"
    )
    experts = result["experts_throughput"]
    if experts:
        test = " (test pass included)" if experts["test_pass"] else ""
        out.print(
            f"experts: {experts['images_per_s']:.0f} images/s, "
            f"{experts['seconds_per_epoch']:.1f} s per epoch of {experts['images']} images{test}"
        )
    out.print(
        f"[dim]torch {env['torch']} · {env['threads']} threads · {env['device']} · {env['cpu']}"
        f"{' · ' + env['gpu'] if 'gpu' in env else ''}[/]"
    )


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
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write every figure here.")] = None,
    device: Device = None,
    memory: Memory = None,
    skip_experts_throughput: Annotated[
        bool, typer.Option("--skip-experts-throughput", help="Do not time one fresh expert epoch.")
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
        overrides = _overrides(sets, dataset, data_path, False, model, ipc, seed, device, memory=memory)
        cfg, host, _sources = _astuple(
            _resolve(preset, config, overrides, plugins, default_dataset="fashion-mnist")
        )
        import shlex

        from distillkit.artifacts import atomic_write_json
        from distillkit.bench import run_bench

        settings = BenchSettings(warmup, window, key, values, not skip_experts_throughput)
        reporter = RichReporter(not quiet)
        try:
            result = run_bench(cfg, host, settings, experts, reporter)
        finally:
            reporter.close()
        result["command"] = shlex.join(["distillkit", *sys.argv[1:]])
        if json_path is not None:
            atomic_write_json(json_path, result)
        _print_bench(result)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(int(ExitCode.INTERRUPTED))


if __name__ == "__main__":
    main()
