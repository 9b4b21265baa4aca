"""The command line as a user meets it: exit codes, one-line errors, files written."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from conftest import NEEDS_CUDA, TINY
from typer.testing import CliRunner

from distillkit.cli import app

runner = CliRunner()
ENV = {"COLUMNS": "200", "NO_COLOR": "1"}


def invoke(*args: str):
    return runner.invoke(app, list(args), env=ENV)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--help"], ["run", "list-plugins", "report"]),
        (["report", "--help"], ["report.html"]),
        # Listing reads every installed plugin, so plugin modules import torch inside their hooks.
        (["list-plugins", "--json"], ['"herding-init"', '"smooth"']),
    ],
)
def test_help_and_listing_do_not_import_torch(argv, expected):
    code = (
        "import sys\n"
        f"sys.argv = ['distillkit', *{argv!r}]\n"
        "from distillkit.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert all(text in proc.stdout for text in expected), proc.stdout


def test_list_plugins_json_shows_the_five_built_ins():
    result = invoke("list-plugins", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    for name in ("smooth", "kmeans-init", "bil", "itm", "wp"):
        assert rows[name]["source"] == "built-in"
        assert rows[name]["status"] == "available"
    assert rows["wp"]["hooks"] == ["perturb_expert"]


def test_list_plugins_table():
    result = invoke("list-plugins", "--plugins", "bil")
    assert result.exit_code == 0
    assert "inner_loss_weight" in result.output and "enabled" in result.output


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["run", "--plugins", "kmeans-int"], 2, "unknown plugin 'kmeans-int'"),
        (["run", "--set", "distill.ipcc=2"], 2, "unknown config key 'distill.ipcc'"),
        (["run", "--set", "distill.ipc=two"], 2, "expects an integer"),
        (["run", "--set", "noequals"], 2, "KEY=VALUE"),
        (["run", "--preset", "nope"], 2, "unknown preset"),
        (["run", "--dataset", "cifar11"], 2, "Unknown dataset"),
        (["run", "--set", "distill.syn_steps=0"], 2, "syn_steps must be > 0"),
        (["run", "--set", "experts.optimizer=adamw"], 2, "did you mean 'adam'?"),
        (["run", "--model", "convnet-q7"], 2, "unknown modifier"),
        (["run", "--set", "wp.alpha=0.1"], 2, "nor a selected plugin"),
        (["evaluate", "/nonexistent/run"], 2, "not a run directory"),
    ],
)
def test_bad_input_is_one_line_and_exit_code(tmp_path, args, code, message):
    result = invoke(*args, "--out", str(tmp_path / "r")) if args[0] == "run" else invoke(*args)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.skipif(
    "herding-init" not in {ep.name for ep in entry_points(group="distillkit")},
    reason="examples/distillkit-herding is not installed",
)
def test_two_init_plugins_conflict_with_exit_3(tmp_path):
    result = invoke("run", "--plugins", "kmeans-init,herding-init", "--out", str(tmp_path / "r"))
    assert result.exit_code == 3, result.output
    assert "herding-init" in result.output and "kmeans-init" in result.output


def test_tiny_digits_run_writes_results_grid_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "run"
    result = invoke("run", "--out", str(out), "--quiet", *TINY)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "results.json").read_text())
    for key in (
        "dataset",
        "ipc",
        "plugins",
        "distilled",
        "random_real",
        "timings_s",
        "distill_s_per_iter",
        "peak_rss_mb",
    ):
        assert key in summary
    assert summary["dataset"] == "digits" and summary["ipc"] == 1
    assert len(summary["distilled"]["runs"]) == 2
    assert all(0.0 <= acc <= 1.0 for acc in summary["distilled"]["runs"])
    assert (out / "grid.png").stat().st_size > 0
    assert (out / "synthetic.safetensors").exists()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4
    assert "distilled" in result.output and "random real" in result.output

    again = invoke("run", "--out", str(out), "--quiet", *TINY)
    assert again.exit_code == 2 and "already holds a run" in again.output
    assert json.loads((out / "results.json").read_text()) == summary

    evaluated = invoke(
        "evaluate", str(out), "--json", "--set", "evaluate.runs=1", "--set", "evaluate.epochs=5"
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert (out / "evaluation.json").exists()


def test_experts_then_distill_from_the_store(tmp_path):
    store = tmp_path / "store"
    trained = invoke("experts", "--out", str(store), "--quiet", *TINY[:6])
    assert trained.exit_code == 0, trained.output
    assert (store / "manifest.json").exists()
    out = tmp_path / "distilled"
    distilled = invoke("distill", "--experts", str(store), "--out", str(out), "--quiet", *TINY[:10])
    assert distilled.exit_code == 0, distilled.output
    assert (out / "synthetic.safetensors").exists() and (out / "grid.png").exists()


def test_memory_option_selects_the_backprop_mode(tmp_path):
    out = tmp_path / "run"
    result = invoke("run", "--memory", "constant", "--out", str(out), "--quiet", *TINY)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["distill"]["memory"] == "constant"
    result = invoke("run", "--memory", "sideways", "--out", str(tmp_path / "bad"), *TINY)
    assert result.exit_code == 2
    assert "distill.memory must be one of standard, constant" in " ".join(result.output.split())


@NEEDS_CUDA
@pytest.mark.parametrize("memory", ["standard", "constant"])
def test_a_run_with_the_five_ast_plugins_on_cuda(tmp_path, memory):
    """The GPU path end to end: smooth experts, k-means init, every hook of distillation, evaluation."""
    out = tmp_path / "run"
    plugins = "smooth,kmeans-init,bil,itm,wp"
    args = ("--device", "cuda", "--plugins", plugins, "--memory", memory, "--out", str(out), "--quiet")
    result = invoke("run", *args, *TINY)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["device"] == "cuda"
    summary = json.loads((out / "results.json").read_text())
    assert "peak_cuda_mb" in summary and len(summary["distilled"]["runs"]) == 2
    assert all(0.0 <= acc <= 1.0 for acc in summary["distilled"]["runs"])


def test_progress_is_plain_log_lines_when_stderr_is_not_a_terminal(tmp_path):
    """Under SLURM or nohup a run reports as it goes (every distill.log_every iterations)."""
    args = ["run", *TINY, "--set", "distill.log_every=2", "--out", str(tmp_path / "r")]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "distillkit: distill " in line]
    assert [line.split("distill ")[1].split()[0] for line in lines] == ["2/4", "4/4"]
    assert "distillkit: experts 1/4" in result.output
    quiet = invoke(*args[:-2], "--out", str(tmp_path / "q"), "--quiet")
    assert quiet.exit_code == 0 and "distillkit:" not in quiet.output


COMMANDS = [
    "run",
    "experts",
    "distill",
    "evaluate",
    "ablate",
    "config",
    "list-plugins",
    "bench",
    "convert-store",
    "export",
    "import-experts",
    "import-mtt-buffer",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help_without_stale_pointers(command):
    result = runner.invoke(app, [command, "--help"], env={**ENV, "COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "Usage: distillkit" in text and "<bool>" not in text.replace("--help <bool>", "")
    for stale in ("data.download=true", "digits (default of run)", "docs/config.md"):
        assert stale not in text or (stale == "docs/config.md" and Path("docs/config.md").exists())
    if command == "evaluate":
        assert "distill.iterations" not in text
    if command == "list-plugins":
        assert "plain MTT" not in text


def test_version():
    from importlib.metadata import version

    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"distillkit {version('distillkit')}"


def test_imagefolder_takes_its_folder_from_data_path(tmp_path):
    result = invoke("config", "--dataset", "imagefolder", "--data-path", str(tmp_path / "none"), "--json")
    assert result.exit_code == 2 and f"image folder {tmp_path / 'none'} does not exist" in result.output
    result = invoke("config", "--dataset", "imagefolder")
    assert result.exit_code == 2 and "imagefolder:PATH" in result.output
