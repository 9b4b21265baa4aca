"""Same-run speed ratios against the reference MTT code, one job at a time on one machine.

Usage:
    python examples/benchmarks/reference_bench.py --reference PATH [--patch] [--out DIR]
        [--reference-python PY] [--data DIR] [--ipc 10,1] [--iterations 25]
        [--distillkit-modes "default;distill.memory=standard"] [--json-out FILE]

``--reference`` is a local work tree of the public repository
GeorgeCazenavette/mtt-distillation (commit 50dccea) with the four small CPU patches of
docs/performance.md ("Same-run comparison with the reference"); ``--patch`` applies them to that
tree. Nothing of the reference is contained in this script: it runs the reference's own
``buffer.py`` and ``distill.py`` as child processes.

Jobs, strictly one after another, each under ``/usr/bin/time -v`` (peak RSS of the process):

1. the reference trains ONE expert (``buffer.py``, ConvNetW32, 6 epochs); seconds per epoch =
   (time of its last "Epoch" line - time of its "DC augmentation parameters" line, printed just
   before training starts) / epochs, i.e. training with the test pass after each epoch, dataset
   building excluded; the whole process's wall time / epochs is reported beside it;
2. ``distillkit import-experts`` turns that ``replay_buffer_0.pt`` into a store, so both codes
   distill from the SAME expert;
3. ``distillkit experts`` trains one expert at the same settings (its manifest's ``seconds``,
   test passes included, / epochs; the process wall time / epochs beside it);
4. per ipc: the reference ``distill.py`` (seconds per iteration = gaps between its
   per-iteration "loading file" lines, timestamped here as they arrive, median after warm-up),
   then ``distillkit distill`` once per mode (median of metrics.jsonl's ``seconds`` after
   warm-up).

``--reference-allocator heap`` runs every job with ``GLIBC_TUNABLES`` set to the glibc malloc
settings distillkit applies to itself (``distillkit.hostmemory``): the reference then gets the same
allocator, which tells how much of a ratio is distillkit's arithmetic and how much its allocator.
The default, ``system``, runs the reference as its users do.

``--profile-convolutions`` (a trial, not the protocol) runs every timed job under ``conv_profile.py``
and adds, per stage, each code's seconds in convolutions and the bound they set on distillkit: its
convolution seconds ÷ the reference's time, the ratio it would reach if nothing else took time.

Then a table with the ratios (distillkit / reference), the fp32 matmul rate measured the way
``distillkit bench`` measures it, the load average, torch version and threads; the same as JSON.
Exit codes: 0 done, 1 a job failed (its log is named), 2 a set-up problem (one line).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import itertools
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JSON_FORMAT = 1
PROTOCOL_EXPERT_EPOCHS = 6
EPOCH_IMAGES = 60_000
REFERENCE_COMMIT = "50dccea"
REFERENCE_REPO = "GeorgeCazenavette/mtt-distillation"
DOC = 'docs/performance.md, "Same-run comparison with the reference"'
CONV_PROFILE = Path(__file__).resolve().parent / "conv_profile.py"
FMNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# Distillation settings of the protocol: reference flag -> distillkit key (and value).
DISTILL_SETTINGS = {
    "syn_steps": ("distill.syn_steps", 20),
    "expert_epochs": ("distill.expert_epochs", 2),
    "max_start_epoch": ("distill.max_start_epoch", 5),
    "lr_img": ("distill.lr_img", 100.0),
    "lr_lr": ("distill.lr_lr", 1e-05),
    "lr_teacher": ("distill.lr_init", 0.01),
}
# What the reference does at commit 50dccea with the protocol's flags (argparse defaults of
# buffer.py / distill.py where no flag is given), beside the distillkit key that does the same.
REFERENCE_EQUIVALENTS: list[tuple[str, Any, str]] = [
    ("data.dataset", "fashion-mnist", "--dataset=FashionMNIST"),
    ("model.name", "convnet-w32", "--model=ConvNetW32"),
    ("data.zca", False, "no --zca"),
    ("data.augment", "color_crop_cutout_flip_scale_rotate", "--dsa_strategy default (DSA on)"),
    ("experts.epochs", 6, "buffer.py --train_epochs=6"),
    ("experts.optimizer", "sgd", "buffer.py: torch.optim.SGD"),
    ("experts.lr", 0.01, "buffer.py --lr_teacher default 0.01"),
    ("experts.momentum", 0.0, "buffer.py --mom default 0"),
    ("experts.weight_decay", 0.0, "buffer.py --l2 default 0"),
    ("experts.batch_size", 256, "buffer.py --batch_train default 256"),
    ("experts.lr_decay", "none", "buffer.py: no --decay"),
    ("experts.eval_every", 1, "buffer.py: test pass after every epoch"),
    ("distill.syn_steps", 20, "--syn_steps=20"),
    ("distill.expert_epochs", 2, "--expert_epochs=2"),
    ("distill.max_start_epoch", 5, "--max_start_epoch=5"),
    ("distill.lr_img", 100.0, "--lr_img=100"),
    ("distill.lr_lr", 1e-05, "--lr_lr=1e-05"),
    ("distill.lr_init", 0.01, "--lr_teacher=0.01"),
    ("distill.batch_syn", 0, "--batch_syn default None (all images each step)"),
    ("distill.img_momentum", 0.5, "distill.py: SGD momentum 0.5 on the images"),
    ("distill.student_momentum", 0.0, "distill.py: plain gradient steps of the student"),
    ("distill.match_denominator", "expert", "distill.py: divides by |start - target|^2"),
    ("distill.memory", "standard", "distill.py keeps the whole unrolled graph"),
]


class SetupError(Exception):
    """A problem found before or between jobs: one line, exit code 2."""


class JobFailed(Exception):
    """A child process failed: one line naming its log, exit code 1."""


# -- the four CPU patches of the reference ----------------------------------------------------

FASHION_BRANCH = """\
{i}elif dataset == 'FashionMNIST':
{i}    channel = 1
{i}    im_size = (28, 28)
{i}    num_classes = 10
{i}    mean = [0.2861]
{i}    std = [0.3530]
{i}    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean=mean, std=std)])
{i}    dst_train = datasets.FashionMNIST(data_path, train=True, download=False, transform=transform)
{i}    dst_test = datasets.FashionMNIST(data_path, train=False, download=False, transform=transform)
{i}    class_names = dst_train.classes
{i}    class_map = {{x: x for x in range(num_classes)}}

