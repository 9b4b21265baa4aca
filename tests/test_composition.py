"""Every combination of the built-in technique plugins (docs/composition.md).

A pair either selects, or the host refuses it with one line naming both plugins and
the exclusive hook they both replace; the verdict is derived from the hooks each
plugin implements (as pluggy sees them) ∩ ``EXCLUSIVE_HOOKS``. Every subset with no
such conflict then runs through the real engine on a tiny digits budget (2 outer
iterations, no evaluation) and must end with finite losses, no rollback and a saved
set. Expert stores are trained once per expert-side recipe (the subsets of the
plugins implementing ``expert_loss``/``expert_step``) and shared.

The plugin list is read from the installed built-in plugins (trackers, which only
observe, left out), so a new technique joins every check here on its own.
"""

from __future__ import annotations

import inspect
import itertools
import json
import math
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from conftest import invoke

import distillkit
from distillkit import api
from distillkit.artifacts import SOFT_LABELS, load_synthetic
from distillkit.errors import DistillkitError, PluginConflictError
from distillkit.experts.store import TrajectoryStore
from distillkit.hookspecs import EXCLUSIVE_HOOKS, PROJECT, hookimpl
from distillkit.host import PluginHost, distribution_of
from distillkit.resolve import flat_values

#: The techniques this project ships; the test reads the installed ones and checks against this.
EXPECTED = frozenset({"smooth", "kmeans-init", "bil", "itm", "wp", "ftd", "tesla", "datm"})
#: Conflicts the design promises (plugin, plugin, hook), checked on top of the derived verdicts.
KNOWN_CONFLICTS = [("datm", "kmeans-init", "init_synthetic"), ("datm", "tesla", "init_labels")]
#: The ``source`` of the core's own start set (``init_synthetic`` with no plugin answering).
CORE_INIT = "random-real"
OBSERVER_HOOKS = frozenset({"on_metrics", "on_close"})
EXPERT_HOOKS = frozenset({"expert_loss", "expert_step"})

#: Experts in about a second each; the distillation of one combination in a fraction of one.
BUDGET: dict[str, object] = {
    "device": "cpu",
    "model.name": "convnet-w8-d1",
    "data.augment": "none",
    "experts.count": 1,
    "experts.epochs": 2,
    "experts.batch_size": 64,  # experts right about most classes: datm's init finds correct images
    "experts.eval_every": 0,
    "distill.ipc": 1,
    "distill.syn_steps": 4,
    "distill.expert_epochs": 2,
    "distill.max_start_epoch": 1,
    "distill.iterations": 2,
    "distill.max_failures": 0,  # a divergence (NaN, explosion) is an error, not a silent rollback
    "evaluate.runs": 0,
}
#: Options of a plugin when it is selected: its window/work cut to the tiny budget.
PLUGIN_BUDGET: dict[str, dict[str, object]] = {
    "datm": {"datm.current_max_start_epoch": 1, "datm.max_start_epoch": 1},
    "kmeans-init": {"kmeans-init.n_init": 1},
}


def _marked_hooks(cls: object) -> frozenset[str]:
    """Hook names a plugin class marks with ``@hookimpl`` (read without instantiating it)."""
    marker = f"{PROJECT}_impl"
    return frozenset(name for name, value in inspect.getmembers(cls) if hasattr(value, marker))


def _techniques() -> dict[str, frozenset[str]]:
    """Built-in plugins that are not pure observers → the hooks each implements, as the host sees them."""
    host = PluginHost()
    found = {}
    for name, ep in host.available.items():
        if distribution_of(ep)[0] != "distillkit":
            continue  # third-party plugins installed beside (the examples' packages)
        if _marked_hooks(ep.load()) <= OBSERVER_HOOKS:
            continue  # trackers: tensorboard, wandb
        alone = PluginHost()
        alone.select([name])
        found[name] = frozenset(alone.records[name].hooks)
    return dict(sorted(found.items()))


HOOKS = _techniques()
TECHNIQUES = tuple(HOOKS)
EXPERT_SIDE = tuple(name for name in TECHNIQUES if HOOKS[name] & EXPERT_HOOKS)


