"""``distillkit ablate``: one base configuration, several plugin sets ("arms"), several seeds.

Every arm runs at every seed on the same budget, so arms are compared **paired by
seed**: Δ_s = acc(arm, s) − acc(base, s), reported as mean Δ with a 95 % t
interval over seeds. Experts are trained once per distinct expert recipe with the
base seed and shared by every arm and seed that needs that recipe (plain experts
for arms without an expert-loss plugin, that plugin's experts for arms with it), so
seeds vary distillation and evaluation on shared experts. Cells run in parallel
processes (``jobs``), each pinned to its share of the CPU threads; finished cells
are kept, so an interrupted ablation continues where it stopped.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from distillkit.config import RunConfig, from_dict, to_dict
from distillkit.errors import ConfigError, DistillkitError
from distillkit.resolve import resolve_layers

#: Package data holding the default arms (plain, each technique, AST's Table 7 order).
DEFAULT_ARMS_FILE = ("presets", "ablation", "default.toml")
PLAIN_NAMES = ("plain", "none", "mtt")


def default_arms() -> list[str]:
    """The arms ``distillkit ablate`` runs when ``--arms`` is not given."""
    import tomllib
    from importlib import resources

    path = resources.files("distillkit").joinpath(*DEFAULT_ARMS_FILE)
    return list(tomllib.loads(path.read_text(encoding="utf-8"))["arms"])


@dataclass(frozen=True)
class Arm:
    """One plugin set, optionally with its own ``KEY=VALUE`` overrides."""

    plugins: tuple[str, ...]
    overrides: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        text = "+".join(self.plugins) or "plain"
        if self.overrides:
            text += " [" + ", ".join(f"{k}={v}" for k, v in self.overrides) + "]"
        return text

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.+-]+", "_", self.label).strip("_")


def parse_arms(text: str | None) -> list[Arm]:
    """``"plain;smooth;smooth,kmeans-init;smooth,distill.student_momentum=0"`` → arms.

    Arms are separated by ``;``; inside an arm, tokens with ``=`` are config
    overrides for that arm, the others plugin names (``plain`` = none).
    """
    items = default_arms() if text is None else [a.strip() for a in text.split(";")]
    arms: list[Arm] = []
    for item in items:
        tokens = [t.strip() for t in item.split(",") if t.strip()]
        plugins = tuple(t for t in tokens if "=" not in t and t.lower() not in PLAIN_NAMES)
        sets = tuple(tuple(t.split("=", 1)) for t in tokens if "=" in t)
        arm = Arm(plugins, tuple((k.strip(), v.strip()) for k, v in sets))
        if not item.strip() and text is not None:
            raise ConfigError("--arms has an empty arm", hint="write 'plain' for the arm without plugins")
        if arm in arms:
            raise ConfigError(f"--arms lists {arm.label} twice")
        arms.append(arm)
    if len(arms) < 2:
        raise ConfigError("an ablation needs at least two arms", hint="e.g. --arms 'plain;smooth'")
    return arms


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-4"`` → seeds (distinct, in the order given)."""
    seeds: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            low, dash, high = part.partition("-")
            seeds += list(range(int(low), int(high) + 1)) if dash and low else [int(part)]
    except ValueError:
        raise ConfigError(f"--seeds expects integers like 0,1,2 or 0-4, got '{text}'") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"--seeds needs distinct non-negative integers, got '{text}'")
    return seeds


@dataclass(frozen=True)
class Cell:
    """One (arm, seed) run of the ablation, or the random-real baseline of a seed (``arm=None``)."""

    arm: Arm | None
    seed: int
    config: dict[str, Any]
    store: str
    out_dir: str

    @property
    def name(self) -> str:
        return f"{self.arm.label if self.arm else 'random real'} · seed {self.seed}"


@dataclass
class Plan:
    """Everything an ablation runs, resolved and checked before anything is written."""

    arms: list[Arm]
    seeds: list[int]
    out: Path
    base: RunConfig
    experts_per_seed: bool = False
    stores: dict[str, dict[str, Any]] = field(default_factory=dict)  # store path → expert config
    cells: list[Cell] = field(default_factory=list)

    def identity(self) -> dict[str, Any]:
        """What must match for a rerun in the same folder to reuse finished cells."""
        return {
            "arms": [a.label for a in self.arms],
            "seeds": self.seeds,
            "experts_per_seed": self.experts_per_seed,
            "cells": {c.out_dir: c.config for c in self.cells},
        }


