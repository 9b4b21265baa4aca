"""``distillkit report``: the page of a real tiny run, its missing pieces, escaping, and no matplotlib."""

from __future__ import annotations

import fcntl
import html
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
from conftest import TINY, invoke, one_line_error

from distillkit.plotting import PLOTS_HINT
from distillkit.report import collect, render

#: Plugins that log terms (wp/rel_norm, bil/nu, itm/<k>), so the terms section has something to show.
PLUGINS = "bil,itm,wp"
#: TINY on a small net without augmentation: the whole run in seconds.
QUICK = [*TINY, "--model", "convnet-w8-d1", "--set", "data.augment=none"]
SECTIONS = ["overview", "synthetic", "distillation", "evaluation"]
SECTIONS += ["config", "plugins", "timings", "environment"]
#: Evaluate the run again on another architecture (one quick network).
EVALUATE_OTHER = ["--eval-models", "convnet-w16-d1", "--set", "evaluate.runs=1", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One tiny digits run with three plugins, written by the CLI (so report.html comes from `run`)."""
    root = tmp_path_factory.mktemp("report")
    result = invoke(
        "run", *QUICK, "--plugins", PLUGINS, "--out", root / "run", "--experts", root / "store", "--quiet"
    )
    assert result.exit_code == 0, result.output
    assert f"report: {root / 'run' / 'report.html'}" in result.output
    return root / "run"


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns(".lock", "checkpoints"))
    return target


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _sources(page: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]*)"', page)


def test_run_writes_a_self_contained_report(run_dir: Path) -> None:
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert all(f'<section id="{name}">' in page for name in SECTIONS)
    # Nothing is loaded from anywhere: every image and the icon are data: URIs, no script, no URL.
    assert _sources(page) and all(s.startswith("data:") for s in _sources(page))
    assert "<script" not in page.lower() and not re.search(r"\b(?:https?|ftp|file)://", page)
    assert "url(" not in page  # no stylesheet fetch (fonts, backgrounds)
    # Every key the plugins logged in `terms` has a figure; grid + 2 loss/α + 2 start-epoch + weight.
    terms = {key for line in _metrics(run_dir) for key in line["terms"]}
    assert {"wp/rel_norm", "bil/nu"} <= terms
    assert all(f'alt="term {html.escape(key)}"' in page for key in terms)
    assert page.count("<img") == 6 + len(terms)
    # The evaluation table holds the run's own figures, the protocol line, and the config its layers.
    results = json.loads((run_dir / "results.json").read_text())
    for key in ("distilled", "random_real"):
        assert f"{100 * results[key]['mean']:.2f} ± {100 * results[key]['std']:.2f} %" in page
    assert "protocol — distillkit run: 2 nets × 10 epochs" in page
    assert re.search(r"<td>distill\.iterations</td><td[^>]*>4</td><td>command line</td>", page)
    assert "<td>wp</td><td>distillkit</td>" in page  # plugin name, package, version
    assert ">finished<" in page


def test_evaluate_adds_cross_architecture_rows_and_refreshes_the_report(run_dir: Path, tmp_path) -> None:
    copy = _copy(run_dir, tmp_path)
    before = (copy / "report.html").read_text()
    result = invoke("evaluate", copy, *EVALUATE_OTHER)
    assert result.exit_code == 0, result.output
    page = (copy / "report.html").read_text()
    assert "cross-architecture" not in before and "cross-architecture" in page
    assert "<td>convnet-w16-d1</td>" in page
    assert re.search(r"distillkit evaluate, [0-9T:+-]+: 1 nets", page)


def test_a_failed_report_is_a_warning_and_keeps_the_evaluation(run_dir: Path, tmp_path) -> None:
    copy = _copy(run_dir, tmp_path)
    (copy / "report.html").unlink()
    (copy / "report.html").mkdir()  # the page cannot be written over a folder
    result = invoke("evaluate", copy, *EVALUATE_OTHER)
    assert result.exit_code == 0, result.output
    assert "Warning: report.html was not written" in result.output and "Traceback" not in result.output
    assert "convnet-w16-d1" in json.loads((copy / "evaluation.json").read_text())[-1]["models"]


def test_everything_read_from_files_is_escaped(run_dir: Path, tmp_path) -> None:
    copy = _copy(run_dir, tmp_path)
    evil = "<script>alert(1)</script>"
    recorded = json.loads((copy / "config.json").read_text())
    recorded["sources"]["distill.iterations"] = evil
    (copy / "config.json").write_text(json.dumps(recorded))
    meta = json.loads((copy / "synthetic.json").read_text())
    meta["environment"]["torch"] = evil
    (copy / "synthetic.json").write_text(json.dumps(meta))  # the checksum covers the tensors only
    (copy / "run.json").unlink()  # so the environment comes from synthetic.json
    lines = (copy / "metrics.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["terms"][evil] = 1.0
    first["rollbacks"] = [evil]
    (copy / "metrics.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    page = render(collect(copy), figures=False)
    assert "<script" not in page
    assert page.count(html.escape(evil)) >= 4  # config source, environment, term column, rollback


def test_a_run_still_going_is_reported_not_crashed_on(run_dir: Path, tmp_path) -> None:
    """Only config, invocation and half a metrics file: the rest reads "not recorded"."""
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("config.json", "invocation.json"):
        shutil.copy(run_dir / name, copy / name)
    text = (run_dir / "metrics.jsonl").read_text()
    (copy / "metrics.jsonl").write_text(text[: len(text) - 40])  # the last line cut mid-way
    fd = os.open(copy / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the running process holds it
        result = invoke("report", copy)
        assert result.exit_code == 0, result.output
    finally:
        os.close(fd)
    page = (copy / "report.html").read_text()
    assert ">running (another process is writing this run directory)<" in page
    assert "not recorded (no synthetic.json" in page
    assert "not recorded (no results.json): no evaluation yet" in page
    assert "metrics.jsonl: 1 line(s) that are not JSON objects were skipped" in page
    assert "3 of 4" in page  # iterations done of planned
    assert "stage timings are written when the run finishes" in page


def test_a_folder_that_is_not_a_run_is_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    one_line_error(invoke("report", tmp_path), 2, "is not a run directory")
    one_line_error(invoke("report", tmp_path / "notes.txt"), 2, "is not a run directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_corrupt_synthetic_set_is_not_recorded_not_a_crash(run_dir: Path, tmp_path) -> None:
    copy = _copy(run_dir, tmp_path)
    data = bytearray((copy / "synthetic.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "synthetic.safetensors").write_bytes(bytes(data))
    page = render(collect(copy), figures=False)
    assert "not recorded (" in page and "checksum mismatch" in page


def test_without_matplotlib_the_report_has_tables_and_says_how_to_get_plots(
    run_dir: Path, tmp_path, monkeypatch
) -> None:
    copy = _copy(run_dir, tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    result = invoke("report", copy)
    assert result.exit_code == 0, result.output
    assert f"tables instead of plots; for plots: {PLOTS_HINT}" in result.output
    page = (copy / "report.html").read_text()
    assert html.escape(PLOTS_HINT) in page
    assert page.count("<img") == 1  # the synthetic set only
    assert "<h3>Per iteration</h3>" in page and "<th>wp/rel_norm</th>" in page
    assert "<th>mean matching loss</th>" in page


def test_without_matplotlib_ablate_skips_its_chart(tmp_path, monkeypatch) -> None:
    from distillkit.ablate_report import chart

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert chart({"arms": []}, tmp_path / "ablation.png") is False
    assert not (tmp_path / "ablation.png").exists()


def test_no_report_skips_the_page(tmp_path: Path) -> None:
    result = invoke("run", *QUICK, "--out", tmp_path / "run", "--no-report", "--quiet")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "results.json").exists() and not (tmp_path / "run" / "report.html").exists()