"""
_CONVNET_BLOCK = re.compile(r"^class ConvNet\(.*?(?=^class |\Z)", re.MULTILINE | re.DOTALL)
_VIEW = "out = out.view(out.size(0), -1)"
_RESHAPE = "out = out.reshape(out.size(0), -1)"
_SNAPSHOT = "p.detach().cpu() for p in teacher_net.parameters()"
_SNAPSHOT_CLONE = "p.detach().cpu().clone() for p in teacher_net.parameters()"


def _fashion_applied(text: str) -> bool:
    return re.search(r"dataset\s*==\s*['\"]FashionMNIST['\"]", text) is not None


def _fashion_apply(text: str) -> str | None:
    match = re.search(r"^([ \t]*)elif dataset == 'Tiny':", text, re.MULTILINE)
    if match is None:
        return None
    return text[: match.start()] + FASHION_BRANCH.format(i=match.group(1)) + text[match.start() :]


def _convnet_applied(text: str) -> bool:
    block = _CONVNET_BLOCK.search(text)
    return block is not None and _VIEW not in block.group(0) and _RESHAPE in block.group(0)


def _convnet_apply(text: str) -> str | None:
    block = _CONVNET_BLOCK.search(text)
    if block is None or block.group(0).count(_VIEW) != 1:
        return None
    return text[: block.start()] + block.group(0).replace(_VIEW, _RESHAPE) + text[block.end() :]


def _clone_applied(text: str) -> bool:
    return _SNAPSHOT not in text and text.count(_SNAPSHOT_CLONE) >= 2


def _clone_apply(text: str) -> str | None:
    return text.replace(_SNAPSHOT, _SNAPSHOT_CLONE) if text.count(_SNAPSHOT) == 2 else None


def _device_applied(text: str) -> bool:
    return "image_syn.cuda()" not in text


def _device_apply(text: str) -> str | None:
    return (
        text.replace("image_syn.cuda()", "image_syn.to(args.device)") if "image_syn.cuda()" in text else None
    )


@dataclass(frozen=True)
class Patch:
    number: int
    file: str
    what: str
    fix: str
    applied: Callable[[str], bool]
    apply: Callable[[str], str | None]


PATCHES = (
    Patch(
        1,
        "utils.py",
        "get_dataset has no FashionMNIST branch",
        "add one before `elif dataset == 'Tiny':` (1 channel, 28x28, mean 0.2861, std 0.3530, "
        "ToTensor + Normalize, datasets.FashionMNIST(data_path, download=False))",
        _fashion_applied,
        _fashion_apply,
    ),
    Patch(
        2,
        "networks.py",
        "ConvNet.forward's out.view(...) fails on channels_last CPU tensors",
        "in ConvNet.forward use `out = out.reshape(out.size(0), -1)`",
        _convnet_applied,
        _convnet_apply,
    ),
    Patch(
        3,
        "buffer.py",
        "p.detach().cpu() snapshots alias the live parameters on CPU",
        "add .clone() at both `p.detach().cpu()` sites",
        _clone_applied,
        _clone_apply,
    ),
    Patch(
        4,
        "distill.py",
        "image_syn.cuda() fails without CUDA",
        "use `image_syn.to(args.device)`",
        _device_applied,
        _device_apply,
    ),
)
REFERENCE_FILES = ("buffer.py", "distill.py", "utils.py", "networks.py", "reparam_module.py")


def missing_patches(reference: Path) -> list[Patch]:
    """The patches the reference tree does not have yet (files must exist)."""
    for name in REFERENCE_FILES:
        if not (reference / name).is_file():
            raise SetupError(
                f"{reference} is not a work tree of {REFERENCE_REPO}: it has no {name} "
                f"(clone it and check out {REFERENCE_COMMIT}; see {DOC})"
            )
    return [p for p in PATCHES if not p.applied((reference / p.file).read_text())]


def apply_patches(reference: Path, patches: list[Patch]) -> None:
    for patch in patches:
        path = reference / patch.file
        new = patch.apply(path.read_text())
        if new is None or not patch.applied(new):
            raise SetupError(
                f"cannot apply patch {patch.number} to {path}: the text it edits is not there "
                f"(another commit than {REFERENCE_COMMIT}?); by hand: {patch.fix}"
            )
        path.write_text(new)
        print(f"patched {path}: {patch.what} -> {patch.fix}")


def check_reference(reference: Path, patch: bool) -> None:
    missing = missing_patches(reference)
    if missing and patch:
        apply_patches(reference, missing)
        missing = missing_patches(reference)
    if missing:
        parts = "; ".join(f"{p.number} ({p.file}: {p.fix})" for p in missing)
        raise SetupError(
            f"the reference tree {reference} lacks CPU patch{'es' if len(missing) > 1 else ''} {parts}. "
            f"Rerun with --patch to apply {'them' if len(missing) > 1 else 'it'}, or see {DOC}"
        )


def reference_commit(reference: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(reference), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


# -- data -----------------------------------------------------------------------------------


def reference_data(source: Path, out: Path) -> Path:
    """``out/reference-data/FashionMNIST/raw/`` with the gunzipped IDX files torchvision reads."""
    root = out / "reference-data"
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in FMNIST_FILES:
        target = raw / name
        if target.is_file() and target.stat().st_size > 0:
            continue
        gz = source / f"{name}.gz"
        plain = source / name
        if gz.is_file():
            tmp = target.with_suffix(".part")
            with gzip.open(gz, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            tmp.rename(target)
        elif plain.is_file():
            shutil.copyfile(plain, target)
        else:
            raise SetupError(
                f"{source} has no {name}.gz (FashionMNIST IDX files): pass --data DIR holding them "
                "(on Debian-like systems: apt-get install dataset-fashion-mnist)"
            )
    return root


# -- running one job ------------------------------------------------------------------------


@dataclass
class Job:
    name: str
    rc: int
    wall_s: float
    peak_rss_mb: float | None
    lines: list[tuple[float, str]]
    load: list[float | None]
    log: Path


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _time_field(text: str, label: str) -> str | None:
    match = re.search(rf"^\s*{re.escape(label)}:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else None


def run_job(name: str, cmd: list[str], cwd: Path, env: dict[str, str], logs: Path) -> Job:
    """Run ``cmd`` under ``/usr/bin/time -v``; timestamp each stdout line as it arrives."""
    time_file, log, err = logs / f"{name}.time", logs / f"{name}.log", logs / f"{name}.stderr"
    cwd.mkdir(parents=True, exist_ok=True)
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd)}", flush=True)
    load_before = load_average()
    lines: list[tuple[float, str]] = []
    start = time.perf_counter()
    with open(log, "w") as log_file, open(err, "w") as err_file:
        proc = subprocess.Popen(
            ["/usr/bin/time", "-v", "-o", str(time_file), *cmd],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err_file,
            text=True,
            start_new_session=True,
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                stamp = time.perf_counter() - start
                lines.append((stamp, line.rstrip("\n")))
                log_file.write(f"{stamp:10.3f} {line}")
                log_file.flush()
            rc = proc.wait()
        except BaseException:  # interrupted: stop the job's whole process group, then re-raise
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            raise
    wall = time.perf_counter() - start
    report = time_file.read_text() if time_file.exists() else ""
    rss = _time_field(report, "Maximum resident set size (kbytes)")
    if rc != 0:  # GNU time exits with the job's code, or 128 + the signal that ended it
        raise JobFailed(
            f"{name} exited with code {rc} after {wall:.0f} s; its output: {log} and {err}"
            + (f" (last stderr line: {_last_line(err)})" if _last_line(err) else "")
        )
    return Job(name, rc, wall, int(rss) / 1024 if rss else None, lines, [load_before, load_average()], log)


def _last_line(path: Path) -> str:
    try:
        rows = [r.strip() for r in path.read_text(errors="replace").splitlines() if r.strip()]
    except OSError:
        return ""
    rows = [r for r in rows if not r.startswith("Command ") and "\r" not in r]
    return rows[-1][:200] if rows else ""


def stamps(job: Job, pattern: str) -> list[float]:
    rx = re.compile(pattern)
    return [t for t, line in job.lines if rx.search(line)]


def iteration_seconds(run_dir: Path, iterations: int) -> list[float]:
    """Each iteration's ``seconds`` from a ``distillkit distill`` run's ``metrics.jsonl``, all of them."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    seconds = [float(r["seconds"]) for r in rows]
    if len(seconds) != iterations:
        raise JobFailed(f"{run_dir}/metrics.jsonl has {len(seconds)} of {iterations} iterations")
    return seconds