def _clashes(names: tuple[str, ...]) -> dict[str, list[str]]:
    """Exclusive hook → the (sorted) plugins of ``names`` that replace it, where more than one does."""
    owners: dict[str, list[str]] = {}
    for name in sorted(names):
        for hook in HOOKS[name] & EXCLUSIVE_HOOKS:
            owners.setdefault(hook, []).append(name)
    return {hook: found for hook, found in sorted(owners.items()) if len(found) > 1}


PAIRS = list(itertools.combinations(TECHNIQUES, 2))
SUBSETS = [c for k in range(len(TECHNIQUES) + 1) for c in itertools.combinations(TECHNIQUES, k)]
ALLOWED = [s for s in SUBSETS if not _clashes(s)]


def _id(names: tuple[str, ...]) -> str:
    return "+".join(names) or "core"


def _expected_message(a: str, b: str, hook: str) -> str:
    first, second = sorted((a, b))
    return f"plugins '{first}' and '{second}' both replace {hook}"


# -- selection ------------------------------------------------------------------------


def test_there_are_exactly_eight_technique_plugins():
    assert set(TECHNIQUES) == EXPECTED, f"installed techniques: {', '.join(TECHNIQUES)}"


@pytest.mark.parametrize("pair", PAIRS, ids=_id)
def test_a_pair_selects_or_is_refused_in_one_line_naming_both_and_the_hook(pair):
    clashes = _clashes(pair)
    host = PluginHost()
    if not clashes:
        host.select(list(pair))
        assert set(host.selected) == set(pair)
        return
    with pytest.raises(PluginConflictError) as info:
        host.select(list(pair))
    message = str(info.value)
    assert _expected_message(*pair, next(iter(clashes))) in message, message
    assert "\n" not in message


@pytest.mark.parametrize(("a", "b", "hook"), KNOWN_CONFLICTS, ids=lambda v: v)
def test_the_known_conflicts_are_refused(a, b, hook):
    assert {a, b} <= set(TECHNIQUES), f"not installed: {sorted({a, b} - set(TECHNIQUES))}"
    assert hook in HOOKS[a] & HOOKS[b]
    with pytest.raises(PluginConflictError) as info:
        PluginHost().select([a, b])
    assert _expected_message(a, b, hook) in str(info.value) and "\n" not in str(info.value)
    # what a user sees: one Error line (plus its hint), the same sentence, exit code of a plugin error
    result = invoke("config", "--plugins", f"{a},{b}")
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == PluginConflictError.exit_code, result.output
    assert lines[0].startswith("Error: ") and _expected_message(a, b, hook) in lines[0], result.output
    assert len(lines) <= 2 and "Traceback" not in result.output


def test_every_subset_selects_exactly_when_no_exclusive_hook_is_shared():
    wrong = []
    for names in SUBSETS:
        try:
            PluginHost().select(list(names))
            refused = None
        except PluginConflictError as exc:
            refused = str(exc)
        clashes = _clashes(names)
        if clashes:
            hook, (a, b, *_) = next(iter(clashes.items()))
            if refused is None or _expected_message(a, b, hook) not in refused:
                wrong.append(f"{_id(names)}: expected a conflict on {hook}, got {refused!r}")
        elif refused is not None:
            wrong.append(f"{_id(names)}: refused: {refused}")
    assert not wrong, "\n".join(wrong)
    assert len(ALLOWED) == sum(1 for s in SUBSETS if not _clashes(s))


# -- end to end ------------------------------------------------------------------------


