"""shrink against its formula, through the engine's combiner, and in a real run."""

from __future__ import annotations

import json
from importlib.metadata import entry_points

import pytest
import torch
from distillkit.errors import ConfigError
from distillkit.testing import check_hooks, perturb_context, run_plugin_smoke, tiny_run

from distillkit_shrink import Shrink


def test_the_delta_is_minus_fraction_times_start() -> None:
    run, logged = tiny_run()
    ctx = perturb_context()
    delta = Shrink(Shrink.Config(fraction=0.25)).perturb_expert(run, ctx)
    torch.testing.assert_close(delta, -0.25 * ctx.start)
    torch.testing.assert_close(logged["shrink/delta_norm"], 0.25 * ctx.start.norm())


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan")])
def test_a_fraction_outside_0_1_is_refused(fraction: float) -> None:
    with pytest.raises(ConfigError, match=r"shrink\.fraction"):
        Shrink.Config(fraction=fraction)


def test_the_engine_starts_the_student_at_the_shrunk_start() -> None:
    combined = check_hooks(Shrink(Shrink.Config()))  # {hook: what the engine would use}
    torch.testing.assert_close(combined["perturb_expert"], 0.99 * perturb_context().start)


def test_a_real_run_calls_the_hook(tmp_path) -> None:
    summary = run_plugin_smoke(Shrink(Shrink.Config(fraction=0.05)), tmp_path)
    assert 0 <= summary["distilled"]["mean"] <= 1
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert all("shrink/delta_norm" in json.loads(line)["terms"] for line in lines)


def test_entry_point_installed() -> None:
    found = [ep for ep in entry_points(group="distillkit") if ep.name == "shrink"]
    if not found:
        pytest.skip("distillkit-shrink is not installed: pip install -e examples/distillkit-shrink")
    assert found[0].load() is Shrink
