"""Bad input and damaged files as a user meets them: one line, a hint, exit 2, nothing lost.

Each CLI test checks three things: the exit code, that stderr is one ``Error:`` line
(plus at most a ``Hint:`` line, never a traceback), and that nothing written before
was changed (or, for a new run, that no half-made run directory is left behind).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import resource
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import typer
from conftest import TINY
from typer.testing import CliRunner

from distillkit import rundir
from distillkit.artifacts import SYNTHETIC_JSON, SYNTHETIC_TENSORS, save_synthetic
from distillkit.cli import app
from distillkit.cli.app import cli_errors
from distillkit.config import to_dict
from distillkit.data import datasets
from distillkit.errors import DataError, RunFailed, memory_cause, out_of_memory
from distillkit.experts.store import MANIFEST, expert_filename
from distillkit.resolve import resolve_config

runner = CliRunner()
ENV = {"COLUMNS": "80", "NO_COLOR": "1"}


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], env=ENV)


def assert_user_error(result, code: int, *fragments: str) -> None:
    """Exit ``code``; output is one ``Error:`` line holding ``fragments``, then at most a hint."""
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and lines[0].startswith("Error: "), result.output
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("Hint: ")), result.output
    for fragment in fragments:
        assert fragment in lines[0], result.output


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path → sha256), to prove nothing changed."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def sets(**changes: object) -> list[str]:
    """TINY with some keys replaced (``--set`` refuses a key given twice)."""
    values = dict(item.split("=", 1) for item in TINY[1::2]) | {k: str(v) for k, v in changes.items()}
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store") / "experts"
    result = invoke("experts", *TINY, "--out", root, "--quiet")
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture
def store_copy(store, tmp_path) -> Path:
    copy = tmp_path / "experts"
    copy.mkdir()
    for path in store.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    return copy


# -- the run-directory lock -------------------------------------------------------------------

HOLD_LOCK = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from distillkit.rundir import prepare_run_dir\n"
    "prepare_run_dir(Path(sys.argv[1]))\n"
    "print('locked', flush=True)\n"
    "time.sleep(120)\n"
)


def test_a_second_writer_is_refused_and_a_killed_writer_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(out)
        result = invoke("run", "--out", out, *TINY)
        assert_user_error(result, 2, str(out), "another distillkit process", f"pid {holder.pid}")
        assert snapshot(out) == before
    finally:
        holder.kill()  # SIGKILL: no cleanup runs in the holder
        holder.wait()
    assert rundir.prepare_run_dir(out) == out
    assert (out / rundir.LOCK_FILE).read_text().strip() == str(os.getpid())


def test_the_lock_is_reentrant_within_a_process_and_optional_without_fcntl(tmp_path, monkeypatch):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    rundir.lock_run_dir(first)
    rundir.lock_run_dir(first)  # the CLI's run, then evaluate, in one process (tests, notebooks)
    monkeypatch.setattr(rundir, "fcntl", None)
    assert rundir.lock_run_dir(second) == second
    assert not (second / rundir.LOCK_FILE).exists()


# -- output directories that hold another run ---------------------------------------------------


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ("results.json", "already holds a run"),
        ("synthetic.safetensors", "already holds a run"),
        ("metrics.jsonl", "holds an unfinished run"),
        ("checkpoints/ckpt-00000004.json", "holds an unfinished run"),
    ],
)
def test_an_output_dir_holding_a_run_is_refused_and_left_untouched(tmp_path, marker, message):
    out = tmp_path / "run"
    (out / marker).parent.mkdir(parents=True)
    (out / marker).write_text("earlier results\n")
    (out / "config.json").write_text("{}\n")
    before = snapshot(out)
    result = invoke("run", "--out", out, *TINY)
    assert_user_error(result, 2, str(out), message)
    assert snapshot(out) == before
    assert not (out / rundir.LOCK_FILE).exists()


def test_discard_removes_only_an_empty_run_dir_this_process_created(tmp_path):
    created, existing, finished = tmp_path / "new", tmp_path / "old", tmp_path / "done"
    existing.mkdir()
    for folder in (created, existing, finished):
        rundir.prepare_run_dir(folder)
        (folder / "config.json").write_text("{}")
    (finished / "synthetic.safetensors").write_bytes(b"kept")
    for folder in (created, existing, finished):
        with pytest.raises(DataError), rundir.discard_on_bad_input(folder):
            raise DataError("no such dataset")
    assert not created.exists()
    assert (existing / "config.json").exists() and (finished / "synthetic.safetensors").exists()
    kept = tmp_path / "failed"
    rundir.prepare_run_dir(kept)
    with pytest.raises(RunFailed), rundir.discard_on_bad_input(kept):
        raise RunFailed("diverged")  # a run that failed (exit 1) is evidence: kept
    assert kept.exists()


# -- bad input is refused before anything is created -------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "cifar11"], "Unknown dataset 'cifar11'"),
        (["--dataset", "cifar10", "--data-path", "/nonexistent/data"], "is not a directory"),
        (["--model", "convnet-q7"], "unknown modifier 'q7'"),
        (["--plugins", "nope"], "unknown plugin 'nope'"),
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--set", "evaluate.models=convnet,nope"], "Unknown model 'nope'"),
        (["--set", "distill.syn_steps=0"], "distill.syn_steps must be > 0"),
        (["--set", "experts.epochs=-3"], "experts.epochs must be > 0"),
        (["--set", "distill.lr_img=nan"], "distill.lr_img must be a finite number"),
        (["--set", "distill.lr_img=-1"], "distill.lr_img must be >= 0"),
        (["--set", "distill.ipc=two"], "distill.ipc expects an integer"),
        (
            ["--memory", "constant", "--set", "distill.graph_memory_mb=-1"],
            "distill.graph_memory_mb must be >= 0",
        ),
        (["--set", "distill.graph_memory_mb=512"], "distill.memory is 'standard', which keeps every step"),
        (["--set", "distil.ipc=2"], "unknown config key 'distil.ipc'"),
        (["--set", "data.augment=crop_blur"], "Unknown augmentation op 'blur'"),
        (["--dataset", "mnist", *TINY], "mnist IDX files"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_leaves_no_run_directory(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "SYSTEM_DATA_DIRS", {"mnist": (tmp_path / "no-mnist",)})
    result = invoke("run", *args)
    assert_user_error(result, 2, message)
    assert list((tmp_path / "runs").glob("*")) == []  # no run directory (runs/ itself may exist)


def test_an_ipc_larger_than_a_class_leaves_no_run_directory(store, tmp_path, monkeypatch):
    """Found only once the data is loaded, after the run directory exists: it is removed again."""
    monkeypatch.chdir(tmp_path)
    result = invoke("run", "--experts", store, "--ipc", "99999", *TINY)
    assert_user_error(result, 2, "ipc=99999 is larger than the smallest class (130 images)")
    assert list((tmp_path / "runs").glob("*")) == []


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (b'[distill]\nipc = "two"\n', "distill.ipc expects an integer, got 'two'"),
        (b"[distill]\nipcc = 2\n", "unknown config key 'distill.ipcc'"),
        (b"[distill]\nlr_img = true\n", "distill.lr_img expects a number"),
        (b"[evaluate]\nmodels = [1]\n", "evaluate.models expects a string"),
        (b"seed = 1.5\n", "seed expects an integer"),
        (b"plugins = 3\n", "expects a list"),
        (b"[wp]\nalpha = 0.1\n", "'wp' is neither a config section nor a selected plugin"),
        (b"[distill\n", "is not valid TOML"),
        (b"\xff\xfe\x00", "is not valid TOML"),
    ],
)
def test_bad_toml_is_one_line_exit_2(tmp_path, monkeypatch, toml, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my.toml").write_bytes(toml)
    assert_user_error(invoke("run", "--config", "my.toml"), 2, message)
    assert not (tmp_path / "runs").exists()


# -- damaged or mismatched trajectory stores ---------------------------------------------------


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_corrupted_trajectory_file_is_a_one_line_error(store_copy, tmp_path, damage):
    path = store_copy / expert_filename(0)
    data = path.read_bytes()
    middle = len(data) // 2
    path.write_bytes(
        data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :]
        if damage == "flip"
        else data[:middle]
    )
    before = snapshot(store_copy)
    out = tmp_path / "distilled"
    result = invoke("distill", "--experts", store_copy, "--out", out, *TINY)
    assert_user_error(result, 2, str(path), "checksum mismatch")
    assert snapshot(store_copy) == before
    assert not out.exists()


def _edit_key(store: Path, **changes: object) -> None:
    manifest = json.loads((store / MANIFEST).read_text())
    manifest["key"].update(changes)
    (store / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("key_changes", "args", "message"),
    [
        (
            {},
            ["--model", "convnet-w32"],
            'holds experts of model "convnet-w32-d2" but the run uses "convnet-w32"',
        ),
        ({"dataset": "mnist"}, [], 'was trained on "mnist" but the run uses "digits"'),
        ({"image_shape": [1, 16, 16]}, [], "image_shape[1] is 16 in the store but 8 in the run"),
        ({"num_classes": 3}, [], "num_classes is 3 in the store but 10 in the run"),
    ],
)
def test_a_store_that_does_not_fit_the_run_is_a_one_line_error(
    store_copy, tmp_path, key_changes, args, message
):
    _edit_key(store_copy, **key_changes)
    before = snapshot(store_copy)
    out = tmp_path / "distilled"
    result = invoke("distill", "--experts", store_copy, "--out", out, *TINY, *args)
    assert_user_error(result, 2, str(store_copy), message)
    assert snapshot(store_copy) == before
    assert not out.exists()


def test_an_expert_too_short_for_the_distillation_is_a_one_line_error(store_copy, tmp_path):
    args = sets(**{"experts.epochs": 9, "distill.max_start_epoch": 6})  # needs epoch 5 + 2 = 7 > 4
    result = invoke("distill", "--experts", store_copy, "--out", tmp_path / "d", *args)
    assert_user_error(result, 2, f"expert 0 in {store_copy} has 4 epochs", "= 7")
    assert not (tmp_path / "d").exists()


def test_a_missing_store_is_a_one_line_error(tmp_path):
    result = invoke("distill", "--experts", tmp_path / "nowhere", *TINY)
    assert_user_error(result, 2, "is not a trajectory store")


# -- damaged run directories for `distillkit evaluate` ------------------------------------------


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A run directory holding a synthetic set, written without training (the files are the point)."""
    config, _host = resolve_config("digits", None, dict(item.split("=", 1) for item in TINY[1::2]))
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(to_dict(config)))
    images = torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    save_synthetic(out, images, torch.arange(10), 0.01, {"dataset": "digits"})
    return out