def _recipe(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(n for n in names if n in EXPERT_SIDE)


def _resolve(names: tuple[str, ...], extra: tuple[object, ...] = ()):
    overrides = dict(BUDGET)
    for name in names:
        overrides |= PLUGIN_BUDGET.get(name, {})
    return distillkit.resolve_config(
        preset="digits", overrides=overrides, plugins=list(names), extra_plugins=list(extra)
    )


@pytest.fixture(scope="module")
def data() -> api.PreparedData:
    config, _ = _resolve(())
    return api.prepare_data(config.data)


@pytest.fixture(scope="module")
def stores(tmp_path_factory, data) -> dict[tuple[str, ...], Path]:
    """One trained store per expert-side recipe: every subset of ``EXPERT_SIDE``."""
    root = tmp_path_factory.mktemp("composition-stores")
    out = {}
    for k in range(len(EXPERT_SIDE) + 1):
        for recipe in itertools.combinations(EXPERT_SIDE, k):
            config, host = _resolve(recipe)
            store = api.train_experts(config, host, data, root / _id(recipe))
            assert torch.isfinite(store.load(0)).all(), f"experts of {_id(recipe)} are not finite"
            assert set(store.key["expert_plugins"]) == set(recipe), store.key["expert_plugins"]
            out[recipe] = store.root
    return out


def _owners(names: tuple[str, ...], hook: str) -> list[str]:
    return [n for n in names if hook in HOOKS[n]]


def _distill(names, stores, data, out_dir: Path, extra: tuple[object, ...] = ()) -> None:
    """Distil ``names`` (+ ready-made ``extra`` plugins) on its recipe's store; check what it made."""
    config, host = _resolve(names, extra)
    # every plugin's config defaults are in force together (none set by the budget here)
    flat = flat_values(config)
    for key, value in host.config_defaults().items():
        assert key in BUDGET or flat[key] == value, f"{key} = {flat[key]!r}, not {value!r}"
    store = TrajectoryStore.open(stores[_recipe(names)])
    key = api.expert_key(config, data, host)
    assert json.dumps(store.key, sort_keys=True) == json.dumps(key, sort_keys=True), "store of another recipe"
    out_dir.mkdir(parents=True)
    result = api.distill(api.distill_job(config, host, data, store), out_dir)
    api.save_distilled(out_dir, config, host, data, result, store)
    assert len(result.history) == config.distill.iterations
    for row in result.history:
        assert not row.rollbacks, f"iteration {row.iteration} rolled back: {row.rollbacks}"
        values = {"loss": row.loss, "match_loss": row.match_loss, "alpha": row.alpha, **row.terms}
        assert all(math.isfinite(v) for v in values.values()), f"iteration {row.iteration}: {values}"
    assert math.isfinite(result.lr) and result.lr > 0
    # the replace-style hooks were answered by their owner, if one is selected
    assert (result.init_source != CORE_INIT) == bool(_owners(names, "init_synthetic")), result.init_source
    assert (result.soft_labels is not None) == bool(_owners(names, "init_labels"))
    images, labels, lr, meta, tensors = load_synthetic(out_dir)
    assert torch.isfinite(images).all() and torch.equal(images, result.images.detach().cpu())
    assert labels.shape[0] == images.shape[0] == config.distill.ipc * data.dataset.num_classes
    assert lr == pytest.approx(result.lr) and meta["iteration"] == config.distill.iterations
    if result.soft_labels is not None:
        saved = tensors[SOFT_LABELS]
        assert torch.isfinite(saved).all() and torch.equal(saved, result.soft_labels.detach().cpu())


@pytest.mark.parametrize("names", ALLOWED, ids=_id)
def test_an_allowed_combination_distils_to_a_finite_saved_set(names, stores, data, tmp_path):
    _distill(names, stores, data, tmp_path / "run")


class Exploding:
    """A sabotaged technique: a finite but absurd inner-loss weight that blows the student up."""

    name: ClassVar[str] = "exploding"

    @hookimpl
    def inner_loss_weight(self, run, ctx):
        return 1e30


def test_the_end_to_end_check_fails_on_a_diverging_combination(stores, data, tmp_path):
    with pytest.raises((AssertionError, DistillkitError)):
        _distill(("bil", "itm"), stores, data, tmp_path / "run", extra=(Exploding(),))


def test_each_expert_recipe_gets_its_own_store_key(stores, data):
    """Experts trained differently must not share a cache folder (``default_store_dir`` hashes the key)."""
    keys = {}
    for recipe in stores:
        config, host = _resolve(recipe)
        keys[_id(recipe)] = json.dumps(api.expert_key(config, data, host), sort_keys=True)
    same = [(a, b) for a, b in itertools.combinations(keys, 2) if keys[a] == keys[b]]
    assert not same, f"recipes with the same expert-store key: {same}"