def median_after(values: list[float], warmup: int) -> float | None:
    timed = values[warmup:] if len(values) > warmup else values[-1:]
    return statistics.median(timed) if timed else None


# -- the jobs -------------------------------------------------------------------------------


def under_conv_profile(cmd: list[str], out: Path) -> list[str]:
    """``python ARGS`` as ``python conv_profile.py --out OUT -- ARGS``: the program, timed per operator."""
    return [cmd[0], str(CONV_PROFILE), "--out", str(out), "--", *cmd[1:]]


@dataclass(frozen=True)
class Plan:
    reference: Path
    ref_python: str
    data: Path
    out: Path
    ipcs: list[int]
    iterations: int
    warmup: int
    expert_epochs: int
    modes: list[tuple[str, list[str]]]
    env: dict[str, str]
    profile_dir: Path | None = None  # --profile-convolutions: each job's conv_profile.py JSON goes here

    def command(self, name: str, cmd: list[str]) -> list[str]:
        """``cmd`` as it runs: under ``conv_profile.py`` when profiling."""
        return cmd if self.profile_dir is None else under_conv_profile(cmd, self.profile_json(name))

    def profile_json(self, name: str) -> Path:
        assert self.profile_dir is not None
        return self.profile_dir / f"{name}.json"

    def convolutions(self, name: str, units: int) -> dict[str, Any] | None:
        """Per unit of work (an epoch, an iteration): seconds in convolutions and in all operators."""
        if self.profile_dir is None:
            return None
        profile = json.loads(self.profile_json(name).read_text())
        return {
            "conv_s": profile["conv_s"] / units,
            "operator_s": profile["self_s"] / units,
            "units": units,
            "profile": str(self.profile_json(name)),
        }

    @property
    def max_start_epoch(self) -> int:
        # start epoch in 0..max_start-1 and start + expert_epochs <= epochs
        return min(DISTILL_SETTINGS["max_start_epoch"][1], self.expert_epochs - 1)

    def expert_options(self) -> list[str]:
        """The options that describe the protocol's expert to `distillkit` (import and training alike)."""
        return [
            "--preset",
            "fmnist-cpu",
            "--data-path",
            str(self.data),
            "--set",
            f"experts.epochs={self.expert_epochs}",
            "--set",
            f"distill.expert_epochs={self.distill_settings()['expert_epochs']}",
            "--set",
            f"distill.max_start_epoch={self.max_start_epoch}",
        ]

    def distill_settings(self) -> dict[str, Any]:
        values = {flag: value for flag, (_key, value) in DISTILL_SETTINGS.items()}
        values["max_start_epoch"] = self.max_start_epoch
        return values

    @property
    def logs(self) -> Path:
        return self.out / "logs"


