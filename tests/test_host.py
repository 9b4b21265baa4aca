"""PluginHost: selection, blocking, conflicts, errors, listing, config."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest
import torch

from distillkit.config import RunConfig
from distillkit.context import InitContext, RunContext
from distillkit.errors import (
    ConfigError,
    PluginConflictError,
    PluginError,
    UnknownPluginError,
)
from distillkit.hookspecs import EXCLUSIVE_HOOKS, hookimpl
from distillkit.host import CORE_NAME, PluginHost, discover
from distillkit.resolve import resolve_config


def ep(name: str, target: str) -> EntryPoint:
    return EntryPoint(name, f"fake_plugins:{target}", "distillkit")


EPS = [
    ep("zero-init", "ZeroInit"),
    ep("other-init", "OtherInit"),
    ep("half", "HalfWeight"),
    ep("broken", "DoesNotExist"),
    ep("wants-momentum", "WantsMomentum"),
    ep("wants-no-momentum", "WantsNoMomentum"),
]


def _init_ctx(ipc: int = 1) -> InitContext:
    return InitContext(
        train_images=torch.randn(20, 1, 4, 4),
        train_labels=torch.arange(2).repeat(10),
        num_classes=2,
        ipc=ipc,
        class_names=("a", "b"),
        expert_params=lambda e: torch.zeros(1),
        expert_epochs_available=1,
        make_model=lambda: torch.nn.Identity(),
        load_flat=lambda m, t: None,
    )


def _run() -> RunContext:
    return RunContext(
        config=RunConfig(),
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        out_dir=None,
    )


def test_no_plugins_means_only_core_defaults():
    host = PluginHost(eps=EPS)
    host.select([])
    assert host.selected == {}
    init = host.hook.init_synthetic(run=_run(), ctx=_init_ctx(ipc=3))
    assert init.source == "random-real" and init.images.shape == (6, 1, 4, 4)
    assert host.hook.inner_loss_weight(run=_run(), ctx=None) == []
    assert all(host.pm.is_blocked(e.name) for e in EPS)


def test_selected_plugin_replaces_the_default_init():
    host = PluginHost(eps=EPS)
    host.select(["zero-init"], {"zero-init": {"value": "2.5"}})
    init = host.hook.init_synthetic(run=_run(), ctx=_init_ctx())
    assert init.source == "zero-init" and torch.all(init.images == 2.5)
    assert host.records["zero-init"].hooks == ("init_synthetic",)


def test_two_exclusive_plugins_conflict_and_name_both():
    host = PluginHost(eps=EPS)
    with pytest.raises(PluginConflictError, match=r"other-init.*zero-init"):
        host.select(["zero-init", "other-init"])


def test_unknown_plugin_suggests_a_close_name():
    host = PluginHost(eps=EPS)
    with pytest.raises(UnknownPluginError) as info:
        host.select(["zero-int"])
    assert "zero-init" in info.value.hint


def test_selected_broken_plugin_is_a_plugin_error():
    host = PluginHost(eps=EPS)
    with pytest.raises(PluginError, match=r"broken.*failed to import"):
        host.select(["broken"])


def test_misnamed_plugin_is_rejected():
    host = PluginHost(eps=[ep("misnamed", "Misnamed")])
    with pytest.raises(PluginError, match=r"calls itself 'something-else'"):
        host.select(["misnamed"])


def test_misspelled_hook_is_caught():
    host = PluginHost(eps=[ep("typo", "TypoHook")])
    with pytest.raises(PluginError, match=r"does not exist"):
        host.select(["typo"])


def test_unknown_plugin_option_is_a_config_error():
    host = PluginHost(eps=EPS)
    with pytest.raises(ConfigError, match=r"zero-init.valu"):
        host.select(["zero-init"], {"zero-init": {"valu": "1"}})


def test_bad_option_type_is_a_config_error():
    host = PluginHost(eps=EPS)
    with pytest.raises(ConfigError, match=r"expects a number"):
        host.select(["zero-init"], {"zero-init": {"value": "lots"}})


def test_same_name_from_two_packages_is_a_conflict():
    twice = [ep("half", "HalfWeight"), EntryPoint("half", "elsewhere:Half", "distillkit")]
    with pytest.raises(PluginConflictError, match=r"two packages"):
        discover(twice)


def test_list_records_shows_broken_plugin_as_row():
    records = {r.name: r for r in PluginHost(eps=EPS).list_records(["half"])}
    assert records["broken"].status == "error" and "DoesNotExist" in records["broken"].error
    assert records["half"].status == "enabled"
    assert records["zero-init"].hooks == ("init_synthetic",)
    assert CORE_NAME not in records


def test_plugin_config_defaults_apply_below_user_settings():
    config, _ = resolve_config(None, None, {}, ["wants-momentum"], PluginHost(eps=EPS))
    assert config.experts.momentum == 0.9
    config, _ = resolve_config(
        None, None, {"experts.momentum": "0.5"}, ["wants-momentum"], PluginHost(eps=EPS)
    )
    assert config.experts.momentum == 0.5


def test_conflicting_plugin_defaults_are_an_error():
    with pytest.raises(PluginConflictError, match=r"experts.momentum"):
        resolve_config(None, None, {}, ["wants-momentum", "wants-no-momentum"], PluginHost(eps=EPS))


def test_core_keys_parse_and_unknown_keys_fail():
    config, _ = resolve_config(
        "digits",
        None,
        {"distill.ipc": "3", "evaluate.models": "convnet,alexnet"},
        [],
        PluginHost(eps=EPS),
    )
    assert config.distill.ipc == 3 and config.evaluate.models == ("convnet", "alexnet")
    with pytest.raises(ConfigError, match=r"unknown config key 'distill.ipcc'"):
        resolve_config(None, None, {"distill.ipcc": "3"}, [], PluginHost(eps=EPS))
    with pytest.raises(ConfigError, match=r"expects an integer"):
        resolve_config(None, None, {"distill.ipc": "three"}, [], PluginHost(eps=EPS))
    with pytest.raises(ConfigError, match=r"unknown preset"):
        resolve_config("digitz", None, {}, [], PluginHost(eps=EPS))


def test_plugin_option_for_unselected_plugin_is_rejected():
    with pytest.raises(ConfigError, match=r"zero-init.value"):
        resolve_config(None, None, {"zero-init.value": "1"}, [], PluginHost(eps=EPS))


def test_list_records_shows_a_misspelt_hook_as_an_error_row():
    (record,) = PluginHost(eps=[ep("typo", "TypoHook")]).list_records()
    assert record.status == "error" and "inner_los_weight" in record.error


@pytest.mark.parametrize("hook_name", sorted(EXCLUSIVE_HOOKS))
def test_every_replace_style_hook_is_exclusive(hook_name):
    """Two selected plugins implementing one replace-style hook: one line naming both and the hook."""

    def plugin(name: str) -> object:
        impl = hookimpl(lambda self, run, ctx: None)
        impl.__name__ = hook_name
        return type(name.title(), (), {"name": name, hook_name: impl})()

    with pytest.raises(PluginConflictError) as info:
        PluginHost(eps=[]).select([], {}, [plugin("first"), plugin("second")])
    message = str(info.value)
    assert "\n" not in message and f"both replace {hook_name}" in message
    assert "'first'" in message and "'second'" in message
