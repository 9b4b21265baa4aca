"""The ``sample_segment`` hook and the ``datm`` start-epoch window."""

from __future__ import annotations

import json
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch
from conftest import TINY
from typer.testing import CliRunner

from distillkit.artifacts import load_synthetic
from distillkit.cli import app
from distillkit.context import Segment, SegmentContext
from distillkit.errors import ConfigError, PluginConflictError, PluginRuntimeError
from distillkit.hookcalls import call_each, first_segment
from distillkit.host import PluginHost
from distillkit_plugins.datm import DATMWindow, window

runner = CliRunner()
ITERATIONS = 6
DATM = ["--plugins", "datm", "--set", "datm.current_max_start_epoch=1", "--set", "datm.max_start_epoch=2"]
DATM += ["--set", "datm.expansion_end=3", "--set", "distill.checkpoint_every=1"]
BASE = [a for pair in zip(TINY[::2], TINY[1::2], strict=True) if "iterations" not in pair[1] for a in pair]


def _ctx(held: int = 5, experts: int = 2) -> SegmentContext:
    return SegmentContext(0, 10, experts, (held,) * experts, 3, 2, torch.Generator().manual_seed(0))


def test_window_grows_linearly_to_the_final_bound():
    cfg = DATMWindow.Config(min_start_epoch=1, current_max_start_epoch=3, max_start_epoch=7, expansion_end=8)
    # hi = min(7, 3 + 4·it // 8): it 0 → 3, 1 → 3, 2 → 4, 5 → 5, 8 → 7, 100 → 7.
    expected = [(1, 3), (1, 3), (1, 4), (1, 5), (1, 7), (1, 7)]
    assert [window(it, cfg) for it in (0, 1, 2, 5, 8, 100)] == expected
    at_once = DATMWindow.Config(current_max_start_epoch=1, max_start_epoch=4, expansion_end=0)
    assert window(0, at_once) == (0, 4)


def test_datm_passes_the_testing_kit():
    from distillkit.testing import check_hooks

    seg = check_hooks(DATMWindow(DATMWindow.Config()))["sample_segment"]
    assert seg.source == "datm" and 0 <= seg.start_epoch < 2


def test_window_options_are_checked():
    with pytest.raises(ConfigError, match="min_start_epoch < current_max_start_epoch"):
        DATMWindow.Config(min_start_epoch=2, current_max_start_epoch=2)


def test_datm_refuses_a_window_the_trajectories_cannot_hold():
    plugin = DATMWindow(DATMWindow.Config(current_max_start_epoch=1, max_start_epoch=4))
    with pytest.raises(ConfigError, match=r"raise distill\.max_start_epoch"):
        plugin.sample_segment(run=None, ctx=_ctx(held=4))  # needs epoch 4 - 1 + 2 = 5
    seg = plugin.sample_segment(run=None, ctx=_ctx(held=5))
    assert seg.source == "datm" and 0 <= seg.start_epoch < 1 and 0 <= seg.expert < 2


class BadSegment:
    name = "bad-segment"

    from distillkit.hookspecs import hookimpl

    @hookimpl
    def sample_segment(self, run, ctx):
        return Segment(0, ctx.epochs_available[0], source="bad")


class OtherSegment(BadSegment):
    name = "other-segment"


def test_a_segment_past_the_trajectory_is_a_one_line_error_naming_the_plugin():
    host = PluginHost(eps=[])
    host.select([], extra=[BadSegment()])
    ctx = _ctx()
    with pytest.raises(PluginRuntimeError) as info:
        first_segment(call_each(host.hook, "sample_segment", run=None, ctx=ctx), ctx)
    message = str(info.value)
    assert "'bad-segment'" in message and "start_epoch 5" in message and "\n" not in message


def test_core_default_answers_without_a_plugin():
    host = PluginHost(eps=[])
    host.select([])
    ctx = _ctx()
    seg = first_segment(call_each(host.hook, "sample_segment", run=None, ctx=ctx), ctx)
    g = torch.Generator().manual_seed(0)
    expert, t = torch.randint(2, (1,), generator=g).item(), torch.randint(3, (1,), generator=g).item()
    assert (seg.expert, seg.start_epoch, seg.source) == (expert, t, "uniform")


def test_two_segment_samplers_conflict_and_name_both():
    eps = [EntryPoint("datm", "distillkit_plugins.datm:DATMWindow", "distillkit")]
    host = PluginHost(eps=eps)
    with pytest.raises(PluginConflictError, match=r"'datm' and 'other-segment' both replace sample_segment"):
        host.select(["datm"], extra=[OtherSegment()])


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store") / "experts"
    result = runner.invoke(app, ["experts", *TINY, "--out", str(root), "--quiet"])
    assert result.exit_code == 0, result.output
    return root


def _distill(store: Path, out: Path, iterations: int) -> None:
    sets = [*BASE, *DATM, "--set", f"distill.iterations={iterations}"]
    result = runner.invoke(app, ["distill", "--experts", str(store), *sets, "--out", str(out)])
    assert result.exit_code == 0, result.output


def test_datm_run_draws_every_start_in_its_window_and_resumes_bit_exact(store, tmp_path):
    full = tmp_path / "full"
    _distill(store, full, ITERATIONS)
    cfg = DATMWindow.Config(current_max_start_epoch=1, max_start_epoch=2, expansion_end=3)
    rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == ITERATIONS
    for row in rows:
        lo, hi = window(row["iteration"], cfg)
        assert lo <= row["start_epoch"] < hi
    assert {row["start_epoch"] for row in rows[3:]} <= {0, 1}

    cut = tmp_path / "cut"
    _distill(store, cut, ITERATIONS // 2)
    config = json.loads((cut / "config.json").read_text())
    config["distill"]["iterations"] = ITERATIONS
    (cut / "config.json").write_text(json.dumps(config))
    for name in ("synthetic.json", "synthetic.safetensors"):
        (cut / name).unlink()
    result = runner.invoke(app, ["distill", "--resume", str(cut)])
    assert result.exit_code == 0, result.output
    a, b = load_synthetic(full), load_synthetic(cut)
    assert torch.equal(a[0], b[0]) and a[2] == b[2]