def distillkit_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "distillkit", *args]


def reference_expert(plan: Plan, ref_data: Path) -> tuple[Path, dict[str, Any]]:
    buffers = plan.out / "reference-buffers"
    shutil.rmtree(buffers, ignore_errors=True)  # a stale replay_buffer_0.pt would add a second file
    cmd = [
        plan.ref_python,
        "-u",
        str(plan.reference / "buffer.py"),
        "--dataset=FashionMNIST",
        "--model=ConvNetW32",
        f"--train_epochs={plan.expert_epochs}",
        "--num_experts=1",
        "--save_interval=1",
        f"--buffer_path={buffers}",
        f"--data_path={ref_data}",
    ]
    name = "reference-expert"
    job = run_job(name, plan.command(name, cmd), plan.out / "reference-cwd", plan.env, plan.logs)
    begin = stamps(job, r"^DC augmentation parameters")
    epochs = stamps(job, r"^Itr: 0\tEpoch: ")
    buffer = buffers / "FashionMNIST" / "ConvNetW32" / "replay_buffer_0.pt"
    if not begin or len(epochs) != plan.expert_epochs or not buffer.is_file():
        raise JobFailed(
            f"reference-expert printed {len(epochs)} of {plan.expert_epochs} epoch lines"
            f" or wrote no {buffer}; see {job.log}"
        )
    training = epochs[-1] - begin[0]
    gaps = [b - a for a, b in zip([begin[0], *epochs[:-1]], epochs, strict=True)]
    figures = {
        "s_per_epoch": training / plan.expert_epochs,
        "epoch_seconds": gaps,
        "process_wall_s": job.wall_s,
        "process_wall_s_per_epoch": job.wall_s / plan.expert_epochs,
        "peak_rss_mb": job.peak_rss_mb,
        "load_average": job.load,
        "measured": "(last 'Epoch' line - 'DC augmentation parameters' line) / epochs: "
        "training with the test pass after each epoch; dataset building excluded",
        "buffer": str(buffer),
        "convolutions": plan.convolutions(name, plan.expert_epochs),
    }
    return buffer, figures


def import_buffer(plan: Plan, buffer: Path) -> Path:
    store = plan.out / "store-from-reference"
    shutil.rmtree(store, ignore_errors=True)
    cmd = distillkit_cmd(
        "import-experts",
        str(buffer),
        "--out",
        str(store),
        *plan.expert_options(),
    )
    run_job("import-experts", cmd, plan.out, plan.env, plan.logs)
    return store


