"""Try every fault and bad input on the real ``distillkit`` command; print (or write) the table.

    python examples/reliability/fault_table.py            # print the markdown table
    python examples/reliability/fault_table.py --write    # ... and put it into docs/reliability.md

Each fault runs ``python -m distillkit ...`` as a subprocess in a fresh temporary
workspace (its own expert cache, so nothing outside is touched). Per row the
script records the exit code and what the user sees on stderr, and checks that
the error is one line with no traceback, that every file written before the
command is byte-identical afterwards (sha256), and that no half-made run
directory is left behind. It exits 1 if any row misses its expected exit code
or a check fails, so it doubles as an end-to-end test.

A row is one :class:`Fault` in :data:`FAULTS`; add one there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
BEGIN, END = "<!-- fault-table:begin -->", "<!-- fault-table:end -->"

#: A digits run small enough to make each row take seconds.
TINY = {
    "experts.count": "1",
    "experts.epochs": "4",
    "distill.max_start_epoch": "2",
    "distill.syn_steps": "5",
    "distill.iterations": "4",
    "evaluate.runs": "1",
    "evaluate.epochs": "5",
}
EXPERTS_ONLY = ("experts.count", "experts.epochs", "distill.max_start_epoch")


def tiny(**changes: object) -> list[str]:
    """``--set`` options for TINY with some keys changed (a key may be given only once)."""
    values = TINY | {k.replace("__", "."): str(v) for k, v in changes.items()}
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def shown(argv: list[str]) -> str:
    """The command as the table shows it: ``--set`` options with TINY's values become one ``$TINY``."""
    words: list[str] = []
    i = 0
    while i < len(argv):
        key, _, value = argv[i + 1].partition("=") if argv[i] == "--set" else ("", "", "")
        if TINY.get(key) == value:
            words += [] if "$TINY" in words else ["$TINY"]
            i += 2
        else:
            words.append(argv[i] if len(argv[i]) <= 60 else f"{argv[i][:3]}…({len(argv[i])} characters)")
            i += 1
    return "distillkit " + " ".join(words)


@dataclass
class Fault:
    """One row: set the scene, run ``distillkit ARGV`` in the workspace, check what happened."""

    title: str
    argv: list[str]
    expect: int = 2
    #: Damage files or start processes first (gets the workspace; may return a process to stop after).
    setup: Callable[[Path], subprocess.Popen | None] | None = None
    #: Paths whose files must be byte-identical after the command.
    protect: tuple[str, ...] = ()
    #: Paths that must not exist after the command (no half-made run directory).
    absent: tuple[str, ...] = ()
    #: (path that appears, signal): interrupt the command once that path exists.
    interrupt: tuple[str, int] | None = None
    #: Extra verdict for the last column, from the workspace (raise AssertionError when wrong).
    check: Callable[[Path], str] | None = None
    #: Extra environment variables for the command (paths relative to the workspace are made absolute).
    env: dict[str, str] = field(default_factory=dict)
    #: Text that must appear on stderr (e.g. the notice that a stop was requested).
    says: str = ""
    #: Why the row cannot run here (checked before it runs; the row is then reported, not failed).
    needs: Callable[[], str] | None = None


@dataclass
class Row:
    fault: Fault
    code: int
    seen: str
    verdicts: list[str] = field(default_factory=list)
    ok: bool = True


# -- running ---------------------------------------------------------------------------------


def distillkit(
    workspace: Path, argv: list[str], extra_env: dict[str, str] | None = None, **popen: object
) -> subprocess.Popen:
    env = os.environ | {"DISTILLKIT_CACHE": str(workspace / "cache"), "NO_COLOR": "1", "COLUMNS": "80"}
    env |= {k: str(workspace / v) for k, v in (extra_env or {}).items()}
    return subprocess.Popen(
        [sys.executable, "-m", "distillkit", *argv],
        cwd=workspace,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def run_ok(workspace: Path, argv: list[str]) -> None:
    proc = distillkit(workspace, argv)
    _out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"setup failed: {shown(argv)}\n{err}")


