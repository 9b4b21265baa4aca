"""Shared fixtures: every test gets its own expert cache, so nothing leaks between tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DISTILLKIT_CACHE", str(tmp_path_factory.mktemp("cache")))


#: A digits run small enough for a unit test (seconds on 2 cores).
TINY = [
    "--set", "experts.count=1",
    "--set", "experts.epochs=4",
    "--set", "distill.max_start_epoch=2",
    "--set", "distill.syn_steps=5",
    "--set", "distill.iterations=4",
    "--set", "evaluate.runs=2",
    "--set", "evaluate.epochs=10",
]  # fmt: skip