def distillkit_expert(plan: Plan) -> dict[str, Any]:
    store = plan.out / "store-distillkit-expert"
    shutil.rmtree(store, ignore_errors=True)  # else its finished expert would be reused, not timed
    cmd = distillkit_cmd(
        "experts",
        *plan.expert_options(),
        "--set",
        "experts.count=1",
        "--set",
        "experts.eval_every=1",  # a test pass after every epoch, as buffer.py makes
        "--out",
        str(store),
        "--quiet",
    )
    name = "distillkit-expert"
    job = run_job(name, plan.command(name, cmd), plan.out, plan.env, plan.logs)
    entries = json.loads((store / "manifest.json").read_text())["experts"]
    seconds = entries[0].get("seconds") if entries else None
    if seconds is None:
        raise JobFailed(f"distillkit-expert recorded no seconds in {store / 'manifest.json'}")
    return {
        "s_per_epoch": seconds / plan.expert_epochs,
        "process_wall_s": job.wall_s,
        "process_wall_s_per_epoch": job.wall_s / plan.expert_epochs,
        "peak_rss_mb": job.peak_rss_mb,
        "load_average": job.load,
        "measured": "manifest 'seconds' of the expert / epochs: training with the test pass after "
        "each epoch (experts.eval_every = 1) and the per-epoch partial checkpoints; "
        "data loading excluded",
        "convolutions": plan.convolutions(name, plan.expert_epochs),
    }


def reference_distill(plan: Plan, ipc: int, buffers: Path, ref_data: Path) -> dict[str, Any]:
    settings = plan.distill_settings()
    cmd = [
        plan.ref_python,
        "-u",
        str(plan.reference / "distill.py"),
        "--dataset=FashionMNIST",
        "--model=ConvNetW32",
        f"--ipc={ipc}",
        *(
            f"--{flag}={value:g}" if isinstance(value, float) else f"--{flag}={value}"
            for flag, value in settings.items()
        ),
        f"--Iteration={plan.iterations}",
        "--eval_it=100000",
        "--num_eval=0",
        f"--buffer_path={buffers}",
        f"--data_path={ref_data}",
    ]
    name = f"reference-distill-ipc{ipc}"
    job = run_job(name, plan.command(name, cmd), plan.out / f"reference-cwd-ipc{ipc}", plan.env, plan.logs)
    # With one buffer file of one expert, distill.py prints "loading file" once before the loop and
    # once in every iteration (0..Iteration) when it wraps round the buffer and reloads the file.
    loads = stamps(job, r"^loading file ")
    per_iteration = loads[1:]
    if len(per_iteration) < plan.iterations + 1:
        raise JobFailed(
            f"reference-distill-ipc{ipc} printed {len(per_iteration)} per-iteration 'loading file' lines, "
            f"expected {plan.iterations + 1} (one buffer file of one expert); see {job.log}"
        )
    gaps = [b - a for a, b in itertools.pairwise(per_iteration)]
    return {
        "s_per_iter": median_after(gaps, plan.warmup),
        "iteration_seconds": gaps,
        "peak_rss_mb": job.peak_rss_mb,
        "process_wall_s": job.wall_s,
        "load_average": job.load,
        "measured": "median of the gaps between per-iteration 'loading file' lines after the first "
        f"{plan.warmup}",
        "convolutions": plan.convolutions(name, plan.iterations + 1),
    }


def distillkit_distill(plan: Plan, ipc: int, store: Path, label: str, sets: list[str]) -> dict[str, Any]:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-") or "default"
    run_dir = plan.out / f"distillkit-ipc{ipc}-{slug}"
    settings = plan.distill_settings()
    overrides = [f"{DISTILL_SETTINGS[flag][0]}={value}" for flag, value in settings.items()]
    overrides += [f"distill.iterations={plan.iterations}", f"experts.epochs={plan.expert_epochs}", *sets]
    cmd = distillkit_cmd(
        "distill",
        "--experts",
        str(store),
        "--preset",
        "fmnist-cpu",
        "--data-path",
        str(plan.data),
        "--ipc",
        str(ipc),
        *(arg for item in overrides for arg in ("--set", item)),
        "--out",
        str(run_dir),
        "--overwrite",
        "--quiet",
    )
    name = f"distillkit-distill-ipc{ipc}-{slug}"
    job = run_job(name, plan.command(name, cmd), plan.out, plan.env, plan.logs)
    seconds = iteration_seconds(run_dir, plan.iterations)
    return {
        "mode": label,
        "sets": sets,
        "s_per_iter": median_after(seconds, plan.warmup),
        "iteration_seconds": seconds,
        "peak_rss_mb": job.peak_rss_mb,
        "process_wall_s": job.wall_s,
        "load_average": job.load,
        "run_dir": str(run_dir),
        "measured": f"median of metrics.jsonl 'seconds' (Distiller.step()) after the first {plan.warmup}",
        "convolutions": plan.convolutions(name, plan.iterations),
    }


# -- environment, settings check, report --------------------------------------------------------