def wait_for(workspace: Path, pattern: str, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    """Poll until a file matching ``pattern`` exists in the workspace (while ``proc`` runs)."""
    deadline = time.monotonic() + timeout
    while not any(workspace.glob(pattern)):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{pattern} never appeared: {proc.communicate()[1][-500:]}")
        time.sleep(0.05)


def hashes(workspace: Path, paths: tuple[str, ...]) -> dict[str, str]:
    files = []
    for name in paths:
        path = workspace / name
        files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    files = [p for p in files if p.name != ".lock"]  # the lock holds its holder's pid: bookkeeping
    return {str(p.relative_to(workspace)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def is_progress(line: str) -> bool:
    """A plain progress line (stderr is not a terminal here) or the notice that a stop was requested."""
    return re.match(r"\d\d:\d\d:\d\d distillkit: ", line) is not None or line.startswith("Stopping:")


def what_the_user_sees(stdout: str, stderr: str) -> str:
    """The ``Error:`` line and its hint; for click's boxed usage errors the box text; else stdout's end."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [i for i, line in enumerate(lines) if line.startswith("Error:")]
    if errors:
        first = errors[0]
        hint = lines[first + 1] if first + 1 < len(lines) and lines[first + 1].startswith("Hint:") else ""
        return lines[first] + (f"<br>{hint}" if hint else "")
    boxed = [line.strip("│ ") for line in lines if line.startswith("│")]
    if boxed:
        return "Error (usage): " + " ".join(boxed)
    out = [line.strip() for line in stdout.splitlines() if line.strip()]
    return out[-1] if out else (lines[0] if lines else "")


def try_fault(workspace: Path, fault: Fault) -> Row:
    missing = fault.needs() if fault.needs else ""
    if missing:
        return Row(fault, -1, f"not run: {missing}", ["skipped"])
    background = fault.setup(workspace) if fault.setup else None
    before = hashes(workspace, fault.protect)
    try:
        proc = distillkit(workspace, fault.argv, fault.env)
        if fault.interrupt:
            marker, signum = fault.interrupt
            wait_for(workspace, marker, proc)
            proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=600)
        holder_alive = background is not None and background.poll() is None
    finally:
        if background is not None:
            background.kill()
            background.communicate()
    seen = re.sub(
        r"(\w)\1{59,}",
        lambda m: f"{m.group(1) * 3}…({len(m.group(0))} characters)",
        what_the_user_sees(stdout, stderr),
    )
    row = Row(fault, proc.returncode, seen.replace("|", "\\|"))
    if proc.returncode != fault.expect:
        row.verdicts.append(f"✗ exit {proc.returncode}, expected {fault.expect}")
        row.ok = False
    if "Traceback" in stderr:
        row.verdicts.append("✗ traceback")
        row.ok = False
    elif proc.returncode != 0:
        lines = [line for line in stderr.splitlines() if line.strip() and not is_progress(line)]
        if proc.returncode == 130:
            one_line = lines[-1:] == ["Interrupted."] or (
                lines[-2:-1] and lines[-2].startswith("Error: stopped") and lines[-1].startswith("Hint:")
            )
            row.verdicts.append("stop message" if one_line else "✗ no stop message")
            row.ok &= bool(one_line)
        else:
            one_line = bool(lines) and lines[0].startswith("Error:") and len(lines) <= 2
            row.verdicts.append("one line" if one_line else "usage box (click)")
    if background is not None:
        row.verdicts.append("other run still running" if holder_alive else "✗ other run stopped")
        row.ok &= holder_alive
    if fault.says:
        said = fault.says in stderr
        row.verdicts.append(f"says “{fault.says}”" if said else f"✗ never says “{fault.says}”")
        row.ok &= said
    if fault.protect:
        after = hashes(workspace, fault.protect)
        changed = sorted(k for k in before if after.get(k) != before[k])
        row.verdicts.append(
            f"✗ changed: {', '.join(changed)}" if changed else f"{len(before)} files unchanged"
        )
        row.ok &= not changed
    for name in fault.absent:
        left = (workspace / name).exists()
        row.verdicts.append(f"✗ {name}/ left behind" if left else "no run dir left")
        row.ok &= not left
    if fault.check:
        try:
            row.verdicts.append(fault.check(workspace))
        except AssertionError as exc:
            row.verdicts.append(f"✗ {exc}")
            row.ok = False
    return row


# -- the scenes --------------------------------------------------------------------------------


def prepare(workspace: Path) -> None:
    """A small expert store and one finished run, the "previous work" the faults must not damage."""
    run_ok(workspace, ["experts", "--out", "store", "--quiet", *tiny()[: 2 * len(EXPERTS_ONLY)]])
    run_ok(workspace, ["run", "--experts", "store", "--out", "done", "--quiet", *tiny()])
    (workspace / "empty").mkdir()


def copy_tree(workspace: Path, source: str, target: str) -> Path:
    destination = workspace / target
    for path in (workspace / source).rglob("*"):
        if path.is_file() and path.name != ".lock":
            (destination / path.relative_to(workspace / source)).parent.mkdir(parents=True, exist_ok=True)
            (destination / path.relative_to(workspace / source)).write_bytes(path.read_bytes())
    return destination


def damaged_store(how: str) -> Callable[[Path], None]:
    def setup(workspace: Path) -> None:
        path = copy_tree(workspace, "store", f"store-{how}") / "expert_000.safetensors"
        data = path.read_bytes()
        middle = len(data) // 2
        if how == "flip":
            data = data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :]
        path.write_bytes(data if how == "flip" else data[:middle])

    return setup


def store_key(name: str, **changes: object) -> Callable[[Path], None]:
    def setup(workspace: Path) -> None:
        manifest = copy_tree(workspace, "store", name) / "manifest.json"
        data = json.loads(manifest.read_text())
        data["key"].update(changes)
        manifest.write_text(json.dumps(data, indent=2))

    return setup


def damaged_run(name: str, file: str, how: str) -> Callable[[Path], None]:
    def setup(workspace: Path) -> None:
        path = copy_tree(workspace, "done", name) / file
        data = path.read_bytes()
        path.write_bytes(
            data[: len(data) // 2] if how == "truncate" else data[:-1] + bytes([data[-1] ^ 0xFF])
        )

    return setup


def unfinished_run(workspace: Path) -> None:
    folder = copy_tree(workspace, "done", "unfinished")
    for name in ("results.json", "run.json", "synthetic.safetensors", "synthetic.json", "grid.png"):
        (folder / name).unlink()


def write_file(name: str, content: bytes) -> Callable[[Path], None]:
    def setup(workspace: Path) -> None:
        (workspace / name).write_bytes(content)

    return setup


def busy_run(name: str) -> Callable[[Path], subprocess.Popen]:
    """A real run that keeps writing ``name/`` (a long distillation) while the row's command runs."""

    def setup(workspace: Path) -> subprocess.Popen:
        argv = ["run", "--experts", "store", "--out", name, "--quiet"]
        proc = distillkit(workspace, argv + tiny(distill__iterations=1_000_000, distill__checkpoint_every=0))
        wait_for(workspace, f"{name}/metrics.jsonl", proc)
        return proc

    return setup


def killed_run(workspace: Path) -> None:
    """A run SIGKILLed mid-distillation, right after its first checkpoint."""
    argv = ["run", "--experts", "store", "--out", "killed", "--quiet"]
    proc = distillkit(workspace, argv + tiny(distill__iterations=40, distill__checkpoint_every=2))
    wait_for(workspace, "killed/checkpoints/ckpt-*.json", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()


def metrics_complete(run: str, iterations: int) -> Callable[[Path], str]:
    def check(workspace: Path) -> str:
        rows = [json.loads(line) for line in (workspace / run / "metrics.jsonl").read_text().splitlines()]
        assert [r["iteration"] for r in rows] == list(range(iterations)), "metrics.jsonl has gaps"
        assert (workspace / run / "results.json").exists(), "no results.json"
        return f"all {iterations} iterations in metrics.jsonl once, results.json written"

    return check


def last_good_set_saved(run: str) -> Callable[[Path], str]:
    def check(workspace: Path) -> str:
        meta = json.loads((workspace / run / "synthetic.json").read_text())
        assert meta.get("status", "").startswith("stopped"), "no saved set"
        return f"last good set saved (iteration {meta['iteration']})"

    return check


def interrupted_state_saved(workspace: Path, run: str = "interrupted") -> str:
    saved = sorted((workspace / run / "checkpoints").glob("ckpt-*.json"))
    assert saved, "no checkpoint"
    return f"checkpoint {saved[-1].stem} kept"


def finished_with(run: str) -> Callable[[Path], str]:
    """How a run the guard let through ended: rollbacks, the largest pixel, the accuracy."""

    def check(workspace: Path) -> str:
        from distillkit.artifacts import load_synthetic

        rolled = sum(
            len(json.loads(line)["rollbacks"]) for line in (workspace / run / "metrics.jsonl").open()
        )
        largest = float(load_synthetic(workspace / run)[0].abs().max())
        accuracy = json.loads((workspace / run / "results.json").read_text())["distilled"]["mean"]
        return f"finished: {rolled} rollbacks, largest pixel {largest:.2g}, accuracy {accuracy:.0%}"

    return check


def shortened_metrics(workspace: Path) -> None:
    """An unfinished run whose metrics.jsonl lost lines after its last checkpoint was written."""
    unfinished_run(workspace)
    metrics = workspace / "unfinished" / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes()[:10])


FAULTY_PLUGINS = """
from dataclasses import dataclass
from typing import ClassVar

import torch

from distillkit.hookspecs import hookimpl


class StateNotJson:
    name: ClassVar[str] = "state-not-json"

    @hookimpl
    def inner_loss_weight(self, run, ctx):
        return 1.0

    def state_dict(self):
        return {"seen": {1, 2, 3}}

    def load_state_dict(self, state):
        pass


class DeltaOfOne:
    name: ClassVar[str] = "delta-of-one"

    @hookimpl
    def perturb_expert(self, run, ctx):
        return torch.zeros(1)


class ExitsZero:
    name: ClassVar[str] = "exits-zero"

    @hookimpl
    def inner_loss_weight(self, run, ctx):
        raise SystemExit(0)


class Raises:
    name: ClassVar[str] = "raises"

    @hookimpl
    def inner_loss_weight(self, run, ctx):
        raise RuntimeError("boom")
"""


def faulty_plugins(workspace: Path) -> None:
    """An installed third-party package of misbehaving plugins: a module and its dist-info on a path."""
    site = workspace / "site"
    info = site / "faulty_plugins-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (site / "faulty_plugins.py").write_text(FAULTY_PLUGINS)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: faulty-plugins\nVersion: 0.1\n")
    names = {"state-not-json": "StateNotJson", "delta-of-one": "DeltaOfOne", "exits-zero": "ExitsZero"}
    names["raises"] = "Raises"
    lines = "".join(f"{name} = faulty_plugins:{cls}\n" for name, cls in names.items())
    (info / "entry_points.txt").write_text(f"[distillkit]\n{lines}")


def no_orphans(run: str) -> Callable[[Path], str]:
    def check(workspace: Path) -> str:
        folder = workspace / run / "checkpoints"
        tensors = {p.stem for p in folder.glob("ckpt-*.safetensors")} if folder.is_dir() else set()
        records = {p.stem for p in folder.glob("ckpt-*.json")} if folder.is_dir() else set()
        assert tensors == records, f"orphan checkpoint files: {sorted(tensors ^ records)}"
        left = list((workspace / run).rglob("*.tmp")) if (workspace / run).exists() else []
        assert not left, f"temporary files left: {left}"
        return "no orphan or temporary file"

    return check


def can_mount() -> str:
    """Empty when this process may mount a tmpfs (root), else why the row cannot run."""
    with tempfile.TemporaryDirectory() as point:
        done = subprocess.run(["mount", "-t", "tmpfs", "tmpfs", point], capture_output=True, text=True)
        if done.returncode != 0:
            return "mounting a tmpfs needs root"
        subprocess.run(["umount", point], check=False)
    return ""


def full_disk(name: str, leave: int) -> Callable[[Path], None]:
    """A 1 MiB tmpfs at ``name`` with only about ``leave`` bytes free."""

    def setup(workspace: Path) -> None:
        import shutil

        point = workspace / name
        point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(point)], check=True)
        free = shutil.disk_usage(point).free
        (point / "filler").write_bytes(b"\0" * max(free - leave, 0))

    return setup