def plan_ablation(
    arms: Sequence[Arm],
    seeds: Sequence[int],
    out: Path,
    presets: Sequence[str] | None = None,
    config_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
    experts_per_seed: bool = False,
) -> Plan:
    """Resolve every arm at every seed (bad input fails here) and group arms by expert store.

    By default experts are trained once per recipe with the base seed and shared by all
    seeds; ``experts_per_seed`` trains each seed its own experts (as ``distillkit run
    --seed S`` does), so seeds also vary the experts.
    """
    from distillkit.api import default_store_dir, expert_key, prepare_data

    overrides = dict(overrides or {})
    if "plugins" in overrides:
        raise ConfigError("ablate takes the plugin sets from --arms, not --set plugins=...")
    base = resolve_layers(presets, config_file, overrides, []).config
    plan = Plan(list(arms), list(seeds), out, base, experts_per_seed)
    prepared: dict[Any, Any] = {}  # one load per distinct data section (the key reads the data)
    for arm in arms:
        arm_overrides = {**overrides, **dict(arm.overrides)}
        shared = resolve_layers(presets, config_file, arm_overrides, list(arm.plugins))
        for seed in seeds:
            resolved = resolve_layers(
                presets, config_file, {**arm_overrides, "seed": seed}, list(arm.plugins)
            )
            expert_side = resolved if experts_per_seed else shared
            section = expert_side.config.data
            if section not in prepared:
                prepared[section] = prepare_data(section)
            data = prepared[section]
            store = str(default_store_dir(expert_key(expert_side.config, data, expert_side.host)))
            plan.stores.setdefault(store, to_dict(expert_side.config))
            cell_dir = out / "cells" / arm.slug / f"seed{seed}"
            plan.cells.append(Cell(arm, seed, to_dict(resolved.config), store, str(cell_dir)))
    for seed in seeds:
        config = replace(base, seed=seed)
        plan.cells.append(
            Cell(None, seed, to_dict(config), "", str(out / "cells" / "random-real" / f"seed{seed}"))
        )
    return plan


def threads_per_job(jobs: int) -> int:
    """Each parallel job's share of the CPU (2 jobs on 2 cores: 1 thread each, no oversubscription)."""
    return max(1, (os.cpu_count() or 1) // max(jobs, 1))


def _pin_threads(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _host_for(config: RunConfig):
    from distillkit.host import PluginHost

    host = PluginHost()
    host.select(config.plugins, config.plugin_options)
    return host


def train_store(store: str, config_dict: dict[str, Any]) -> dict[str, Any]:
    """Train (or reuse) the experts of one recipe; returns their final test accuracies."""
    from distillkit import api

    config = from_dict(config_dict)
    data = api.prepare_data(config.data)
    trained = api.train_experts(config, _host_for(config), data, Path(store))
    accs = [e.get("test_acc", [None])[-1] for e in trained.manifest.experts]
    return {"store": store, "expert_test_acc": accs}


def run_cell(cell: Cell) -> dict[str, Any]:
    """Run one cell (kept if already finished); returns its result record."""
    from distillkit import api, rundir
    from distillkit.artifacts import atomic_write_json

    out_dir = Path(cell.out_dir)
    done = out_dir / "results.json"
    if done.exists():
        return {**json.loads(done.read_text()), "reused": True}
    config = from_dict(cell.config)
    if cell.arm is None:
        data = api.prepare_data(config.data)
        baseline = api.evaluate_random_real(config, data)
        summary = {"random_real": api.result_summary(baseline)}
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(done, summary)
        return summary
    target = rundir.prepare_run_dir(out_dir, overwrite=True)
    with rundir.discard_on_bad_input(target):
        return api.run(config, _host_for(config), target, Path(cell.store), baseline=False)


def execute(
    plan: Plan,
    jobs: int,
    on_done: Callable[[str, dict[str, Any]], None] = lambda name, record: None,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Train the stores and run every cell, ``jobs`` at a time; returns (stores, cells) records.

    A cell starts as soon as its own store is ready, so cells on plain experts run while
    the slower experts of an expert-loss plugin are still training.
    """
    stores: dict[str, dict[str, Any]] = {}
    cells: dict[str, dict[str, Any]] = {}
    waiting = {store: [c for c in plan.cells if c.store == store] for store in plan.stores}
    ready = [c for c in plan.cells if not c.store]
    if jobs <= 1:
        for store, config in plan.stores.items():
            stores[store] = _call(train_store, (store, config), 0)
            on_done(store, stores[store])
        for cell in [*ready, *(c for group in waiting.values() for c in group)]:
            cells[cell.out_dir] = _call(run_cell, cell, 0)
            on_done(cell.out_dir, cells[cell.out_dir])
        return stores, cells
    import multiprocessing

    threads = threads_per_job(jobs)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        pending = {
            pool.submit(_call, train_store, (s, c), threads): ("store", s) for s, c in plan.stores.items()
        }
        pending.update({pool.submit(_call, run_cell, c, threads): ("cell", c.out_dir) for c in ready})
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                kind, key = pending.pop(future)
                record = future.result()
                (stores if kind == "store" else cells)[key] = record
                on_done(key, record)
                if kind == "store":
                    for cell in waiting[key]:
                        if "error" in record:
                            cells[cell.out_dir] = {"error": f"experts failed: {record['error']}"}
                            continue
                        pending[pool.submit(_call, run_cell, cell, threads)] = ("cell", cell.out_dir)
    return stores, cells


def _call(fn: Callable, arg: Any, threads: int) -> dict[str, Any]:
    if threads:
        _pin_threads(threads)
    try:
        return fn(*arg) if isinstance(arg, tuple) else fn(arg)
    except DistillkitError as exc:
        return {"error": str(exc)}


def check_out(out: Path, plan: Plan) -> None:
    """``out`` is new, or holds this same ablation (then finished cells are reused)."""
    marker = out / "ablation-plan.json"
    if marker.exists():
        try:
            recorded = json.loads(marker.read_text())
        except (OSError, ValueError):
            recorded = None
        if recorded != json.loads(json.dumps(plan.identity())):
            raise ConfigError(
                f"{out} holds a different ablation (other arms, seeds or settings)",
                hint="pass another --out, or delete that folder to start over",
            )
    elif out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not an ablation folder", hint="pass a new or empty --out")
