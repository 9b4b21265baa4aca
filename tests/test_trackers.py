"""Observer hooks (``on_metrics``, ``on_close``) and the ``tensorboard`` and ``wandb`` tracker plugins."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from conftest import TINY, TINY_EXPERTS, invoke, one_line_error

from distillkit import api
from distillkit.hookspecs import hookimpl
from distillkit.observers import distill_values
from distillkit.resolve import resolve_config
from distillkit.runtime import Reporter
from distillkit.testing import check_hooks

BUDGET = {
    **TINY_EXPERTS,
    "distill.syn_steps": 4,
    "distill.iterations": 5,
    "distill.checkpoint_every": 0,
    "evaluate.runs": 2,
    "evaluate.epochs": 3,
}


class Recorder:
    """A real observer plugin: keeps every record and close it is given; also draws from ``run.generator``."""

    name: ClassVar[str] = "recorder"

    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []

    @hookimpl
    def on_metrics(self, run, ctx) -> None:
        torch.rand(3, generator=run.generator)  # an observer's random draws must change nothing
        run.log("recorder/seen", 1.0)  # nor may anything it logs
        self.seen.append((ctx.stage, ctx.step, dict(ctx.values), ctx.expert, ctx.subject, ctx.run_dir))

    @hookimpl
    def on_close(self, run, ctx) -> None:
        self.seen.append(("close", ctx.status, ctx.run_dir))


class FailsOnSecondIteration(Recorder):
    name: ClassVar[str] = "fails-late"

    @hookimpl
    def on_metrics(self, run, ctx) -> None:
        if ctx.stage == "distill" and ctx.step == 1:
            raise OSError("disk full")
        self.seen.append((ctx.stage, ctx.step))


class Notes(Reporter):
    def __init__(self) -> None:
        self.notes: list[str] = []

    def note(self, message: str) -> None:
        self.notes.append(message)


def _run(out: Path, *plugins: Any, reporter: Reporter | None = None) -> dict[str, Any]:
    config, host = resolve_config(overrides=BUDGET, extra_plugins=list(plugins))
    return api.run(config, host, out, reporter=reporter)


def _lines(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_every_stage_reports_its_records_in_order_then_close(tmp_path):
    recorder = Recorder()
    out = tmp_path / "run"
    summary = _run(out, recorder)
    stages = [record[0] for record in recorder.seen]
    assert stages == ["experts"] * 4 + ["distill"] * 5 + ["evaluate"] * 2 + ["close"]
    assert recorder.seen[-1] == ("close", "finished", out)

    manifest = json.loads((Path(summary["expert_store"]) / "manifest.json").read_text())
    history = manifest["experts"][0]["history"]
    experts = [r for r in recorder.seen if r[0] == "experts"]
    assert [(r[1], r[3], r[5]) for r in experts] == [(e, 0, out) for e in range(4)]
    assert [r[2] for r in experts] == [{k: v for k, v in row.items() if k != "epoch"} for row in history]
    assert "test_acc" in experts[-1][2] and {"loss", "ce", "train_acc"} <= set(experts[0][2])

    distill = [r for r in recorder.seen if r[0] == "distill"]
    lines = _lines(out)
    assert [(r[1], r[3]) for r in distill] == [(line["iteration"], line["expert"]) for line in lines]
    assert [r[2] for r in distill] == [distill_values(line) for line in lines]
    assert {"loss", "match_loss", "alpha", "start_epoch", "inner_weight", "seconds"} <= set(distill[0][2])

    evaluate = {r[4]: r for r in recorder.seen if r[0] == "evaluate"}
    model = summary["distilled"]["model"]
    assert set(evaluate) == {f"distilled/{model}", f"random_real/{model}"}
    for label in ("distilled", "random_real"):
        step, values = evaluate[f"{label}/{model}"][1:3]
        assert step == 5 and values["mean"] == summary[label]["mean"]
        assert [values["run/0"], values["run/1"]] == summary[label]["runs"]

    plain = tmp_path / "plain"
    _run(plain)  # the same run without the observer: the observer changed nothing
    assert [{**line, "seconds": 0} for line in _lines(plain)] == [{**line, "seconds": 0} for line in lines]
    assert (plain / "synthetic.safetensors").read_bytes() == (out / "synthetic.safetensors").read_bytes()


def test_a_raising_tracker_is_named_dropped_and_the_run_finishes(tmp_path):
    failing, recorder, notes = FailsOnSecondIteration(), Recorder(), Notes()
    out = tmp_path / "run"
    summary = _run(out, failing, recorder, reporter=notes)
    assert 0 <= summary["distilled"]["mean"] <= 1 and len(_lines(out)) == 5
    (note,) = [n for n in notes.notes if "fails-late" in n]
    assert "plugin 'fails-late' failed in on_metrics: OSError: disk full" in note
    assert failing.seen[-2:] == [("distill", 0), ("close", "finished", out)]  # dropped, but closed
    assert len([r for r in recorder.seen if r[0] == "distill"]) == 5  # the others still see everything
    dropped = json.loads((out / "run.json").read_text())["dropped_observers"]
    assert list(dropped) == ["fails-late"] and "disk full" in dropped["fails-late"]


class NanWeight(Recorder):
    """An observer beside a hook that makes the run fail: ``on_close`` still comes, as "failed"."""

    name: ClassVar[str] = "nan-weight"

    @hookimpl
    def inner_loss_weight(self, run, ctx) -> float:
        return float("nan")


def test_close_comes_also_when_the_run_fails(tmp_path):
    from distillkit.errors import PluginRuntimeError

    plugin = NanWeight()
    with pytest.raises(PluginRuntimeError, match="nan-weight"):
        _run(tmp_path / "run", plugin)
    assert plugin.seen[-1] == ("close", "failed", tmp_path / "run")
    assert [r[0] for r in plugin.seen[:-1]] == ["experts"] * 4


def test_the_tensorboard_events_read_back_as_metrics_jsonl(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    result = invoke("run", *TINY, "--plugins", "tensorboard", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    (events,) = (out / "tensorboard").glob("events.out.tfevents.*")
    board = EventAccumulator(str(events.parent))
    board.Reload()
    tags = set(board.Tags()["scalars"])
    lines = _lines(out)
    for key in ("loss", "match_loss", "alpha", "start_epoch", "inner_weight"):
        scalars = board.Scalars(f"distill/{key}")
        assert [s.step for s in scalars] == [line["iteration"] for line in lines]
        expected = torch.tensor([float(line[key]) for line in lines], dtype=torch.float32)
        assert torch.equal(torch.tensor([s.value for s in scalars], dtype=torch.float32), expected)
    assert {"experts/0/loss", "experts/0/test_acc", "evaluate/distilled/convnet-w32-d2/mean"} <= tags
    results = json.loads((out / "results.json").read_text())
    (mean,) = board.Scalars("evaluate/distilled/convnet-w32-d2/mean")
    assert mean.value == pytest.approx(results["distilled"]["mean"], rel=1e-6)


def test_tensorboard_without_its_package_is_one_line_naming_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if it were not installed
    result = invoke("run", "--plugins", "tensorboard", "--out", tmp_path / "run")
    one_line_error(result, 3, "the tensorboard plugin needs the tensorboard package")
    assert "distillkit[tensorboard]" in result.output and not (tmp_path / "run").exists()


def test_the_testing_kit_drives_a_tracker_and_a_command_without_a_run_directory_is_refused(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from distillkit.errors import PluginError
    from distillkit_plugins.tensorboard_tracker import TensorBoard

    with pytest.raises(PluginError, match="tensorboard: this command has no run directory"):
        check_hooks(TensorBoard(TensorBoard.Config()))
    assert check_hooks(TensorBoard(TensorBoard.Config()), run_dir=tmp_path) == {
        "on_metrics": None,
        "on_close": None,
    }
    board = EventAccumulator(str(tmp_path / "tensorboard"))
    board.Reload()
    assert board.Scalars("distill/terms/x")[0].value == pytest.approx(0.1)
    assert board.Scalars("evaluate/distilled/tinynet/run/1")[0].step == 1


def test_wandb_offline_writes_its_run_files_without_network(tmp_path):
    pytest.importorskip("wandb", reason="the wandb extra is not installed")
    env = {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_BASE_URL": "http://127.0.0.1:9",  # nothing listens there: any upload would fail
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
    }
    out = tmp_path / "run"
    result = invoke("run", *TINY, "--plugins", "wandb", "--out", out, "--quiet", env=env)
    assert result.exit_code == 0, result.output
    (log,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    data = log.read_bytes()
    for key in (b"distill/loss", b"distill/step", b"experts/0/test_acc", b"evaluate/distilled/"):
        assert key in data
    assert json.loads((out / "config.json").read_text())["plugins"] == ["wandb"]
