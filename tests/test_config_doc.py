"""docs/config.md's "Every key" table is generated from the config dataclasses and kept current."""

from __future__ import annotations

import subprocess
import sys
import typing
from dataclasses import dataclass, fields, is_dataclass

import pytest

from distillkit import configdoc
from distillkit.config import RunConfig
from distillkit.host import plugin_config_class


def _documented() -> str:
    return configdoc.section(configdoc.DOC.read_text(encoding="utf-8"))


def _keys(cls: type, prefix: str) -> list[str]:
    """Every dotted key of ``cls``'s fields, nested config dataclasses walked."""
    keys = []
    hints = typing.get_type_hints(cls)
    for item in fields(cls):
        key = f"{prefix}.{item.name}" if prefix else item.name
        if is_dataclass(hints[item.name]):
            keys += _keys(hints[item.name], key)
        elif not (cls is RunConfig and item.name == "plugin_options"):
            keys.append(key)
    return keys


def test_docs_config_md_holds_the_generated_table() -> None:
    assert _documented() == configdoc.render(), (
        f"docs/config.md's key table is out of date: run `{configdoc.COMMAND}` and commit the result"
    )


def test_every_field_of_every_config_dataclass_has_a_row() -> None:
    plugins = configdoc.builtin_plugins()
    assert {"bil", "itm", "kmeans-init", "smooth", "wp"} <= set(plugins)
    keys = _keys(RunConfig, "")
    for name, plugin in plugins.items():
        config_cls = plugin_config_class(plugin)
        keys += _keys(config_cls, name) if config_cls is not None else []
    documented = _documented()
    missing = [key for key in keys if f"| `{key}` |" not in documented]
    assert missing == []
    assert len(keys) > 60


def test_a_field_without_a_comment_is_an_error() -> None:
    @dataclass
    class Undocumented:
        #: Has a comment.
        described: int = 1
        bare: str = "x"

    with pytest.raises(ValueError, match=r"Undocumented.bare \(demo.bare\) has no '#:' comment"):
        configdoc.rows(Undocumented, "demo")


def test_literals_show_their_choices_and_pipes_are_escaped() -> None:
    assert configdoc.type_name(typing.Literal["a", "b", "c"]) == "a | b | c"
    assert configdoc.type_name(tuple[str, ...]) == "list of str"
    assert configdoc.type_name(int | None) == "int | none"
    row = '| `experts.optimizer` | `sgd \\| adam` | `"sgd"` |'
    assert row in configdoc.render()


def test_write_replaces_only_the_marked_section(tmp_path) -> None:
    path = tmp_path / "config.md"
    path.write_text(f"# Title\n\n{configdoc.BEGIN}\nstale\n{configdoc.END}\n\nafter\n", encoding="utf-8")
    assert configdoc.write(path) is True
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Title\n\n") and text.endswith(f"{configdoc.END}\n\nafter\n")
    assert configdoc.section(text) == configdoc.render()
    assert configdoc.write(path) is False
    path.write_text("no markers\n", encoding="utf-8")
    with pytest.raises(ValueError, match="markers"):
        configdoc.write(path)


def test_the_generator_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "sys.argv = ['configdoc']\n"
        "from distillkit.configdoc import main\n"
        "main()\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "| `wp.scope` |" in proc.stdout