def reference_python_info(plan: Plan) -> dict[str, Any]:
    probe = (
        "import torch, torchvision, kornia, scipy, tqdm, wandb; "
        "print(torch.__version__, torch.get_num_threads(), torchvision.__version__)"
    )
    try:
        proc = subprocess.run(
            [plan.ref_python, "-c", probe], capture_output=True, text=True, env=plan.env, cwd=plan.out
        )
    except OSError as exc:
        raise SetupError(f"cannot run the reference Python {plan.ref_python}: {exc}") from exc
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SetupError(
            f"the reference Python {plan.ref_python} cannot import the reference's packages ({last}): "
            "pip install kornia wandb tqdm scipy into it (torch and torchvision too), or pass "
            "--reference-python PATH"
        )
    torch_version, threads, tv = proc.stdout.split()
    return {"python": plan.ref_python, "torch": torch_version, "threads": int(threads), "torchvision": tv}


def preset_differences() -> list[dict[str, Any]]:
    """The fmnist-cpu preset beside what the reference runs with the protocol's flags."""
    from distillkit.config import flatten_table, to_dict
    from distillkit.resolve import resolve_config

    config, _host = resolve_config("fmnist-cpu")
    flat = flatten_table({k: v for k, v in to_dict(config).items() if k not in ("plugins", "plugin_options")})
    rows = []
    for key, ref_value, where in REFERENCE_EQUIVALENTS:
        value = flat.get(key)
        if value != ref_value:
            rows.append({"key": key, "preset": value, "reference": ref_value, "reference_source": where})
    if config.plugins:
        rows.append(
            {"key": "plugins", "preset": list(config.plugins), "reference": [], "reference_source": ""}
        )
    return rows


def parse_modes(text: str) -> list[tuple[str, list[str]]]:
    modes = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        if part == "default":
            modes.append(("default", []))
            continue
        sets = [s.strip() for s in part.split(",") if s.strip()]
        bad = [s for s in sets if "=" not in s]
        if bad:
            raise SetupError(
                f"--distillkit-modes: '{bad[0]}' is not KEY=VALUE (modes: 'default;KEY=V,KEY=V')"
            )
        modes.append((",".join(sets), sets))
    if not modes:
        raise SetupError("--distillkit-modes names no mode")
    return modes


def _mib(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1024:.2f} GiB" if value >= 1024 else f"{value:.0f} MiB"


def _s(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f} s"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _less(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _r(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def print_report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 150)  # 80 columns would wrap the table
    modes = [label for label, _sets in result["modes"]]
    table = Table(title="FashionMNIST ConvNetW32, N 20: reference MTT vs distillkit, same run")
    table.add_column("quantity")
    table.add_column("reference MTT", justify="right")
    for label in modes:
        table.add_column(f"distillkit {label}", justify="right")
        table.add_column("ratio", justify="right")
    for row in result["distill"]:
        ref = row["reference"]
        cells_s, cells_m = [_s(ref["s_per_iter"])], [_mib(ref["peak_rss_mb"])]
        for dk in row["distillkit"]:
            cells_s += [_s(dk["s_per_iter"]), _r(dk["ratio_s_per_iter"])]
            cells_m += [_mib(dk["peak_rss_mb"]), _r(dk["ratio_peak_rss"])]
        table.add_row(f"ipc {row['ipc']}: s/iteration", *cells_s)
        table.add_row(f"ipc {row['ipc']}: peak RSS", *cells_m)
    experts = result["experts"]
    if experts:
        ref, dk = experts["reference"], experts["distillkit"]
        pad = [""] * (2 * len(modes) - 2)
        table.add_row(
            f"expert s/epoch ({EPOCH_IMAGES:,} images, test pass)",
            _s(ref["s_per_epoch"], 1),
            _s(dk["s_per_epoch"], 1),
            _r(experts["ratio_s_per_epoch"]),
            *pad,
        )
        table.add_row(
            "expert process wall / epoch",
            _s(ref["process_wall_s_per_epoch"], 1),
            _s(dk["process_wall_s_per_epoch"], 1),
            _r(_ratio(dk["process_wall_s_per_epoch"], ref["process_wall_s_per_epoch"])),
            *pad,
        )
        table.add_row(
            "expert peak RSS",
            _mib(ref["peak_rss_mb"]),
            _mib(dk["peak_rss_mb"]),
            _r(_ratio(dk["peak_rss_mb"], ref["peak_rss_mb"])),
            *pad,
        )
    console.print(table)
    if result.get("profiled"):
        console.print(convolution_table(result))
    env = result["environment"]
    mm = result["matmul_peak"]
    console.print(
        f"fp32 matmul (distillkit.bench.matmul_peak_gflops, n={mm['before']['n']}): "
        f"{mm['before']['gflops']:.1f} GFLOP/s before, {mm['after']['gflops']:.1f} after"
    )
    load = result["load_average"]
    console.print(
        f"load average (1 min): {load['before']} before, {load['after']} after; per job in the JSON"
    )
    ref_env = env["reference_python"]
    console.print(
        f"torch {env['torch']} ({env['threads']} threads) for distillkit; reference Python "
        f"{ref_env['python']}: torch {ref_env['torch']} ({ref_env['threads']} threads); "
        f"OMP_NUM_THREADS={env['omp_num_threads']}; {env['cpu']} ({env['cpu_count']} CPUs)"
    )
    if env.get("glibc_tunables"):
        console.print(f"every job under GLIBC_TUNABLES={env['glibc_tunables']} (--reference-allocator heap)")
    console.print(
        f"reference {REFERENCE_REPO} at {result['reference_commit'] or 'unknown commit'}; expert epochs "
        f"{result['settings']['expert_epochs']}, {result['settings']['iterations']} iterations, warm-up "
        f"{result['settings']['warmup']}"
        + ("" if result["protocol"] else "  [NOT the protocol's settings: a trial]")
    )
    for diff in result["preset_vs_reference"]:
        console.print(
            f"preset fmnist-cpu {diff['key']} = {diff['preset']!r}, reference: {diff['reference']!r} "
            f"({diff['reference_source']})"
        )


