"""The report in a real browser: headless Chromium draws a full page and requests nothing from anywhere.

The net log records every request the network stack sees; requests Chromium makes for itself
(time sync, component updates: initiator "not an origin") are told apart from the page's own,
and a control page that does fetch an image shows that the check catches page requests. Files
(``file:``) do not pass through the network stack, so the page's ``src``/``href`` values are
checked too: all ``data:`` URIs.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import TINY, invoke
from PIL import Image

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium; .ci/run does)"
)
#: Chromium's own background requests carry no page origin.
BROWSER_ITSELF = "not an origin"


def _render(page: Path, tmp: Path) -> tuple[Image.Image, list[str]]:
    """Screenshot ``page`` and return it with the URLs the page itself requested over the network."""
    shot, log = tmp / "shot.png", tmp / "net.json"
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp / 'profile'}",
        "--window-size=1280,2000",
        f"--screenshot={shot}",
        f"--log-net-log={log}",
        page.resolve().as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert shot.exists(), done.stderr[-2000:]
    return Image.open(shot).convert("RGB"), _page_requests(json.loads(log.read_text()))


def _page_requests(netlog: dict) -> list[str]:
    names = {number: name for name, number in netlog["constants"]["logEventTypes"].items()}
    return [
        event["params"]["url"]
        for event in netlog["events"]
        if names.get(event["type"]) == "URL_REQUEST_START_JOB"
        and "url" in event.get("params", {})
        and event["params"].get("initiator") != BROWSER_ITSELF
    ]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    quick = [*TINY, "--model", "convnet-w8-d1", "--set", "data.augment=none", "--plugins", "wp"]
    result = invoke("run", *quick, "--out", root / "run", "--experts", root / "store", "--quiet")
    assert result.exit_code == 0, result.output
    return root / "run" / "report.html"


def test_the_report_draws_a_full_page_and_fetches_nothing(report: Path, tmp_path: Path) -> None:
    page = report.read_text(encoding="utf-8")
    assert all(url.startswith("data:") for url in re.findall(r'(?:src|href)="([^"]*)"', page))
    shot, requested = _render(report, tmp_path)
    assert requested == []
    assert shot.size == (1280, 2000)
    colours = shot.getcolors(maxcolors=1 << 24)
    background = max(colours)[0]
    ink = 1 - background / (shot.width * shot.height)
    assert ink > 0.15, f"only {ink:.0%} of the page differs from its background"
    assert len(colours) > 200  # text, plots in several colours, the grey synthetic images
    # The first screen shows the grid of synthetic images: a near-black block (its border) exists.
    dark = sum(n for n, (r, g, b) in colours if r + g + b < 60)
    assert dark > 2000


def test_the_check_catches_a_page_that_fetches(tmp_path: Path) -> None:
    """The control: an image from the network shows up as a page request."""
    control = tmp_path / "control.html"
    control.write_text('<!DOCTYPE html><link rel="icon" href="data:,"><img src="http://127.0.0.1:9/x.png">')
    _, requested = _render(control, tmp_path)
    assert requested == ["http://127.0.0.1:9/x.png"]