def read_only(name: str, fill: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
    """``name`` as a read-only mount (after ``fill`` wrote into it)."""

    def setup(workspace: Path) -> None:
        point = workspace / name
        point.mkdir(exist_ok=True)
        if fill is not None:
            fill(workspace)
        subprocess.run(["mount", "--bind", str(point), str(point)], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(point)], check=True)

    return setup


def unmounted(name: str, then: Callable[[Path], str]) -> Callable[[Path], str]:
    """Check with ``then``, then unmount ``name`` (so the workspace can be removed)."""

    def check(workspace: Path) -> str:
        try:
            return then(workspace)
        finally:
            subprocess.run(["umount", "-l", str(workspace / name)], check=False)

    return check


def cached_experts(cache: str) -> Callable[[Path], None]:
    """Train TINY's experts into the expert cache ``cache`` (the way `run` finds them)."""

    def fill(workspace: Path) -> None:
        argv = ["experts", "--quiet", *tiny()[: 2 * len(EXPERTS_ONLY)]]
        proc = distillkit(workspace, argv, {"DISTILLKIT_CACHE": cache})
        _out, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"setup failed: {shown(argv)}\n{err}")

    return fill


def reused_experts(run: str) -> Callable[[Path], str]:
    def check(workspace: Path) -> str:
        timings = json.loads((workspace / run / "run.json").read_text())
        assert (workspace / run / "results.json").exists(), "no results.json"
        return f"finished, experts reused ({timings.get('seconds', {}).get('experts', 0):.1f} s)"

    return check