def convolution_table(result: dict[str, Any]) -> Any:
    """Per stage: seconds in convolutions, the rest of its time, and the bound the convolutions set.

    The bound is distillkit's convolution seconds ÷ the reference's whole time for the same work:
    the ratio distillkit would reach if everything but its convolutions took no time at all. The
    times ran under ``conv_profile.py``, whose per-call cost inflates many-small-operator work (ipc 1)
    more than the convolutions; an unprofiled run's times give the exact bound.
    """
    from rich.table import Table

    modes = [label for label, _sets in result["modes"]]
    title = "Where the time goes (conv_profile.py; the times above ran under it, which slows small operators)"
    table = Table(title=title)
    table.add_column("per unit of work")
    table.add_column("reference MTT", justify="right")
    for label in modes:
        table.add_column(f"distillkit {label}", justify="right")

    def add(stage: str, ref: dict[str, Any], unit_s: str, ours: list[dict[str, Any]]) -> None:
        pad = [""] * (len(modes) - len(ours))
        everyone = [ref, *ours]
        table.add_row(f"{stage}: convolutions", *(_s(c["convolutions"]["conv_s"]) for c in everyone), *pad)
        table.add_row(
            f"{stage}: the rest (its time - convolutions)",
            *(_s(_less(c[unit_s], c["convolutions"]["conv_s"])) for c in everyone),
            *pad,
        )
        table.add_row(
            f"{stage}: bound (convolutions / reference's time)",
            "",
            *(_r(_ratio(c["convolutions"]["conv_s"], ref[unit_s])) for c in ours),
            *pad,
        )

    for row in result["distill"]:
        ref = row["reference"]
        add(f"ipc {row['ipc']} iteration", ref, "s_per_iter", row["distillkit"])
    if result["experts"]:
        add("expert epoch", result["experts"]["reference"], "s_per_epoch", [result["experts"]["distillkit"]])
    return table


