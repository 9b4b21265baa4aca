"""``distillkit bench``: end to end on tiny digits, FLOP counting, the MTT size model, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from distillkit import api
from distillkit.bench import mtt_reference_bytes, parse_sweep
from distillkit.bench_worker import count_step_flops
from distillkit.cli import app
from distillkit.errors import ConfigError
from distillkit.models import build_model
from distillkit.resolve import resolve_config

runner = CliRunner()
ENV = {"COLUMNS": "200", "NO_COLOR": "1"}

#: Smaller than conftest.TINY: one 3-epoch expert tested only after its last epoch, start epoch 0 only.
SMALL = {
    "experts.count": 1,
    "experts.epochs": 3,
    "experts.eval_every": 0,
    "distill.max_start_epoch": 1,
    "distill.syn_steps": 3,
}


BALLAST_MB = 2048


def _config(**extra):
    return resolve_config("digits", None, {**SMALL, **extra}, None)


@pytest.fixture(scope="module")
def data():
    return api.prepare_data(_config()[0].data)


@pytest.fixture(scope="module")
def store(tmp_path_factory, data):
    """One tiny digits expert store shared by the tests of this module."""
    config, host = _config()
    return api.train_experts(config, host, data, tmp_path_factory.mktemp("bench") / "store")


def test_bench_writes_json_with_every_figure(store, tmp_path):
    sets = [arg for key, value in SMALL.items() for arg in ("--set", f"{key}={value}")]
    path = tmp_path / "bench.json"
    args = ["bench", "--preset", "digits", *sets, "--experts", str(store.root)]
    # A parent far larger than the tiny child: Linux would carry it into the child's ru_maxrss.
    ballast = b"\x01" * (BALLAST_MB * 2**20)
    result = runner.invoke(app, [*args, "--warmup", "0", "--window", "1", "--json-out", str(path)], env=ENV)
    del ballast
    assert result.exit_code == 0, result.output
    figures = json.loads(path.read_text())
    (row,) = figures["distillation"]
    assert len(row["iteration_seconds"]) == 1 and len(row["load_average"]) == 2
    assert row["s_per_iter"] > 0 and row["peak_rss_mb"] > 0 and row["flops_per_iter"] > 0
    assert row["distill_peak_rss_mb"] >= row["setup_rss_mb"] > 0
    assert row["step_graph_mb"] > 0 and "graph_steps" not in row  # K is reported only where a budget chose it
    assert row["peak_rss_mb"] >= max(row["distill_peak_rss_mb"], row["setup_peak_rss_mb"])
    assert row["peak_rss_mb"] < BALLAST_MB, "the parent's memory leaked into the child's peak"
    assert row["gflops_per_s"] > 0 and row["fraction_of_matmul_peak"] > 0
    assert figures["matmul_peak"]["gflops"] > 0
    assert figures["experts_throughput"]["images_per_s"] > 0
    assert figures["storage"]["bytes_per_expert"] == (store.root / "expert_000.safetensors").stat().st_size
    assert figures["config"]["distill"]["syn_steps"] == 3
    assert figures["environment"]["torch"] == torch.__version__
    assert "s/it" in result.output and "MTT format" in result.output and "graph/step" in result.output


def test_a_setting_whose_k_a_budget_chose_shows_it(store, tmp_path):
    sets = [arg for key, value in SMALL.items() for arg in ("--set", f"{key}={value}")]
    args = ["bench", "--preset", "digits", *sets, "--experts", str(store.root), "--memory", "constant"]
    args += ["--set", "distill.graph_memory_mb=1e6", "--skip-experts-throughput", "--warmup", "0"]
    path = tmp_path / "bench.json"
    result = runner.invoke(app, [*args, "--window", "1", "--json-out", str(path)], env=ENV)
    assert result.exit_code == 0, result.output
    (row,) = json.loads(path.read_text())["distillation"]
    assert row["graph_steps"] == SMALL["distill.syn_steps"]  # a budget far above N graphs keeps all N
    assert "memory constant (graph_memory_mb 1e+06)" in result.output and "(K 3)" in result.output


def test_json_prints_the_figures_instead_of_the_table(tmp_path, monkeypatch):
    """``--json`` is a flag, as on evaluate and list-plugins; ``--json-out PATH`` also writes a file."""
    from distillkit import bench

    figures = {"distillation": [{"s_per_iter": 0.5}], "storage": {"bytes_per_expert": 1}}
    monkeypatch.setattr(bench, "run_bench", lambda *args: dict(figures))
    path = tmp_path / "bench.json"
    args = ["bench", "--preset", "digits", "--quiet", "--json", "--json-out", str(path)]
    result = runner.invoke(app, args, env=ENV)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed == json.loads(path.read_text()) == {**figures, "command": printed["command"]}
    assert "s/it" not in result.stdout
    old_usage = runner.invoke(app, ["bench", "--preset", "digits", "--json", str(path)], env=ENV)
    assert old_usage.exit_code == 2


def test_flops_of_one_iteration_scale_with_syn_steps_and_include_double_backward(store, data):
    flops = {}
    for steps in (2, 4):
        config, host = _config(**{"distill.syn_steps": steps})
        distiller, _ = api.build_distiller(api.distill_job(config, host, data, store))
        flops[steps] = count_step_flops(distiller)
        if steps == 2:
            with FlopCounterMode(display=False) as forward, torch.no_grad():
                distiller.student(distiller.experts[0][0], distiller.images)
    assert 1.9 < flops[4] / flops[2] < 2.1
    # Forward + create-graph backward + outer backward through both is ~9 forwards per inner step;
    # without the double-backward ops it would be ~5.
    assert flops[2] > 7 * 2 * forward.get_total_flops()


def test_mtt_reference_size_equals_a_saved_trajectory(tmp_path):
    model = build_model("convnet-w32-d2", 1, 10, (8, 8))
    trajectory = []
    for _ in range(4):
        trajectory.append([p.detach().clone() for p in model.parameters()])
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1)
    path = tmp_path / "replay_buffer_0.pt"
    torch.save(trajectory, path)
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert mtt_reference_bytes(shapes, 4) == path.stat().st_size


def test_parse_sweep():
    assert parse_sweep("distill.syn_steps=20, 80") == ("distill.syn_steps", ("20", "80"))
    for bad in ("distill.syn_steps", "=1,2", "distill.syn_steps=20,,80", "distill.syn_steps="):
        with pytest.raises(ConfigError):
            parse_sweep(bad)


@pytest.mark.parametrize(
    ("sweep", "message"),
    [("distill.syn_steps", "--sweep expects KEY=V1,V2"), ("distill.syn_stepz=1,2", "unknown config key")],
)
def test_bad_sweep_is_one_line_with_exit_code_2(sweep, message):
    result = runner.invoke(app, ["bench", "--preset", "digits", "--sweep", sweep], env=ENV)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_whole_run_times_every_stage_and_counts_the_evaluation_networks():
    from distillkit.bench import whole_run_stages

    config, host = _config(**{"distill.iterations": 2, "evaluate.runs": 2, "evaluate.epochs": 3})
    figures = whole_run_stages(config, host, api.Reporter())
    assert set(figures["stages_s"]) == {"experts", "distill", "evaluate"}
    assert all(seconds > 0 for seconds in figures["stages_s"].values())
    assert figures["wall_s"] >= sum(figures["stages_s"].values())
    assert figures["evaluation_networks"] == 4 and figures["images_per_set"] == 10  # ipc 1 × 10 digits
    expected = 4 * 10 * 3 / figures["stages_s"]["evaluate"]
    assert figures["evaluation_network_images_per_s"] == pytest.approx(expected)
    assert figures["experts_parallel"] == "auto" and figures["evaluate_parallel"] == "auto"
    train_images = len(api.prepare_data(config.data).train[1])
    expected = config.experts.count * config.experts.epochs * train_images / figures["stages_s"]["experts"]
    assert figures["expert_network_images_per_s"] == pytest.approx(expected)
