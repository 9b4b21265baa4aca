"""examples/benchmarks/reference_bench.py: the patch check on a stand-in tree (no reference code)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "benchmarks" / "reference_bench.py"

# One-line stand-ins for the lines the four patches edit, nothing else of the reference.
STAND_IN = {
    "utils.py": "    if dataset == 'CIFAR10':\n        pass\n    elif dataset == 'Tiny':\n        pass\n",
    "networks.py": (
        "class ConvNet(nn.Module):\n    def forward(self, x):\n        out = out.view(out.size(0), -1)\n\n"
        "class ConvNetGAP(nn.Module):\n    def forward(self, x):\n        out = out.view(out.size(0), -1)\n"
    ),
    "buffer.py": "a([p.detach().cpu() for p in teacher_net.parameters()])\n" * 2,
    "distill.py": "image_save = image_syn.cuda()\n",
    "reparam_module.py": "",
}


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("reference_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture
def tree(tmp_path):
    for name, text in STAND_IN.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_missing_patches_are_named_in_one_line_with_exit_2(bench, tree, tmp_path, capsys):
    assert [p.number for p in bench.missing_patches(tree)] == [1, 2, 3, 4]
    assert bench.main(["--reference", str(tree), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    if Path("/usr/bin/time").is_file():
        assert "lacks CPU patches 1 (utils.py" in err and "--patch" in err


def test_patch_applies_the_four_edits_once(bench, tree):
    bench.check_reference(tree, patch=True)
    assert bench.missing_patches(tree) == []
    networks = (tree / "networks.py").read_text()
    assert networks.count("out.reshape(") == 1 and networks.count("out.view(") == 1  # ConvNetGAP kept
    assert (tree / "buffer.py").read_text().count(".cpu().clone()") == 2
    assert "image_syn.to(args.device)" in (tree / "distill.py").read_text()
    utils = (tree / "utils.py").read_text()
    assert utils.index("'FashionMNIST'") < utils.index("'Tiny'") and "download=False" in utils
    before = {name: (tree / name).read_text() for name in STAND_IN}
    bench.check_reference(tree, patch=True)  # nothing left to do
    assert {name: (tree / name).read_text() for name in STAND_IN} == before


def test_a_tree_without_the_anchor_text_is_refused(bench, tree):
    (tree / "buffer.py").write_text("a([p.detach().cpu() for p in teacher_net.parameters()])\n")
    with pytest.raises(bench.SetupError, match="cannot apply patch 3"):
        bench.check_reference(tree, patch=True)
