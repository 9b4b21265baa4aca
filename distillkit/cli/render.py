"""What the commands print: progress bars, result tables, the bench report."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from rich.table import Table

from distillkit.cli.app import err, out

log = logging.getLogger("distillkit")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (it is swapped under test runners)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _plain_log() -> None:
    """Progress lines on stderr through ``logging`` (once per process; ``-q`` turns them off)."""
    if not log.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s distillkit: %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


class RichReporter:
    """Progress on stderr: rich bars on a terminal, plain ``logging`` lines when stderr is piped
    (SLURM, nohup), nothing with ``--quiet``."""

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
        self.lines = enabled and not err.is_terminal
        if self.lines:
            _plain_log()
        self.stage, self.total, self.every, self.done = "", 0, 1, 0
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

    def start(self, stage: str, total: int, every: int = 1) -> None:
        self.stage, self.total, self.every, self.done = stage, total, max(1, every), 0
        if self.lines:
            log.info("%s: %d to do", stage, total)
        if not self.progress.live.is_started:
            self.progress.start()
        self.task = self.progress.add_task(stage, total=total, info="")

    def advance(self, n: int = 1, **info: Any) -> None:
        text = "  ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items() if v is not None
        )
        self.progress.update(self.task, advance=n, info=text)
        before, self.done = self.done, self.done + n
        if self.lines and (self.done // self.every > before // self.every or self.done >= self.total):
            log.info("%s %d/%d %s", self.stage, self.done, self.total, text)

    def finish(self) -> None:
        if self.task is not None:
            self.progress.update(self.task, visible=self.enabled)

    def note(self, message: str) -> None:
        if self.enabled:
            err.print(message)
        elif self.lines:
            log.info("%s", message)

    def close(self) -> None:
        if self.progress.live.is_started:
            self.progress.stop()


def results_table(title: str, rows: list[tuple[str, str, dict]]) -> Table:
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


def print_summary(summary: dict[str, Any], out_dir: Path) -> None:
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
        out.print(results_table(title, rows))
    t = summary["timings_s"]
    out.print(
        f"time: experts {t['experts']:.1f}s, distill {t['distill']:.1f}s "
        f"({summary['distill_s_per_iter']:.3f} s/it), evaluate {t['evaluate']:.1f}s · "
        f"peak RSS {summary['peak_rss_mb']:.0f} MiB · learned lr {summary['learned_lr']:.4g}"
    )
    out.print(f"run directory: {out_dir}")


def print_bench(result: dict[str, Any]) -> None:
    """The bench figures as a table plus one line per other part (the JSON holds every number)."""
    env, cfg = result["environment"], result["config"]
    cuda = any("peak_cuda_mb" in row for row in result["distillation"])
    distill = cfg["distill"]
    swept = {key for row in result["distillation"] for key in row["overrides"]}
    memory = "" if "distill.memory" in swept else f"memory {distill['memory']} · "
    dials = {"distill.graph_steps", "distill.graph_memory_mb"}
    if memory and distill["memory"] == "constant" and not swept & dials:
        budget = distill.get("graph_memory_mb")
        kept = f"graph_memory_mb {budget:g}" if budget else f"graph_steps {distill['graph_steps']}"
        memory = f"memory constant ({kept}) · "
    table = Table(
        title=f"distillation · {cfg['data']['dataset']} · ipc {distill['ipc']} · N {distill['syn_steps']} · "
        f"{memory}plugins: {','.join(cfg['plugins']) or 'none'}",
        caption="memory in MiB: whole-process peak RSS, peak RSS during the iterations, "
        "that minus the RSS before them, and what one kept step graph holds (standard: N of them)",
    )
    columns = ["setting", "s/it", "peak RSS", "distill RSS", "Δ setup", "graph/step"]
    columns += ["CUDA peak"] if cuda else []
    columns += ["GFLOP/it", "GFLOP/s", "% matmul"]
    for column in columns:
        if column == "setting":
            table.add_column(column, no_wrap=True)
        else:
            table.add_column(column, justify="right")
    for row in result["distillation"]:
        window, setup = row["distill_peak_rss_mb"], row["setup_rss_mb"]
        kept = row.get("graph_steps")  # chosen from distill.graph_memory_mb
        cells = [
            row["label"] if kept is None else f"{row['label']} (K {kept})",
            f"{row['s_per_iter']:.3f}",
            f"{row['peak_rss_mb']:.0f}",
            "-" if window is None else f"{window:.0f}",
            "-" if window is None or setup is None else f"{window - setup:.0f}",
            f"{row['step_graph_mb']:.1f}",
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
        out.print(
            f"experts: {experts['images_per_s']:.0f} images/s, "
            f"{experts['seconds_per_epoch']:.1f} s per epoch of {experts['images']} images "
            "(test pass included)"
        )
    whole = result.get("whole_run")
    if whole:
        stages = whole["stages_s"]
        rate = whole["evaluation_network_images_per_s"]
        rate_text = f", {rate:.0f} network-images/s" if rate else ""
        out.print(
            f"whole run: {whole['wall_s']:.1f} s — experts {stages['experts']:.1f} s "
            f"({whole['expert_network_images_per_s']:.0f} network-images/s, "
            f"experts.parallel={whole['experts_parallel']}), distill "
            f"{stages['distill']:.1f} s, evaluate {stages['evaluate']:.1f} s "
            f"({whole['evaluation_networks']} networks × {whole['images_per_set']} images"
            f"{rate_text}, evaluate.parallel={whole['evaluate_parallel']})"
        )
    out.print(
        f"[dim]torch {env['torch']} · {env['threads']} threads · {env['device']} · {env['cpu']}"
        f"{' · ' + env['gpu'] if 'gpu' in env else ''}[/]"
    )


class RankLogReporter:
    """Progress of a rank other than 0 (rank 0 alone prints): plain lines in ``RUN_DIR/logs/rank-<r>.log``."""

    def __init__(self, run_dir: Path, rank: int) -> None:
        import time

        self.path = Path(run_dir) / "logs" / f"rank-{rank}.log"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        self.clock = time.strftime
        self.stage, self.total, self.every, self.done = "", 0, 1, 0

    def _line(self, text: str) -> None:
        self.file.write(f"{self.clock('%H:%M:%S')} {text}\n")

    def start(self, stage: str, total: int, every: int = 1) -> None:
        self.stage, self.total, self.every, self.done = stage, total, max(1, every), 0
        self._line(f"{stage}: {total} to do")

    def advance(self, n: int = 1, **info: Any) -> None:
        before, self.done = self.done, self.done + n
        if self.done // self.every > before // self.every or self.done >= self.total:
            text = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items())
            self._line(f"{self.stage} {self.done}/{self.total} {text}")

    def finish(self) -> None: ...

    def note(self, message: str) -> None:
        self._line(message)

    def close(self) -> None:
        self.file.close()


def reporter_for(rank: int, run_dir: Path, quiet: bool) -> RichReporter | RankLogReporter:
    """Rank 0's progress on the terminal, every other rank's in its log file."""
    return RichReporter(not quiet) if rank == 0 else RankLogReporter(run_dir, rank)
