"""Every paper preset runs end to end (``run --preset NAME --smoke``) on tiny files in its real layout."""

from __future__ import annotations

import json

import pytest
from conftest import invoke

from distillkit.data.fixtures import write_fake_dataset
from distillkit.presets import preset_names, read_preset
from distillkit.smoke import MAX_IPC

PAPER = [name for name in preset_names() if read_preset(name).kind == "paper"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One expert cache and one fake copy per dataset for all presets: equal expert settings share a store."""
    return tmp_path_factory.mktemp("paper-presets"), {}


@pytest.mark.parametrize("name", PAPER)
def test_a_paper_preset_runs_end_to_end_with_smoke(name, shared, tmp_path, monkeypatch):
    root, folders = shared
    monkeypatch.setenv("DISTILLKIT_CACHE", str(root / "cache"))
    preset = read_preset(name).values
    dataset = preset["data.dataset"]
    if dataset not in folders:
        folders[dataset] = write_fake_dataset(dataset, root / dataset, train_per_class=1, test_per_class=1)
    out = tmp_path / "run"
    args = ["run", "--preset", name, "--smoke", "--data-path", folders[dataset], "--device", "cpu"]
    result = invoke(*args, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["ipc"] == min(preset["distill.ipc"], MAX_IPC)
    assert sorted(results["plugins"]) == sorted(preset["plugins"])
    distilled = results["distilled"]
    assert distilled["model"] == preset["model.name"] and len(distilled["runs"]) == 1
    config = json.loads((out / "config.json").read_text())
    assert (config["data"]["dataset"], config["model"]["name"]) == (dataset, preset["model.name"])
    assert config["data"]["zca"] == preset["data.zca"]
    assert config["sources"]["distill.iterations"] == "smoke"