def damaged_newest_checkpoint(workspace: Path) -> None:
    """A run killed after a few checkpoints whose newest checkpoint record is then truncated."""
    argv = ["run", "--experts", "store", "--out", "ckpt-damaged", "--quiet"]
    proc = distillkit(workspace, argv + tiny(distill__iterations=40, distill__checkpoint_every=2))
    wait_for(workspace, "ckpt-damaged/checkpoints/ckpt-000004.json", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    newest = sorted((workspace / "ckpt-damaged" / "checkpoints").glob("ckpt-*.json"))[-1]
    newest.write_bytes(newest.read_bytes()[:20])


def huge_image_folder(workspace: Path) -> None:
    """An image folder with one 10 000 × 10 000 PNG (12 kB on disk, 100 megapixels decoded)."""
    from PIL import Image

    for split in ("train", "test"):
        for label in ("a", "b"):
            folder = workspace / "bomb" / split / label
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("L", (16, 16), 40 * i).save(folder / f"{i}.png")
    Image.new("1", (10_000, 10_000)).save(workspace / "bomb" / "train" / "a" / "huge.png")


def stopped_experts(store: str) -> Callable[[Path], str]:
    def check(workspace: Path) -> str:
        folder = workspace / store
        assert not list(folder.glob("*.tmp")), "temporary files left"
        partial = list(folder.glob("*.partial.*"))
        return f"no temporary file; {len(partial)} partial-epoch checkpoint(s) kept for the rerun"

    return check


def stopped_in_evaluation(run: str) -> Callable[[Path], str]:
    def check(workspace: Path) -> str:
        assert (workspace / run / "synthetic.safetensors").exists(), "no synthetic set"
        assert list((workspace / run / "checkpoints").glob("ckpt-*.json")), "no checkpoint"
        assert not (workspace / run / "results.json").exists(), "results.json written"
        return "synthetic set and final checkpoint kept; --resume evaluates"

    return check


def synthetic_set(name: str, images=None, labels=None, lr: float = 0.01, dataset: str = "digits"):
    """A copy of the finished run whose synthetic set is replaced (NaN pixels, bad labels, ...)."""

    def setup(workspace: Path) -> None:
        import torch

        from distillkit.artifacts import save_synthetic

        folder = copy_tree(workspace, "done", name)
        x = torch.randn(10, 1, 8, 8) if images is None else images()
        y = torch.arange(10) if labels is None else labels()
        save_synthetic(folder, x, y, lr, {"dataset": dataset})

    return setup


def mtt_folder(name: str, damage: str) -> Callable[[Path], None]:
    """Another tool's images/labels/lr_best.pt, damaged one way."""

    def setup(workspace: Path) -> None:

        import torch

        folder = workspace / name
        folder.mkdir()
        torch.save(torch.randn(10, 1, 8, 8), folder / "images_best.pt")
        torch.save(torch.arange(10), folder / "labels_best.pt")
        torch.save(torch.tensor(0.01), folder / "lr_best.pt")
        if damage == "pickle":  # an object whose unpickling would run code (open a file)
            (folder / "labels_best.pt").write_bytes(
                b"cbuiltins\nopen\n(Vran-code\nVw\ntR."  # open('ran-code', 'w') when unpickled
            )
        elif damage == "shape":
            torch.save(torch.randn(10, 1, 28, 28), folder / "images_best.pt")
        elif damage == "no-lr":
            (folder / "lr_best.pt").unlink()

    return setup


def holds_store_lock(store: str) -> Callable[[Path], subprocess.Popen]:
    """Another process holding the store's lock, as a trainer of that store does."""

    def setup(workspace: Path) -> subprocess.Popen:
        code = (
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(workspace / store / '.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "time.sleep(120)\n"
        )
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        return proc

    return setup


def user_folder(name: str) -> Callable[[Path], None]:
    """A folder of the user's that is not a run."""

    def setup(workspace: Path) -> None:
        (workspace / name).mkdir()
        (workspace / name / "notes.txt").write_text("mine")

    return setup


def evaluation_keeps(run: str, *models: str) -> Callable[[Path], str]:
    def check(workspace: Path) -> str:
        from distillkit.evaluation_log import latest_by_model

        stored = latest_by_model(workspace / run)  # the newest result of each model
        assert set(models) <= set(stored), f"evaluation.json holds {sorted(stored)}"
        return f"evaluation.json keeps {', '.join(models)}"

    return check


def nothing_ran(marker: str) -> Callable[[Path], str]:
    def check(workspace: Path) -> str:
        assert not (workspace / marker).exists(), "the pickled code ran"
        return "nothing unpickled"

    return check


def evaluated_once(run: str, model: str) -> Callable[[Path], None]:
    def setup(workspace: Path) -> None:
        copy_tree(workspace, "done", run)
        run_ok(workspace, ["evaluate", run, "--eval-models", model, "--set", "evaluate.runs=1", "--quiet"])

    return setup


def no_nul_bytes(path: str) -> Callable[[Path], str]:
    def check(workspace: Path) -> str:
        data = (workspace / path).read_bytes()
        assert b"\x00" not in data, "padded with NUL bytes"
        return f"{path} untouched ({len(data)} bytes)"

    return check


FAULTS: list[Fault] = [
    # -- bad input: refused before anything is written ------------------------------------------
    Fault("unknown dataset", ["run", "--dataset", "cifar11"], absent=("runs",)),
    Fault("unknown model", ["run", "--model", "convnet-q7"], absent=("runs",)),
    Fault("unknown plugin", ["run", "--plugins", "kmeans-int"], absent=("runs",)),
    Fault("unknown preset", ["run", "--preset", "fmnist"], absent=("runs",)),
    Fault("unknown evaluation model", ["run", "--eval-models", "convnet,vgg13"], absent=("runs",)),
    Fault(
        "missing --data-path", ["run", "--dataset", "cifar10", "--data-path", "data/cifar"], absent=("runs",)
    ),
    Fault(
        "dataset files missing (found only when loading)",
        ["run", "--dataset", "cifar10", "--data-path", "empty", "--out", "r", *tiny()],
        absent=("r",),
    ),
    Fault(
        "ipc larger than a class (found only when loading)",
        ["run", "--experts", "store", "--ipc", "99999", "--out", "r", *tiny()],
        protect=("store",),
        absent=("r",),
    ),
    Fault("syn_steps ≤ 0", ["run", "--set", "distill.syn_steps=0"], absent=("runs",)),
    Fault("epochs ≤ 0", ["run", "--set", "experts.epochs=0"], absent=("runs",)),
    Fault("NaN learning rate", ["run", "--set", "distill.lr_img=nan"], absent=("runs",)),
    Fault("wrong type in --set", ["run", "--set", "distill.ipc=two"], absent=("runs",)),
    Fault("unknown key in --set", ["run", "--set", "distill.ipcc=2"], absent=("runs",)),
    Fault("option of a plugin not selected", ["run", "--set", "wp.alpha=0.1"], absent=("runs",)),
    Fault("wrong type for an option", ["run", "--ipc", "abc"], absent=("runs",)),
    Fault(
        "wrong type in TOML",
        ["run", "--config", "types.toml"],
        setup=write_file("types.toml", b'[distill]\nipc = "two"\n'),
        absent=("runs",),
    ),
    Fault(
        "unknown key in TOML",
        ["run", "--config", "keys.toml"],
        setup=write_file("keys.toml", b"[distill]\nipcc = 2\n"),
        absent=("runs",),
    ),
    Fault(
        "`plugins` of the wrong type in TOML",
        ["run", "--config", "plugins.toml"],
        setup=write_file("plugins.toml", b"plugins = 3\n"),
        absent=("runs",),
    ),
    Fault(
        "malformed TOML",
        ["run", "--config", "broken.toml"],
        setup=write_file("broken.toml", b"[distill\nipc = 2\n"),
        absent=("runs",),
    ),
    Fault(
        "two plugins claim one exclusive hook",
        ["run", "--plugins", "kmeans-init,herding-init"],
        expect=3,
        absent=("runs",),
    ),
    # -- output directories that belong to another run ----------------------------------------
    Fault("--out holds a finished run", ["run", "--out", "done", *tiny()], protect=("done",)),
    Fault(
        "--out holds an unfinished run",
        ["run", "--out", "unfinished", *tiny()],
        setup=unfinished_run,
        protect=("unfinished",),
    ),
    Fault(
        "a second process writes the same run dir (`--overwrite`)",
        ["run", "--experts", "store", "--out", "busy", "--overwrite", *tiny()],
        setup=busy_run("busy"),
        protect=("busy/config.json", "busy/invocation.json", "store"),
    ),
    Fault(
        "a second process writes the same run dir (`--resume` of a live run)",
        ["run", "--resume", "busy-too"],
        setup=busy_run("busy-too"),
        protect=("busy-too/config.json", "busy-too/invocation.json", "store"),
    ),
    # -- damaged or mismatched files -------------------------------------------------------------
    Fault(
        "one byte of a trajectory file flipped",
        ["distill", "--experts", "store-flip", "--out", "d", *tiny()],
        setup=damaged_store("flip"),
        protect=("store-flip",),
        absent=("d",),
    ),
    Fault(
        "truncated trajectory file",
        ["distill", "--experts", "store-truncate", "--out", "d", *tiny()],
        setup=damaged_store("truncate"),
        protect=("store-truncate",),
        absent=("d",),
    ),
    Fault(
        "store of another model (parameter layout)",
        ["distill", "--experts", "store", "--model", "convnet-w32", "--out", "d", *tiny()],
        protect=("store",),
        absent=("d",),
    ),
    Fault(
        "store of another dataset",
        ["distill", "--experts", "store-mnist", "--out", "d", *tiny()],
        setup=store_key("store-mnist", dataset="mnist"),
        protect=("store-mnist",),
        absent=("d",),
    ),
    Fault(
        "store for other image shape",
        ["distill", "--experts", "store-16px", "--out", "d", *tiny()],
        setup=store_key("store-16px", image_shape=[1, 16, 16]),
        protect=("store-16px",),
        absent=("d",),
    ),
    Fault(
        "store with other classes",
        ["distill", "--experts", "store-3cls", "--out", "d", *tiny()],
        setup=store_key("store-3cls", num_classes=3),
        protect=("store-3cls",),
        absent=("d",),
    ),
    Fault(
        "experts too short for max_start_epoch + expert_epochs",
        ["distill", "--experts", "store", "--out", "d", *tiny(experts__epochs=9, distill__max_start_epoch=6)],
        protect=("store",),
        absent=("d",),
    ),
    Fault(
        "not a trajectory store",
        ["distill", "--experts", "done", *tiny()],
        protect=("done",),
        absent=("runs",),
    ),
    Fault(
        "`evaluate` on a truncated synthetic.safetensors",
        ["evaluate", "eval-truncated"],
        setup=damaged_run("eval-truncated", "synthetic.safetensors", "truncate"),
        protect=("eval-truncated",),
    ),
    Fault(
        "`evaluate` on a corrupted synthetic.safetensors",
        ["evaluate", "eval-flipped"],
        setup=damaged_run("eval-flipped", "synthetic.safetensors", "flip"),
        protect=("eval-flipped",),
    ),
    Fault(
        "`evaluate` on a truncated config.json",
        ["evaluate", "eval-config"],
        setup=damaged_run("eval-config", "config.json", "truncate"),
        protect=("eval-config",),
    ),
    # -- processes that stop or diverge -----------------------------------------------------------
    Fault(
        "SIGINT mid-distill",
        ["run", "--experts", "store", "--out", "interrupted", *tiny(distill__iterations=100_000)],
        expect=130,
        interrupt=("interrupted/metrics.jsonl", signal.SIGINT),
        says="Stopping",
        check=interrupted_state_saved,
    ),
    Fault(
        "SIGKILL mid-distill, then `--resume`",
        ["run", "--resume", "killed", "--quiet"],
        expect=0,
        setup=killed_run,
        check=metrics_complete("killed", 40),
    ),
    Fault(
        "divergence the guard cannot fix (`distill.lr_lr=1e4`)",
        ["run", "--experts", "store", "--out", "diverged", *tiny(distill__lr_lr="1e4")],
        expect=1,
        check=last_good_set_saved("diverged"),
    ),
    Fault(
        "pixels blow up at a too large image learning rate (`distill.lr_img=1e6`)",
        ["run", "--experts", "store", "--out", "lr-img", "--quiet", *tiny(distill__lr_img="1e6")],
        expect=0,
        check=finished_with("lr-img"),
    ),
    Fault(
        "a hopeless image learning rate (`distill.lr_img=1e12`)",
        ["run", "--experts", "store", "--out", "lr-img-hopeless", "--quiet", *tiny(distill__lr_img="1e12")],
        expect=1,
        check=last_good_set_saved("lr-img-hopeless"),
    ),
    # -- round two: nothing lost, nothing silently wrong ------------------------------------------
    Fault(
        "`--overwrite` of a finished run with an impossible `--ipc`",
        ["run", "--experts", "store", "--out", "done", "--overwrite", "--ipc", "99999", *tiny()],
        protect=("done",),
    ),
    Fault("`--resume` of a finished run", ["run", "--resume", "done"], protect=("done",)),
    Fault(
        "`--resume` with a shortened metrics.jsonl",
        ["run", "--resume", "unfinished"],
        setup=shortened_metrics,
        check=no_nul_bytes("unfinished/metrics.jsonl"),
    ),
    Fault(
        "`evaluate` a second time with other `--eval-models`",
        ["evaluate", "twice", "--eval-models", "convnet-w16-d2", "--set", "evaluate.runs=1", "--quiet"],
        expect=0,
        setup=evaluated_once("twice", "convnet-w32-d2"),
        check=evaluation_keeps("twice", "convnet-w32-d2", "convnet-w16-d2"),
    ),
    Fault(
        "`evaluate` a set with NaN pixels",
        ["evaluate", "nan-set"],
        setup=synthetic_set("nan-set", images=lambda: __import__("torch").full((10, 1, 8, 8), float("nan"))),
        protect=("nan-set",),
    ),
    Fault(
        "`evaluate` a set whose labels are out of range",
        ["evaluate", "bad-labels"],
        setup=synthetic_set("bad-labels", labels=lambda: __import__("torch").arange(10) + 5),
        protect=("bad-labels",),
    ),
    Fault(
        "`evaluate` a set with a negative learning rate",
        ["evaluate", "negative-lr"],
        setup=synthetic_set("negative-lr", lr=-0.1),
        protect=("negative-lr",),
    ),
    Fault(
        "`evaluate` a set of 3-channel images on digits",
        ["evaluate", "channels"],
        setup=synthetic_set("channels", images=lambda: __import__("torch").randn(10, 3, 8, 8)),
        protect=("channels",),
    ),
    Fault(
        "`evaluate` a set whose synthetic.json names another dataset",
        ["evaluate", "other-dataset"],
        setup=synthetic_set("other-dataset", dataset="fashion-mnist"),
        protect=("other-dataset",),
    ),
    Fault("`evaluate.lr_decay_factor=-1`", ["run", *tiny(evaluate__lr_decay_factor=-1)], absent=("runs",)),
    Fault(
        "`evaluate.momentum_after_decay=5`",
        ["run", *tiny(evaluate__momentum_after_decay=5)],
        absent=("runs",),
    ),
    Fault(
        "`distill` from a store another process is still training",
        ["distill", "--experts", "store", "--out", "from-busy", *tiny()],
        setup=holds_store_lock("store"),
        protect=("store",),
        absent=("from-busy",),
    ),
    Fault(
        "`DISTILLKIT_CACHE` points at a file",
        ["run", "--out", "cache-file", *tiny()],
        setup=write_file("a-file", b"not a folder"),
        env={"DISTILLKIT_CACHE": "a-file"},
        protect=("a-file",),
        absent=("cache-file",),
    ),
    Fault("`--out /`", ["run", "--out", "/", *tiny()]),
    Fault(
        "`--out` a non-empty folder that holds no run",
        ["run", "--out", "thesis", "--overwrite", *tiny()],
        setup=user_folder("thesis"),
        protect=("thesis",),
    ),
    Fault("`--config /dev/zero`", ["run", "--config", "/dev/zero"], absent=("runs",)),
    Fault("`--device mps` (unsupported)", ["run", "--device", "mps", *tiny()], absent=("runs",)),
    Fault("`--device cuda:7` without CUDA", ["run", "--device", "cuda:7", *tiny()], absent=("runs",)),
    Fault("`--dataset imagefolder` without a folder", ["run", "--dataset", "imagefolder"], absent=("runs",)),
    Fault(
        "`evaluate --mtt` with a pickled object in labels_best.pt",
        ["evaluate", "--mtt", "mtt-pickle"],
        setup=mtt_folder("mtt-pickle", "pickle"),
        check=nothing_ran("ran-code"),
    ),
    Fault(
        "`evaluate --mtt` with 28×28 images on digits",
        ["evaluate", "--mtt", "mtt-shape"],
        setup=mtt_folder("mtt-shape", "shape"),
    ),
    Fault(
        "`evaluate --mtt` without lr_best.pt",
        ["evaluate", "--mtt", "mtt-no-lr"],
        setup=mtt_folder("mtt-no-lr", "no-lr"),
    ),
    Fault(
        "`ablate --out` a folder that holds something else",
        ["ablate", "--arms", "plain;bil", "--out", "thesis2", *tiny()],
        setup=user_folder("thesis2"),
        protect=("thesis2",),
    ),
    # -- round two, continued: signals, plugins, the environment, resource limits --------------
    Fault(
        "SIGTERM mid-distill (as SIGINT: checkpoint, exit 130)",
        ["run", "--experts", "store", "--out", "terminated", *tiny(distill__iterations=100_000)],
        expect=130,
        interrupt=("terminated/metrics.jsonl", signal.SIGTERM),
        says="Stopping",
        check=lambda w: interrupted_state_saved(w, "terminated"),
    ),
    Fault(
        "SIGTERM during expert training",
        [
            "experts",
            "--out",
            "store-term",
            "--quiet",
            *tiny(experts__epochs=100_000)[: 2 * len(EXPERTS_ONLY)],
        ],
        expect=130,
        interrupt=("store-term/expert_000.partial.json", signal.SIGTERM),
        says="Interrupted",
        check=stopped_experts("store-term"),
    ),
    Fault(
        "SIGTERM during evaluation",
        ["run", "--experts", "store", "--out", "term-eval", "--quiet", *tiny(evaluate__epochs=1_000_000)],
        expect=130,
        interrupt=("term-eval/synthetic.safetensors", signal.SIGTERM),
        says="Interrupted",
        check=stopped_in_evaluation("term-eval"),
    ),
    Fault(
        "SIGTERM before the first iteration (loading, `kmeans-init`)",
        ["run", "--experts", "store", "--out", "term-init", "--plugins", "kmeans-init", "--quiet", *tiny()],
        expect=130,
        interrupt=("term-init/config.json", signal.SIGTERM),
        says="Interrupted",
    ),
    Fault(
        "a plugin whose `state_dict()` is not JSON",
        ["run", "--experts", "store", "--out", "state-json", "--plugins", "state-not-json", *tiny()],
        expect=3,
        setup=faulty_plugins,
        env={"PYTHONPATH": "site"},
        check=no_orphans("state-json"),
    ),
    Fault(
        "a `perturb_expert` delta of shape [1]",
        ["run", "--experts", "store", "--out", "delta", "--plugins", "delta-of-one", *tiny()],
        expect=3,
        setup=faulty_plugins,
        env={"PYTHONPATH": "site"},
    ),
    Fault(
        "a plugin that raises `SystemExit(0)` in its hook",
        ["run", "--experts", "store", "--out", "exits", "--plugins", "exits-zero", *tiny()],
        expect=3,
        setup=faulty_plugins,
        env={"PYTHONPATH": "site"},
    ),
    Fault(
        "a plugin that raises in its hook",
        ["run", "--experts", "store", "--out", "raises", "--plugins", "raises", *tiny()],
        expect=3,
        setup=faulty_plugins,
        env={"PYTHONPATH": "site"},
    ),
    Fault("a file name too long for `--out`", ["run", "--out", "n" * 300, *tiny()], protect=("done",)),
    Fault(
        "an image too large to decode safely (decompression bomb)",
        ["run", "--dataset", "imagefolder:bomb", "--out", "bomb-run", *tiny()],
        setup=huge_image_folder,
        absent=("bomb-run",),
    ),
    Fault(
        "a store manifest announcing 10¹² epochs",
        ["distill", "--experts", "store-epochs", "--out", "from-epochs", *tiny()],
        setup=store_key("store-epochs", epochs=10**12),
        protect=("store-epochs",),
        absent=("from-epochs",),
    ),
    Fault(
        "the newest checkpoint damaged, then `--resume`",
        ["run", "--resume", "ckpt-damaged"],
        expect=0,
        setup=damaged_newest_checkpoint,
        says="skipped an unusable checkpoint",
        check=metrics_complete("ckpt-damaged", 40),
    ),
    Fault(
        "no space left on the device of `--out`",
        ["run", "--experts", "store", "--out", "full/run", "--quiet", *tiny()],
        expect=1,
        needs=can_mount,
        setup=full_disk("full", leave=2048),
        protect=("store", "done"),
        absent=("full/run",),
        check=unmounted("full", no_orphans("full/run")),
    ),
    Fault(
        "no space left in the expert cache",
        ["experts", "--quiet", *tiny(experts__count=2)[: 2 * len(EXPERTS_ONLY)]],
        expect=1,
        needs=can_mount,
        setup=full_disk("full-cache", leave=16 * 1024),
        env={"DISTILLKIT_CACHE": "full-cache"},
        check=unmounted("full-cache", stopped_experts("full-cache")),
    ),
    Fault(
        "a read-only cache that holds the finished experts",
        ["run", "--out", "from-ro-cache", "--quiet", *tiny()],
        expect=0,
        needs=can_mount,
        setup=read_only("ro-cache", fill=cached_experts("ro-cache")),
        env={"DISTILLKIT_CACHE": "ro-cache"},
        check=unmounted("ro-cache", reused_experts("from-ro-cache")),
    ),
    Fault(
        "a read-only `--out` location",
        ["run", "--experts", "store", "--out", "ro-out/run", "--quiet", *tiny()],
        needs=can_mount,
        setup=read_only("ro-out"),
        check=unmounted("ro-out", lambda w: "nothing written"),
    ),
    Fault(
        "`evaluate` an empty set",
        ["evaluate", "empty-set"],
        setup=synthetic_set(
            "empty-set",
            images=lambda: __import__("torch").zeros(0, 1, 8, 8),
            labels=lambda: __import__("torch").zeros(0, dtype=__import__("torch").long),
        ),
        protect=("empty-set",),
    ),
    Fault(
        "`evaluate` a set with float labels",
        ["evaluate", "float-labels"],
        setup=synthetic_set("float-labels", labels=lambda: __import__("torch").arange(10.0)),
        protect=("float-labels",),
    ),
]


def table(rows: list[Row], first: int = 1) -> str:
    lines = [
        "| # | fault or bad input | command | exit | what the user sees | checked |",
        "|---|---|---|---|---|---|",
    ]
    for number, row in enumerate(rows, first):
        command = shown(row.fault.argv).replace("|", "\\|")
        checks = " · ".join(row.verdicts)
        lines.append(f"| {number} | {row.fault.title} | `{command}` | {row.code} | {row.seen} | {checks} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help=f"replace the table in {DOC}")
    parser.add_argument("--first", type=int, default=1, help="start at this row (when working on new rows)")
    args = parser.parse_args()
    if args.write and args.first != 1:
        parser.error("--write needs every row")
    with tempfile.TemporaryDirectory(prefix="distillkit-faults-") as folder:
        workspace = Path(folder)
        prepare(workspace)
        rows = []
        for fault in FAULTS[args.first - 1 :]:
            row = try_fault(workspace, fault)
            print(f"{'ok ' if row.ok else 'BAD'} {row.code:>3}  {fault.title}", file=sys.stderr)
            rows.append(row)
    markdown = table(rows, args.first)
    print(markdown)
    if args.write:
        text = DOC.read_text()
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        DOC.write_text(f"{head}{BEGIN}\n{markdown}\n{END}{tail}")
    sys.exit(0 if all(row.ok for row in rows) else 1)


if __name__ == "__main__":
    main()
