"""examples/benchmarks/conv_profile.py: a program's convolution seconds; its argv and exit status kept."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "examples" / "benchmarks"
SCRIPT = BENCHMARKS / "conv_profile.py"

PROGRAM = """\
import sys

import torch
import torch.nn.functional as F

x = torch.randn(16, 3, 32, 32, requires_grad=True)
w = torch.randn(8, 3, 3, 3, requires_grad=True)
for _ in range(3):
    F.conv2d(x, w, padding=1).relu().square().sum().backward()
torch.randn(256, 256) @ torch.randn(256, 256)
print("argv", sys.argv[1:])
sys.exit(int(sys.argv[1]))
"""


@pytest.fixture(scope="module")
def bench():
    """reference_bench.py, imported as the script imports itself (its folder on sys.path)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import reference_bench
    finally:
        sys.path.remove(str(BENCHMARKS))
    return reference_bench


def profile(tmp_path: Path, *target: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = tmp_path / "profile.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--", *target],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    return done, json.loads(out.read_text()) if out.exists() else {}


def test_a_script_runs_with_its_own_argv_and_exit_status_and_its_convolutions_are_counted(tmp_path):
    program = tmp_path / "program.py"
    program.write_text(PROGRAM)
    done, result = profile(tmp_path, "-u", str(program), "3", "--flag")
    assert done.returncode == 3, done.stderr
    assert "argv ['3', '--flag']" in done.stdout
    assert result["exit_code"] == 3 and result["command"][-2:] == ["3", "--flag"]
    names = {row["name"]: row for row in result["operators"]}
    assert names["aten::convolution_backward"]["calls"] == 3
    assert "aten::mm" in names  # not a convolution: counted in self_s only
    assert 0 < result["conv_s"] < result["self_s"]
    convs = sum(row["self_s"] for row in result["operators"] if "conv" in row["name"])
    assert result["conv_s"] == pytest.approx(convs)


def test_a_module_runs_as_with_python_dash_m(tmp_path):
    (tmp_path / "probe_module.py").write_text(PROGRAM)
    env_path = {"PYTHONPATH": str(tmp_path)}
    out = tmp_path / "m.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--", "-m", "probe_module", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env_path, "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["conv_s"] > 0


def test_without_a_program_it_says_how_to_call_it(tmp_path):
    cmd = [sys.executable, str(SCRIPT), "--out", str(tmp_path / "o.json")]
    for target in ([], ["--"], ["--", "-u"], ["--", "-m"]):
        done = subprocess.run(cmd + target, capture_output=True)
        assert done.returncode == 2 and b"usage: conv_profile.py" in done.stderr, target


def test_reference_bench_wraps_its_jobs_only_when_profiling(bench, tmp_path):
    fields = dict(reference=tmp_path, ref_python="py", data=tmp_path, out=tmp_path, ipcs=[1], iterations=2)
    fields |= dict(warmup=0, expert_epochs=2, modes=[("default", [])], env={})
    cmd = ["py", "-u", "distill.py", "--ipc=1"]
    assert bench.Plan(**fields).command("job", cmd) == cmd
    assert bench.Plan(**fields).convolutions("job", 2) is None
    plan = bench.Plan(**fields, profile_dir=tmp_path / "profiles")
    wrapped = plan.command("job", cmd)
    assert wrapped[:2] == ["py", str(SCRIPT)] and wrapped[-4:] == ["--", *cmd[1:]]
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "job.json").write_text(json.dumps({"conv_s": 3.0, "self_s": 5.0}))
    assert plan.convolutions("job", 2) | {"profile": ""} == {
        "conv_s": 1.5,
        "operator_s": 2.5,
        "units": 2,
        "profile": "",
    }


def test_the_bound_is_distillkits_convolutions_over_the_references_time(bench):
    from rich.console import Console

    ref = {"s_per_iter": 4.0, "convolutions": {"conv_s": 1.9}}
    default = {"s_per_iter": 3.0, "convolutions": {"conv_s": 2.4}}
    standard = {"s_per_iter": 2.5, "convolutions": {"conv_s": 2.0}}
    expert_ref = {"s_per_epoch": 50.0, "convolutions": {"conv_s": 26.0}}
    expert_ours = {"s_per_epoch": 40.0, "convolutions": {"conv_s": 22.5}}
    result = {
        "modes": [["default", []], ["standard", ["distill.memory=standard"]]],
        "distill": [{"ipc": 10, "reference": ref, "distillkit": [default, standard]}],
        "experts": {"reference": expert_ref, "distillkit": expert_ours},
    }
    console = Console(record=True, width=250)
    console.print(bench.convolution_table(result))
    cells = {}
    for line in console.export_text().splitlines():
        if "│" in line:
            name, *values = (cell.strip() for cell in line.split("│")[1:-1])
            cells[name] = values
    assert cells["ipc 10 iteration: bound (convolutions / reference's time)"] == ["", "0.60x", "0.50x"]
    assert cells["ipc 10 iteration: the rest (its time - convolutions)"] == ["2.100 s", "0.600 s", "0.500 s"]
    assert cells["expert epoch: bound (convolutions / reference's time)"] == ["", "0.45x", ""]
