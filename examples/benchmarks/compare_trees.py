"""Two distillkit source trees, the same stages, one job at a time: did a change make runs faster?

Usage:
    python examples/benchmarks/compare_trees.py --baseline PATH [--candidate PATH] [--out DIR]
        [--data DIR] [--expert-epochs 2] [--ipc 10,1] [--iterations 15] [--warmup 3]
        [--stages experts,distill,evaluate|run] [--run-ipc 10] [--candidate-first]
        [--profile-convolutions]

``--baseline`` and ``--candidate`` (default: this checkout) are distillkit work trees, e.g. a
``git worktree add ../previous-main <commit>``. Every job is ``python -m distillkit ...`` in a
fresh process with ``PYTHONPATH`` set to its tree, under ``/usr/bin/time -v``, strictly one after
another, the baseline first in each pair (``--candidate-first`` swaps every pair: run a comparison
in both orders on a machine whose speed drifts, and read both), on the ``fmnist-cpu`` preset:

1. ``experts``: one expert of ``--expert-epochs`` epochs per tree; seconds per 60 000-image epoch
   from the store manifest (training and the test pass after each epoch, data loading excluded);
2. ``distill`` per ipc, both trees from the baseline's expert: the median of ``metrics.jsonl``'s
   per-iteration seconds after ``--warmup``, and the process's peak RSS;
3. ``evaluate`` of the baseline's ipc-10 run (or the first ipc) by each tree: the ``runs``
   networks on the distilled set and the ``runs`` on the random-real set, ``epochs`` each (the
   preset's protocol: 5 + 5 × 300), timed as the whole process; both trees' accuracies are printed,
   which must agree within the evaluation spread;
4. ``run`` (not in the default ``--stages``; ≈ 1 h for both trees on 2 cores): the whole
   ``distillkit run --preset fmnist-cpu --ipc RUN_IPC`` a user runs, experts trained (each tree gets
   an empty ``DISTILLKIT_CACHE``), the preset's full budget: the process's wall time and peak RSS,
   split into experts (the store manifest's seconds), distillation (``metrics.jsonl``'s seconds) and
   the rest (data loading, evaluation, report), with both trees' accuracies.

``--stages`` runs a subset (``distill`` alone reuses OUT's baseline expert). Ratios are candidate ÷
baseline. ``--profile-convolutions`` runs the candidate's jobs under ``conv_profile.py`` (the
baseline's stay unprofiled) and prints, per stage, the candidate's seconds in convolutions and the
**bound** they set: those seconds ÷ the baseline's time for the same work, the ratio the candidate
would reach if everything but its convolutions took no time. The candidate's own times then include
the profiler's per-call cost, so read its ratios from an unprofiled comparison. Exit codes: 0 done,
1 a job failed (its log is named), 2 a set-up problem (one line); after a failure, the stages done
so far are in OUT/compare_trees.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_bench import (
    JobFailed,
    iteration_seconds,
    load_average,
    median_after,
    run_job,
    under_conv_profile,
)

HERE = Path(__file__).resolve().parents[2]
PRESET = "fmnist-cpu"
TREES = ("baseline", "candidate")


def profile_json(args: argparse.Namespace, tree: str, name: str) -> Path | None:
    """Where a job's ``conv_profile.py`` figures go: the candidate's jobs only, when profiling."""
    if not args.profile_convolutions or tree != "candidate":
        return None
    return args.out / "profiles" / f"{tree}-{name}.json"


def job(
    args: argparse.Namespace, tree: str, name: str, *cli: str, extra_env: dict[str, str] | None = None
) -> Any:
    """``python -m distillkit CLI`` from TREE, under ``conv_profile.py`` where ``profile_json`` says."""
    env = {**os.environ, "PYTHONPATH": str(getattr(args, tree)), "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    cmd = [sys.executable, "-m", "distillkit", *cli]
    if (profile := profile_json(args, tree, name)) is not None:
        cmd = under_conv_profile(cmd, profile)  # which makes the profile's folder
    logs = args.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return run_job(f"{tree}-{name}", cmd, args.out, env, logs)


def convolution_seconds(args: argparse.Namespace, tree: str, name: str, units: int) -> dict[str, float]:
    """The job's seconds in convolutions per unit of work (an epoch, an iteration, a process), if profiled."""
    if (profile := profile_json(args, tree, name)) is None:
        return {}
    return {"conv_s": json.loads(profile.read_text())["conv_s"] / units}


