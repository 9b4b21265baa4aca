"""Batched evaluation against one network at a time: the figures of docs/performance.md.

Usage:
    python examples/benchmarks/batched_eval.py steps [--threads 1,2] [--networks 5]
        [--dataset fashion-mnist|digits] [--ipc 10] [--vmap] [--device cpu|cuda]
    python examples/benchmarks/batched_eval.py evaluate [--threads 2] [--runs 5] [--epochs 300]
        [--dataset fashion-mnist|digits] [--ipc 10] [--device cpu|cuda]

``steps`` times one epoch of training (ipc × 10 random images, batches of 256, DSA, SGD) of K
networks of the dataset's preset model (fmnist-cpu: ``convnet-w32``; digits: ``convnet-w32-d2``),
interleaved: one after another (``torch.optim.SGD``, as ``train_on_set``), packed
(distillkit.ensemble: grouped convolutions) and, with ``--vmap``, ``torch.func`` (``vmap`` of
``grad`` over ``stack_module_state``, the alternative that was not kept). ``evaluate`` times whole
evaluations of one random ipc-sized set against the real test set with ``evaluate.parallel`` off
and on, then of two such sets in one packed batch (2 × runs networks) against the two one after
another. Every figure is printed with the load average before and after.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, stack_module_state, vmap

from distillkit.config import EvaluateConfig
from distillkit.data.augment import DSA
from distillkit.data.datasets import load_dataset
from distillkit.ensemble import Member, PackedSGD, pack, train_packed
from distillkit.evaluate import EvalSet, evaluate_set, evaluate_sets


@dataclasses.dataclass(frozen=True)
class Setting:
    """A dataset's image shape and its preset's model and augmentation."""

    dataset: str
    model: str
    augment: str
    shape: tuple[int, int, int]
    classes: int = 10

    def make(self, name: str, seed: int) -> torch.nn.Module:
        """As ``runtime.model_factory``: seeded, the global RNG left alone."""
        from distillkit.models import build_model

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_model(name, self.shape[0], self.classes, self.shape[1:])

    def random_set(self, ipc: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """ipc × classes normalised random images (a synthetic set's statistics) and balanced labels."""
        generator = torch.Generator().manual_seed(seed)
        count = ipc * self.classes
        return torch.randn(count, *self.shape, generator=generator), torch.arange(count) % self.classes


SETTINGS = {
    "fashion-mnist": Setting(
        "fashion-mnist", "convnet-w32", "color_crop_cutout_flip_scale_rotate", (1, 28, 28)
    ),
    "digits": Setting("digits", "convnet-w32-d2", "color_crop_cutout_scale_rotate", (1, 8, 8)),
}


#: Where everything runs (``--device``); CUDA timings synchronise before reading the clock.
DEVICE = torch.device("cpu")


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def load() -> str:
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


# --- per-epoch timings -----------------------------------------------------------------------


def steps(setting: Setting, ipc: int, threads: list[int], networks: int, repeats: int, vmapped: bool) -> None:
    images, labels = (t.to(DEVICE) for t in setting.random_set(ipc, 0))
    cfg = EvaluateConfig(epochs=1)
    augment = DSA(setting.augment)
    runners: dict[str, Callable[[], Callable[[], None]]] = {
        "one at a time": lambda: _sequential(setting, images, labels, networks, cfg, augment),
        "packed": lambda: _packed(setting, images, labels, networks, cfg, augment),
    }
    if vmapped:
        runners["torch.func vmap"] = lambda: _vmapped(setting, images, labels, networks, cfg, augment)
    size = "×".join(map(str, setting.shape))
    for count in threads:
        torch.set_num_threads(count)
        times: dict[str, list[float]] = {name: [] for name in runners}
        epochs = {name: build() for name, build in runners.items()}
        for epoch in epochs.values():
            epoch()  # warm up
        sync()
        before = load()
        for _ in range(repeats):  # interleaved, so a change of load hits every variant alike
            for name, epoch in epochs.items():
                began = time.perf_counter()
                epoch()
                sync()
                times[name].append(time.perf_counter() - began)
        print(
            f"\n{setting.model}, {len(images)} images {size}, {networks} networks, {count} thread(s): "
            f"one epoch, median of {repeats} ({before} -> {load()})"
        )
        base = statistics.median(times["one at a time"])
        for name, values in times.items():
            median = statistics.median(values)
            print(f"  {name:<16} {median * 1000:8.1f} ms  ({median / base:.2f}× one at a time)")


def _sequential(setting, images, labels, networks, cfg, augment):
    from distillkit.evaluate import train_on_set

    models = [setting.make(setting.model, k).to(DEVICE) for k in range(networks)]
    generators = [torch.Generator(DEVICE).manual_seed(k) for k in range(networks)]

    def epoch() -> None:
        for model, generator in zip(models, generators, strict=True):
            train_on_set(model, images, labels, 0.01, cfg, augment, generator)

    return epoch


def _packed(setting, images, labels, networks, cfg, augment):
    packed = pack([setting.make(setting.model, k).to(DEVICE) for k in range(networks)], images[:8])
    members = [Member(images, labels, 0.01, torch.Generator(DEVICE).manual_seed(k)) for k in range(networks)]
    return lambda: train_packed(packed, members, cfg, augment)


def _vmapped(setting, images, labels, networks, cfg, augment):
    models = [setting.make(setting.model, k).to(DEVICE) for k in range(networks)]
    params, _ = stack_module_state(models)
    params = {name: p.detach().clone() for name, p in params.items()}
    base = copy.deepcopy(models[0]).to("meta")

    def loss(p, x, y):
        return F.cross_entropy(functional_call(base, p, (x,)), y)

    gradients = vmap(grad(loss))
    optimizer = PackedSGD(list(params.values()), [0.01] * networks, cfg.momentum, cfg.weight_decay)
    generators = [torch.Generator(DEVICE).manual_seed(k) for k in range(networks)]

    def epoch() -> None:
        orders = [
            torch.randperm(len(images), generator=g, device=DEVICE).split(cfg.batch_size) for g in generators
        ]
        for batch in zip(*orders, strict=True):
            xs = [augment(images[idx], g) for idx, g in zip(batch, generators, strict=True)]
            ys = [labels[idx] for idx in batch]
            grads = gradients(params, torch.stack(xs), torch.stack(ys))
            optimizer.step([grads[name] for name in params])

    return epoch


# --- whole evaluations -----------------------------------------------------------------------


def evaluate(setting: Setting, ipc: int, threads: int, runs: int, epochs: int) -> None:
    torch.set_num_threads(threads)
    data = load_dataset(setting.dataset)
    test = (data.test_images, data.test_labels)
    cfg = EvaluateConfig(runs=runs, epochs=epochs)
    augment, device, model = DSA(setting.augment), DEVICE, setting.model
    first, second = setting.random_set(ipc, 1), setting.random_set(ipc, 2)
    size = "×".join(map(str, setting.shape))
    print(f"{model}, {threads} thread(s), {runs} runs × {epochs} epochs, {len(first[0])} images {size}")
    for parallel in ("off", "on"):  # warm-up: first-call costs (kernel selection, allocations)
        warm = dataclasses.replace(cfg, parallel=parallel, epochs=2, runs=2)
        evaluate_set(
            setting.make, model, *first, 0.01, (test[0][:64], test[1][:64]), warm, augment, device, 0
        )
    for parallel in ("off", "on"):
        config = dataclasses.replace(cfg, parallel=parallel)
        sync()
        before, began = load(), time.perf_counter()
        result = evaluate_set(setting.make, model, *first, 0.01, test, config, augment, device, seed=10)
        sync()
        took = time.perf_counter() - began
        print(f"  one set, parallel={parallel}: {took:7.1f} s  ({before} -> {load()})  {result.runs}")
    sets = [EvalSet(*first, 0.01, 10), EvalSet(*second, 0.02, 20)]
    for parallel in ("off", "on"):
        config = dataclasses.replace(cfg, parallel=parallel)
        sync()
        before, began = load(), time.perf_counter()
        results = evaluate_sets(setting.make, model, sets, test, config, augment, device)
        sync()
        took = time.perf_counter() - began
        label = f"two sets ({2 * runs} nets), parallel={parallel}"
        print(f"  {label}: {took:7.1f} s  ({before} -> {load()})  {[r.runs for r in results]}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=("steps", "evaluate"))
    parser.add_argument("--dataset", choices=tuple(SETTINGS), default="fashion-mnist")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--threads", default="1,2", help="thread counts, e.g. 1,2 (evaluate: the first)")
    parser.add_argument("--networks", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--vmap", action="store_true", help="steps: also time torch.func")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=300)
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    threads = [int(t) for t in args.threads.split(",")]
    setting = SETTINGS[args.dataset]
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, device {DEVICE}, {load()}")
    if args.what == "steps":
        steps(setting, args.ipc, threads, args.networks, args.repeats, args.vmap)
    else:
        evaluate(setting, args.ipc, threads[0], args.runs, args.epochs)


if __name__ == "__main__":
    main()
