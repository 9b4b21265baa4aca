"""Where a distillation process's memory goes: RSS and peak RSS after each stage.

Usage: python examples/benchmarks/memory_stages.py STORE [PRESET] [KEY=VALUE ...]
e.g.   python examples/benchmarks/memory_stages.py runs/fmnist-experts fmnist-cpu distill.ipc=1

Runs the stages ``distillkit distill`` runs (import torch, load the data, build the
engine, release the real images, iterate) in this one fresh process and prints
``/proc/self/status`` after each, so the figures in docs/performance.md's
"Where the memory goes" can be reproduced. Linux only (it reads /proc).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def status() -> dict[str, int]:
    """VmHWM, VmRSS, RssAnon and RssFile of this process, in MiB."""
    text = Path("/proc/self/status").read_text()
    fields = ("VmHWM", "VmRSS", "RssAnon", "RssFile")
    return {f: int(re.search(rf"^{f}:\s+(\d+) kB", text, re.MULTILINE).group(1)) // 1024 for f in fields}


def report(stage: str) -> None:
    s = status()
    peak = f"peak {s['VmHWM']:>6} MiB"
    parts = f"rss {s['VmRSS']:>6}   anon {s['RssAnon']:>6}   file {s['RssFile']:>6}"
    print(f"{stage:<22} {peak}   {parts}")


def main(argv: list[str]) -> None:
    report("start")
    import torch  # noqa: F401  (measured on its own)

    report("import torch")
    from distillkit import api
    from distillkit.experts.store import TrajectoryStore
    from distillkit.resolve import resolve_config

    store_dir, preset, *sets = argv
    overrides = dict(item.split("=", 1) for item in sets)
    config, host = resolve_config(preset, None, overrides, None)
    report("distillkit imported")
    data = api.prepare_data(config.data)
    report("data loaded")
    distiller, _ = api.build_distiller(
        api.distill_job(config, host, data, TrajectoryStore.open(Path(store_dir)))
    )
    report("engine built")
    data.release_images()
    report("real images released")
    for i in range(5):
        distiller.step()
        report(f"iteration {i}")


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    main(args if len(args) > 1 else [*args, "fmnist-cpu"])
