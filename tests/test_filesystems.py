"""Real full and read-only filesystems (small tmpfs mounts): one line, the path, nothing lost.

Mounting needs root (or CAP_SYS_ADMIN); elsewhere these tests skip with the reason.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TINY, invoke, one_line_error


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here (needs root): {done.stderr.strip() or done.returncode}")


@pytest.fixture
def tmpfs(tmp_path) -> Iterator[Path]:
    """A 1 MiB tmpfs; unmounted afterwards."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    point = tmp_path / "tmpfs"
    point.mkdir()
    mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(point))
    yield point
    unmount(point)


def unmount(point: Path) -> None:
    """Undo every mount stacked on ``point`` (a read-only bind sits on the tmpfs)."""
    for _ in range(4):  # a bind mount of a folder on the same disk is not seen by os.path.ismount
        if subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False).returncode != 0:
            break


def fill(filesystem: Path, leave: int) -> None:
    """Write a filler file so that only about ``leave`` bytes stay free."""
    free = shutil.disk_usage(filesystem).free
    (filesystem / "filler").write_bytes(b"\0" * max(free - leave, 0))


def make_read_only(folder: Path) -> None:
    mount("--bind", str(folder), str(folder))
    mount("-o", "remount,bind,ro", str(folder))


@pytest.fixture
def finished(tmp_path) -> Path:
    out = tmp_path / "done"
    result = invoke("run", *TINY, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    return out


def test_a_full_disk_stops_a_run_with_the_path_and_keeps_the_earlier_run(tmpfs, finished):
    shutil.copytree(finished, tmpfs / "done", ignore=shutil.ignore_patterns(".lock"))
    before = digests(tmpfs / "done")
    fill(tmpfs, leave=2048)
    result = invoke("run", *TINY, "--out", tmpfs / "new", "--quiet")
    one_line_error(result, 1, f"No space left on device: {tmpfs}")
    assert digests(tmpfs / "done") == before
    assert not list(tmpfs.rglob("*.tmp")), "a temporary file was left on the full disk"


def test_a_full_disk_while_evaluating_keeps_the_run_files(tmpfs, finished):
    shutil.copytree(finished, tmpfs / "done", ignore=shutil.ignore_patterns(".lock"))
    before = digests(tmpfs / "done")
    fill(tmpfs, leave=0)
    result = invoke("evaluate", tmpfs / "done", "--eval-models", "convnet-w16-d2", "--quiet", *TINY)
    one_line_error(result, 1, "No space left on device")
    assert digests(tmpfs / "done") == before


def test_a_full_cache_stops_expert_training_without_a_half_written_expert(tmpfs):
    fill(tmpfs, leave=16 * 1024)
    result = invoke("experts", *TINY, "--quiet", env={"DISTILLKIT_CACHE": str(tmpfs / "cache")})
    one_line_error(result, 1, f"No space left on device: {tmpfs / 'cache'}")
    assert not list(tmpfs.rglob("*.tmp"))
    assert not list(tmpfs.rglob("expert_000.safetensors"))


def test_a_read_only_cache_that_holds_the_experts_is_used(tmp_path):
    cache = tmp_path / "cache"
    first = invoke("run", *TINY, "--out", tmp_path / "first", "--quiet", env={"DISTILLKIT_CACHE": str(cache)})
    assert first.exit_code == 0, first.output
    make_read_only(cache)
    try:
        again = invoke("run", *TINY, "--out", tmp_path / "again", env={"DISTILLKIT_CACHE": str(cache)})
        assert again.exit_code == 0, again.output
        assert "reusing" in again.output or "experts 0.0s" in again.output, again.output
    finally:
        unmount(cache)


def test_a_read_only_output_location_is_bad_input(tmpfs):
    make_read_only(tmpfs)
    result = invoke("run", *TINY, "--out", tmpfs / "run", "--quiet")
    one_line_error(result, 2, "Read-only file system")
    assert not (tmpfs / "run").exists()
