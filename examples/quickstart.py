"""The library API end to end: experts → distill (with a plugin object) → evaluate → save.

python examples/quickstart.py            # about a minute on 2 CPU cores
python examples/quickstart.py --tiny     # seconds (what the test suite runs)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import distillkit
from distillkit import api
from distillkit.context import InnerLossContext, RunContext


class ConstantInnerWeight:
    """A plugin defined inline: scale the student's inner loss by a constant.

    Passing an object to ``extra_plugins`` registers it without any entry point,
    which is the quickest way to try an idea in a notebook.
    """

    name = "constant-weight"

    def __init__(self, weight: float) -> None:
        self.weight = weight

    @distillkit.hookimpl
    def inner_loss_weight(self, run: RunContext, ctx: InnerLossContext) -> float:
        return self.weight


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="a seconds-long smoke budget")
    parser.add_argument("--out", type=Path, default=Path("runs/quickstart"))
    args = parser.parse_args()

    budget = {"distill.iterations": 50}
    if args.tiny:
        budget = {
            "experts.count": 1,
            "experts.epochs": 4,
            "distill.max_start_epoch": 2,
            "distill.syn_steps": 5,
            "distill.iterations": 3,
            "evaluate.runs": 1,
            "evaluate.epochs": 10,
        }
    # 1. Configuration: a preset, overrides, first-party plugins by name, our own object.
    config, host = distillkit.resolve_config(
        preset="digits",
        overrides={"device": "cpu", **budget},
        plugins=["bil"],
        extra_plugins=[ConstantInnerWeight(1.0)],
    )
    data = api.prepare_data(config.data)
    # 2. Experts (cached under ~/.cache/distillkit, or $DISTILLKIT_CACHE).
    store = api.train_experts(config, host, data)
    # 3. Distillation.
    out = api.prepare_run_dir(args.out, overwrite=True)
    result = api.distill(api.distill_job(config, host, data, store), out)
    api.save_distilled(out, config, host, data, result, store)
    # 4. Evaluation beside the random-real baseline.
    distilled = api.evaluate(config, data, result.images, result.labels, result.lr)
    real_x, real_y = api.random_real_set(config, data, api.resolve_device(config.device))
    baseline = api.evaluate(config, data, real_x, real_y, config.distill.lr_init)
    for label, results in (("distilled", distilled), ("random real", baseline)):
        res = next(iter(results.values()))
        print(f"{label:12s} {100 * res.mean:.1f} ± {100 * res.std:.1f} %  ({res.model})")
    images, _labels, lr, meta, _ = distillkit.load_synthetic(out)
    print(
        f"saved {len(images)} images (learned lr {lr:.4g}) with plugins "
        f"{[p['name'] for p in meta['plugins']]} to {out}"
    )


if __name__ == "__main__":
    main()