def common(args: argparse.Namespace) -> list[str]:
    last = args.expert_epochs - 1
    return [
        "--preset",
        PRESET,
        "--data-path",
        str(args.data),
        "--set",
        f"distill.max_start_epoch={min(5, last)}",
    ]


def experts(args: argparse.Namespace, tree: str) -> dict[str, Any]:
    store = args.out / f"{tree}-experts"
    # Tested after every epoch in both trees, whatever their defaults: the same work per epoch.
    sets = [
        "--set",
        "experts.count=1",
        "--set",
        f"experts.epochs={args.expert_epochs}",
        "--set",
        "experts.eval_every=1",
    ]
    ran = job(args, tree, "experts", "experts", *common(args), *sets, "--out", str(store), "--quiet")
    seconds = json.loads((store / "manifest.json").read_text())["experts"][0]["seconds"]
    return {
        "s_per_epoch": seconds / args.expert_epochs,
        "peak_rss_mb": ran.peak_rss_mb,
        "load": ran.load,
        **convolution_seconds(args, tree, "experts", args.expert_epochs),
    }


def distill(args: argparse.Namespace, tree: str, ipc: int) -> dict[str, Any]:
    run_dir = args.out / f"{tree}-distill-ipc{ipc}"
    sets = ["--set", f"distill.iterations={args.iterations}", "--set", f"experts.epochs={args.expert_epochs}"]
    store = args.out / "baseline-experts"
    cli = ["distill", "--experts", str(store), *common(args), "--ipc", str(ipc), *sets, "--out", str(run_dir)]
    ran = job(args, tree, f"distill-ipc{ipc}", *cli, "--overwrite", "--quiet")
    seconds = iteration_seconds(run_dir, args.iterations)
    return {
        "s_per_iter": median_after(seconds, args.warmup),
        "peak_rss_mb": ran.peak_rss_mb,
        "load": ran.load,
        **convolution_seconds(args, tree, f"distill-ipc{ipc}", args.iterations),
    }


def evaluate(args: argparse.Namespace, tree: str, run_dir: Path) -> dict[str, Any]:
    ran = job(args, tree, "evaluate", "evaluate", str(run_dir), "--quiet")  # the run's own config
    entries = json.loads((run_dir / "evaluation.json").read_text())
    last = entries[-1] if isinstance(entries, list) else entries
    return {
        "wall_s": ran.wall_s,
        "peak_rss_mb": ran.peak_rss_mb,
        "load": ran.load,
        "results": last,
        **convolution_seconds(args, tree, "evaluate", 1),
    }


def whole_run(args: argparse.Namespace, tree: str) -> dict[str, Any]:
    run_dir, cache = args.out / f"{tree}-run", args.out / f"{tree}-run-cache"
    if cache.exists():  # experts must be trained, not found in a cache from an earlier pass
        shutil.rmtree(cache)
    cli = ["run", "--preset", PRESET, "--data-path", str(args.data), "--ipc", str(args.run_ipc)]
    cli += ["--out", str(run_dir), "--overwrite", "--quiet"]
    ran = job(args, tree, "run", *cli, extra_env={"DISTILLKIT_CACHE": str(cache)})
    manifests = list(cache.glob("**/manifest.json"))
    experts_s = sum(e["seconds"] for m in manifests for e in json.loads(m.read_text())["experts"])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    distill_s = sum(float(r["seconds"]) for r in rows)
    entries = json.loads((run_dir / "evaluation.json").read_text())
    return {
        "wall_s": ran.wall_s,
        "experts_s": experts_s,
        "distill_s": distill_s,
        "rest_s": ran.wall_s - experts_s - distill_s,
        "peak_rss_mb": ran.peak_rss_mb,
        "load": ran.load,
        "results": entries[-1] if isinstance(entries, list) else entries,
        **convolution_seconds(args, tree, "run", 1),
    }


def ratio(candidate: float | None, baseline: float | None) -> str:
    return "-" if not candidate or not baseline else f"{candidate / baseline:.2f}x"