def environment(plan: Plan) -> dict[str, Any]:
    import torch

    from distillkit.bench import cpu_model

    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "omp_num_threads": plan.env.get("OMP_NUM_THREADS"),
        "glibc_tunables": plan.env.get("GLIBC_TUNABLES"),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def run(plan: Plan, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from distillkit.bench import matmul_peak_gflops

    ref_info = reference_python_info(plan)
    env_info = {**environment(plan), "reference_python": ref_info}
    load_before = load_average()
    matmul_before = matmul_peak_gflops(torch.device("cpu"))
    ref_data = reference_data(plan.data, plan.out)
    buffers = plan.out / "reference-buffers"
    experts: dict[str, Any] | None = None
    if args.reuse_experts:
        buffer = buffers / "FashionMNIST" / "ConvNetW32" / "replay_buffer_0.pt"
        if not buffer.is_file():
            raise SetupError(f"--reuse-experts: {buffer} is missing (run once without it)")
        print(f"reusing {buffer}: expert training neither run nor timed")
        store = import_buffer(plan, buffer)
    else:
        buffer, ref_expert = reference_expert(plan, ref_data)
        store = import_buffer(plan, buffer)
        dk_expert = distillkit_expert(plan)
        experts = {
            "reference": ref_expert,
            "distillkit": dk_expert,
            "ratio_s_per_epoch": _ratio(dk_expert["s_per_epoch"], ref_expert["s_per_epoch"]),
        }
    distill = []
    for ipc in plan.ipcs:
        ref = reference_distill(plan, ipc, buffers, ref_data)
        rows = []
        for label, sets in plan.modes:
            dk = distillkit_distill(plan, ipc, store, label, sets)
            dk["ratio_s_per_iter"] = _ratio(dk["s_per_iter"], ref["s_per_iter"])
            dk["ratio_peak_rss"] = _ratio(dk["peak_rss_mb"], ref["peak_rss_mb"])
            rows.append(dk)
        distill.append({"ipc": ipc, "reference": ref, "distillkit": rows})
    matmul_after = matmul_peak_gflops(torch.device("cpu"))
    commit = reference_commit(plan.reference)
    protocol = (
        plan.expert_epochs == PROTOCOL_EXPERT_EPOCHS
        and plan.iterations == 25
        and plan.warmup == 5
        and not args.reuse_experts
        and plan.profile_dir is None
    )
    return {
        "format": JSON_FORMAT,
        "protocol": protocol,
        "reference_repository": REFERENCE_REPO,
        "reference_commit": commit,
        "settings": {
            "ipc": plan.ipcs,
            "iterations": plan.iterations,
            "warmup": plan.warmup,
            "expert_epochs": plan.expert_epochs,
            "distill": plan.distill_settings(),
            "data": str(plan.data),
        },
        "modes": plan.modes,
        "profiled": plan.profile_dir is not None,
        "environment": env_info,
        "matmul_peak": {"before": matmul_before, "after": matmul_after},
        "load_average": {"before": load_before, "after": load_average()},
        "preset_vs_reference": preset_differences(),
        "notes": [
            "reference s/iteration covers its whole loop body: the per-iteration torch.load of the "
            "expert file, building the student, the matching, the outer step and the (disabled) wandb "
            "calls; distillkit's metrics.jsonl 'seconds' is Distiller.step() (experts loaded once, "
            "checkpoint writes every distill.checkpoint_every iterations outside it)",
            "reference distill.py runs Iteration+1 iterations (0..Iteration); distillkit runs Iteration",
            "both codes distill from the one reference expert imported into a store (the fmnist-cpu "
            "preset's experts.count 4 does not apply); distillkit's own expert is trained only to time it",
            "peak RSS: /usr/bin/time -v 'Maximum resident set size' of the whole process (the largest "
            "process of its tree, not a sum), data loading included",
        ],
        "distill": distill,
        "experts": experts,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Same-run speed ratios: reference MTT vs distillkit (docs/performance.md)."
    )
    parser.add_argument("--reference", type=Path, required=True, help=f"work tree of {REFERENCE_REPO}")
    parser.add_argument(
        "--reference-python", default=sys.executable, help="Python with the reference's packages"
    )
    parser.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--ipc", default="10,1", help="comma-separated, e.g. 10,1")
    parser.add_argument("--iterations", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=5, help="iterations left out of the median")
    parser.add_argument("--out", type=Path, default=Path("runs/reference-bench"))
    parser.add_argument("--json-out", type=Path, default=None, help="default OUT/reference_bench.json")
    parser.add_argument(
        "--distillkit-modes",
        default="default;distill.memory=standard",
        help="';'-separated modes, each 'default' (the fmnist-cpu preset) or KEY=VALUE[,KEY=VALUE] overrides",
    )
    parser.add_argument("--patch", action="store_true", help="apply the four CPU patches to --reference")
    parser.add_argument(
        "--expert-epochs",
        type=int,
        default=PROTOCOL_EXPERT_EPOCHS,
        help="trials only (protocol: 6); max_start_epoch becomes min(5, epochs-1)",
    )
    parser.add_argument("--threads", type=int, default=None, help="set OMP_NUM_THREADS for every job")
    parser.add_argument(
        "--reference-allocator",
        choices=("system", "heap"),
        default="system",
        help="heap: every job under GLIBC_TUNABLES equal to distillkit's own malloc settings",
    )
    parser.add_argument(
        "--profile-convolutions",
        action="store_true",
        help="run every timed job under conv_profile.py and print its convolution seconds (a trial)",
    )
    parser.add_argument(
        "--reuse-experts",
        action="store_true",
        help="trials: reuse OUT's reference expert, train and time no expert",
    )
    args = parser.parse_args(argv)
    try:
        if not Path("/usr/bin/time").is_file():
            raise SetupError("/usr/bin/time is missing (GNU time; apt-get install time)")
        reference = args.reference.resolve()
        if not reference.is_dir():
            raise SetupError(f"--reference {reference} is not a folder (clone {REFERENCE_REPO}; see {DOC})")
        check_reference(reference, args.patch)
        try:
            ipcs = [int(x) for x in args.ipc.split(",") if x.strip()]
        except ValueError:
            raise SetupError(f"--ipc expects integers like 10,1, got '{args.ipc}'") from None
        if not ipcs or min(ipcs) < 1 or args.iterations < 2 or args.warmup < 0 or args.expert_epochs < 2:
            raise SetupError("--ipc values >= 1, --iterations >= 2, --warmup >= 0, --expert-epochs >= 2")
        if args.threads:
            os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch is imported here
        env = dict(os.environ, WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
        if args.reference_allocator == "heap":
            from distillkit.hostmemory import glibc_tunables

            env["GLIBC_TUNABLES"] = glibc_tunables()
        out = args.out.resolve()
        (out / "logs").mkdir(parents=True, exist_ok=True)
        plan = Plan(
            reference=reference,
            ref_python=args.reference_python,
            data=args.data.resolve(),
            out=out,
            ipcs=ipcs,
            iterations=args.iterations,
            warmup=args.warmup,
            expert_epochs=args.expert_epochs,
            modes=parse_modes(args.distillkit_modes),
            env=env,
            profile_dir=out / "profiles" if args.profile_convolutions else None,
        )
        result = run(plan, args)
    except SetupError as exc:
        print(f"reference_bench: error: {exc}", file=sys.stderr)
        return 2
    except JobFailed as exc:
        print(f"reference_bench: failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("reference_bench: interrupted", file=sys.stderr)
        return 130
    json_out = args.json_out or plan.out / "reference_bench.json"
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(result, indent=2) + "\n")
    print_report(result)
    print(f"JSON: {json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
