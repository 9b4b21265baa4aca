"""The host allocator setting: freed tensor memory is reused without new page faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# Five training steps of an expert-sized batch (256 images) after three to warm up; the minor page
# faults they cost. Its activations are 8-32 MiB tensors, allocated and freed every step.
PROBE = """
import json, resource, torch, torch.nn.functional as F
from distillkit.hostmemory import keep_freed_memory
from distillkit.models import build_model
mode = keep_freed_memory()
torch.manual_seed(0)
model = build_model("convnet-w32", 1, 10, (28, 28))
x, y = torch.randn(256, 1, 28, 28), torch.randint(10, (256,))
def step():
    F.cross_entropy(model(x), y).backward()
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(json.dumps({"mode": mode, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _probe(setting: str | None, tunables: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DISTILLKIT_MALLOC", "GLIBC_TUNABLES")}
    if setting is not None:
        env["DISTILLKIT_MALLOC"] = setting
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_freed_blocks_are_reused_without_page_faults() -> None:
    tuned, system = _probe(None), _probe("system")
    assert tuned["mode"] == "heap" and system["mode"] == "system"
    # glibc's own setting maps the 32 MiB blocks afresh (mmap) and returns the freed heap top to
    # the kernel, then faults it in again: measured ≈ 330 000 faults (≈ 1.3 GiB of pages) vs 0-1.
    # The heap may still grow once by a block (8 193 faults = 32 MiB, seen in CI) when
    # fragmentation differs, so the bound is a ratio: most of what was faulted is now reused.
    assert system["faults"] > 50_000
    assert tuned["faults"] * 10 < system["faults"]


def test_an_unknown_setting_leaves_the_allocator_alone() -> None:
    assert _probe("jemalloc-please")["mode"] == "system"


def test_runs_record_the_allocator_mode() -> None:
    from distillkit.runtime import environment

    assert environment()["host_allocator"] in ("heap", "system")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tunables are Linux's")
def test_the_tunables_give_a_process_that_never_calls_mallopt_the_same_heap() -> None:
    """As ``reference_bench.py --reference-allocator heap`` runs the reference."""
    from distillkit.hostmemory import glibc_tunables

    plain = _probe("system")
    tuned = _probe("system", tunables=glibc_tunables())
    assert plain["faults"] > 50_000 and tuned["faults"] * 10 < plain["faults"]