EVALUATE_FAST = ["--set", "evaluate.runs=1", "--set", "evaluate.epochs=2", "--quiet"]


def test_an_intact_run_directory_evaluates(run_dir):
    """The control for the damaged cases below: the same directory, undamaged, is accepted."""
    result = invoke("evaluate", run_dir, *EVALUATE_FAST)
    assert result.exit_code == 0, result.output
    assert (run_dir / "evaluation.json").exists()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncate-tensors", "checksum mismatch"),
        ("flip-tensors", "checksum mismatch"),
        ("delete-tensors", f"{SYNTHETIC_TENSORS} is missing"),
        ("garble-sidecar", "cannot be read as JSON"),
        ("garble-config", "config.json cannot be read as JSON"),
    ],
)
def test_a_damaged_synthetic_set_is_a_one_line_error(run_dir, damage, message):
    what, name = damage.split("-")
    path = run_dir / {"tensors": SYNTHETIC_TENSORS, "sidecar": SYNTHETIC_JSON, "config": "config.json"}[name]
    data = path.read_bytes()
    if what == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif what == "flip":
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    elif what == "delete":
        path.unlink()
    else:
        path.write_bytes(data[: len(data) // 3])
    before = snapshot(run_dir)
    result = invoke("evaluate", run_dir, *EVALUATE_FAST)
    assert_user_error(result, 2, message)
    assert {k: v for k, v in snapshot(run_dir).items() if k != rundir.LOCK_FILE} == before
    assert not (run_dir / "evaluation.json").exists()


# -- the real process: exit code and stderr as a shell sees them ------------------------------


def test_a_long_error_stays_one_line_in_a_real_process(store_copy, tmp_path):
    """Rich wraps at the terminal width (80 without one); errors must not be wrapped."""
    deep = tmp_path / ("a-long-folder-name-" * 4) / "experts"
    store_copy.rename(deep.parent.mkdir(parents=True) or deep)
    path = deep / expert_filename(0)
    path.write_bytes(path.read_bytes()[:100])
    proc = subprocess.run(
        [sys.executable, "-m", "distillkit", "distill", "--experts", str(deep), *TINY],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "80"},
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 2 and len(lines[0]) > 80, proc.stderr
    assert lines[0].startswith("Error: ") and str(path) in lines[0] and lines[1].startswith("Hint: ")


def test_a_failed_allocation_is_told_apart_and_described_in_the_allocators_words():
    with pytest.raises(RuntimeError) as failed:
        torch.empty(10**13)  # 40 TB: the CPU allocator refuses at once
    assert out_of_memory(failed.value)
    assert memory_cause(failed.value).startswith("DefaultCPUAllocator: can't allocate memory")
    assert out_of_memory(MemoryError()) and memory_cause(MemoryError()) == "MemoryError"  # Python's own
    assert not out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not out_of_memory(ValueError("can't allocate memory"))


def test_a_warning_is_one_line_without_python_source_lines(store, tmp_path):
    shown = warnings.showwarning
    args = [
        "distill",
        "--experts",
        store,
        *TINY,
        "--plugins",
        "kmeans-init",
        "--set",
        "kmeans-init.clusters=3",
    ]
    result = invoke(*args, "--out", tmp_path / "run", "--quiet")
    assert result.exit_code == 0, result.output
    assert "Warning: kmeans-init: clusters=3 with ipc=1 would select" in result.output
    assert "UserWarning" not in result.output and ".py:" not in result.output
    assert warnings.showwarning is shown  # the command put Python's own display back


def test_what_compiled_extensions_raise_outside_exception_is_one_line_too(capsys):
    """pyo3's PanicException (safetensors, when an allocation fails while saving) is a BaseException."""

    class Panic(BaseException):
        pass

    with pytest.raises(typer.Exit) as exited, cli_errors(debug=False):
        raise Panic("PyObject pointer is null")
    assert exited.value.exit_code == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["Error: internal error: Panic: PyObject pointer is null", lines[1]]
    assert lines[1].startswith("Hint: rerun with --debug")
    with pytest.raises(SystemExit), cli_errors(debug=False):
        raise SystemExit(4)  # an exit is not an error


#: The data segment (RLIMIT_DATA) a process below may hold: enough to start, too little for the job.
MEMORY_LIMIT = 1_500_000_000
#: The store's settings (TINY's first keys), without TINY's N and budget.
KEYED = TINY[: TINY.index("distill.syn_steps=5") - 1]


def _limited(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python -m distillkit ARGS`` with its data segment capped at :data:`MEMORY_LIMIT`."""
    return subprocess.run(
        [sys.executable, "-m", "distillkit", *args, "--quiet"],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "NO_COLOR": "1", "OMP_NUM_THREADS": "1"},
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_LIMIT, MEMORY_LIMIT)),
    )


@pytest.mark.parametrize(
    ("stage", "line", "hint"),
    [
        ("distill", "distillation ran out of cpu memory in iteration 1 (", "--memory constant"),
        ("experts", "training expert 0 ran out of cpu memory (", "lower experts.batch_size"),
        ("evaluate", "evaluating convnet-w2048 ran out of cpu memory (", "lower evaluate.batch_size"),
    ],
)
def test_running_out_of_memory_is_one_line_naming_the_settings_that_need_less(
    stage, line, hint, store, run_dir, tmp_path
):
    """Real failed allocations: an unroll of ≈ 4.5 GB (60 steps at ipc 120), 2 048-channel networks."""
    long = ["--set", "distill.syn_steps=60", "--ipc", "120", "--out", tmp_path / "long"]
    wide = ["--model", "convnet-w2048", "--set", "experts.batch_size=2000", "--out", tmp_path / "wide"]
    args = {
        "distill": ["distill", "--experts", store, *KEYED, *long],
        "experts": ["experts", *KEYED, *wide],
        "evaluate": ["evaluate", run_dir, "--eval-models", "convnet-w2048", "--runs", "1", "--epochs", "2"],
    }[stage]
    before = snapshot(run_dir)[SYNTHETIC_TENSORS]
    proc = _limited([str(arg) for arg in args], tmp_path)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 2, proc.stderr
    assert lines[0].startswith(f"Error: {line}") and "can't allocate memory" in lines[0], proc.stderr
    assert lines[1].startswith("Hint: ") and hint in lines[1], proc.stderr
    assert snapshot(run_dir)[SYNTHETIC_TENSORS] == before  # the set being evaluated is untouched


# -- no pickles ---------------------------------------------------------------------------------


def test_no_pickle_is_loaded_except_the_mtt_import_with_weights_only():
    """Every loader reads safetensors/JSON/IDX/binary formats; only the MTT imports call torch.load."""
    root = Path(__file__).resolve().parents[1]
    calls = []
    for path in [*(root / "distillkit").rglob("*.py"), *(root / "plugins").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
            if (
                name in ("torch.load", "pickle.load", "pickle.loads")
                or keywords.get("allow_pickle") == "True"
            ):
                calls.append((path.relative_to(root).as_posix(), name, keywords.get("weights_only")))
    assert sorted(calls) == [
        ("distillkit/experts/replay.py", "torch.load", "True"),  # an MTT/FTD/DATM replay buffer
        ("distillkit/interop.py", "torch.load", "True"),  # another tool's synthetic set
    ]


def test_a_second_store_trainer_waits_for_the_first(tmp_path):
    import threading

    from distillkit.rundir import exclusive

    order: list[str] = []
    inside = threading.Event()

    def second() -> None:
        inside.wait()
        with exclusive(tmp_path):
            order.append("second")

    thread = threading.Thread(target=second)
    thread.start()
    with exclusive(tmp_path):
        inside.set()
        thread.join(timeout=0.3)  # the second holder must still be waiting
        order.append("first")
    thread.join(timeout=10)
    assert order == ["first", "second"]