def report(result: dict[str, Any]) -> None:
    rows = [("expert s/epoch", "experts", "s_per_epoch")]
    rows += [(f"ipc {ipc} s/iteration", f"distill-ipc{ipc}", "s_per_iter") for ipc in result["ipcs"]]
    rows += [(f"ipc {ipc} peak RSS MiB", f"distill-ipc{ipc}", "peak_rss_mb") for ipc in result["ipcs"]]
    rows += [("evaluate wall s", "evaluate", "wall_s")]
    run_keys = ("wall_s", "experts_s", "distill_s", "rest_s", "peak_rss_mb")
    rows += [(f"run {key}", "run", key) for key in run_keys]
    print(f"{'quantity':24s} {'baseline':>10s} {'candidate':>10s} {'ratio':>7s}")
    for label, stage, key in rows:
        if stage not in result["stages"]:
            continue
        base, cand = (result["stages"][stage][tree].get(key) for tree in ("baseline", "candidate"))
        print(f"{label:24s} {base:10.3f} {cand:10.3f} {ratio(cand, base):>7s}")
    for line in convolution_lines(result["stages"]):
        print(line)
    evaluated = [(f"{s} {t}", d) for s in ("evaluate", "run") for t, d in result["stages"].get(s, {}).items()]
    for tree, done in evaluated:
        for part in ("models", "random_real"):
            for model, res in done["results"].get(part, {}).items():
                print(f"{tree} {part} {model}: {100 * res['mean']:.2f} ± {100 * res['std']:.2f} %")
    print(f"load average {result['load'][0]} before, {result['load'][1]} after; JSON: {result['json']}")


def convolution_lines(stages: dict[str, Any]) -> list[str]:
    """Per profiled stage: the candidate's convolution seconds and the bound they set on its ratio."""
    times = {"experts": "s_per_epoch", "evaluate": "wall_s", "run": "wall_s"}
    lines = []
    for stage, trees in stages.items():
        if "conv_s" not in trees["candidate"]:
            continue
        key = times.get(stage, "s_per_iter")
        conv, base = trees["candidate"]["conv_s"], trees["baseline"][key]
        lines.append(
            f"{stage}: the candidate's convolutions {conv:.3f} s per unit, the baseline's {key} {base:.3f}: "
            f"bound {ratio(conv, base)}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", type=Path, required=True)
    parser.add_argument("--candidate", type=Path, default=HERE)
    parser.add_argument("--out", type=Path, default=Path("runs/compare-trees"))
    parser.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--expert-epochs", type=int, default=2)
    parser.add_argument("--ipc", default="10,1")
    parser.add_argument("--iterations", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--stages",
        default="experts,distill,evaluate",
        help="a subset, or run (the whole pipeline); distill needs OUT's baseline expert",
    )
    parser.add_argument("--run-ipc", type=int, default=10, help="ipc of the run stage")
    parser.add_argument("--candidate-first", action="store_true", help="run each pair candidate first")
    parser.add_argument(
        "--profile-convolutions",
        action="store_true",
        help="run the candidate's jobs under conv_profile.py and print the bound its convolutions set",
    )
    args = parser.parse_args(argv)
    for name in ("baseline", "candidate", "out", "data"):  # jobs run with OUT as working directory
        setattr(args, name, getattr(args, name).resolve())
    for tree in (args.baseline, args.candidate):
        if not (tree / "distillkit" / "__init__.py").is_file():
            print(f"error: {tree} is not a distillkit work tree (no distillkit/__init__.py)", file=sys.stderr)
            return 2
    if args.expert_epochs < 2:
        print("error: --expert-epochs must be at least 2 (distillation matches 2 epochs)", file=sys.stderr)
        return 2
    wanted = set(args.stages.split(","))
    if unknown := wanted - {"experts", "distill", "evaluate", "run"}:
        named = ", ".join(sorted(unknown))
        print(f"error: unknown stage {named} (experts, distill, evaluate, run)", file=sys.stderr)
        return 2
    ipcs = [int(x) for x in args.ipc.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    load_before, stages = load_average(), {}
    out_json = args.out / "compare_trees.json"
    order = TREES[::-1] if args.candidate_first else TREES
    try:
        if "experts" in wanted:
            stages["experts"] = {tree: experts(args, tree) for tree in order}
        for ipc in ipcs if "distill" in wanted else []:
            stages[f"distill-ipc{ipc}"] = {tree: distill(args, tree, ipc) for tree in order}
        if "evaluate" in wanted:
            run_dir = args.out / f"baseline-distill-ipc{ipcs[0]}"
            stages["evaluate"] = {tree: evaluate(args, tree, run_dir) for tree in order}
        if "run" in wanted:
            stages["run"] = {tree: whole_run(args, tree) for tree in order}
    except JobFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        out_json.write_text(json.dumps({"stages": stages, "failed": str(exc)}, indent=1))
        return 1
    result = {
        "ipcs": ipcs,
        "stages": stages,
        "load": [load_before, load_average()],
        "trees": {"baseline": str(args.baseline), "candidate": str(args.candidate)},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "json": str(out_json),
    }
    out_json.write_text(json.dumps(result, indent=1))
    report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
