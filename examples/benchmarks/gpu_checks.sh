#!/usr/bin/env bash
# The GPU checks of docs/performance.md as one command, for a GPU machine lent for minutes.
#
# Usage: bash examples/benchmarks/gpu_checks.sh FASHION_MNIST_DIR OUT_DIR [DEVICE]
#
# Run from the checkout's root. DEVICE defaults to cuda; `cpu` runs the same steps (the CUDA tests
# then skip) to check the script itself. The steps, each under its own time limit so that one
# hang cannot take the whole lease, each writing one file to OUT_DIR (8 files at most):
#   environment.txt   the GPU, torch, CUDA and cuDNN versions, and the pip install of this checkout
#   tests.log         the device-dependent tests (`-k cuda`): packed evaluation and experts against
#                     one at a time, constant- against standard-memory gradients, instance norm's
#                     and the pool's derivatives, and whole `distillkit run`s with the five AST plugins
#   experts.log       8 FashionMNIST experts × 1 epoch, one at a time and as one packed group
#                     (`batched_experts.py`): s per expert-epoch of each, their ratio, the matmul rate
#   eval_steps.log    one epoch of K evaluation networks, one at a time and packed (`batched_eval.py`)
#   bench.log         `distillkit bench --preset fmnist-cpu` at ipc 10 and ipc 1 on one 3-epoch expert,
#   bench_ipc10.json  and their figures: s/it, peak memory, fraction of the matmul rate, and (ipc 10)
#   bench_ipc1.json   the throughput of one fresh expert epoch
#   bench_baseline_ipc10.json  with BASELINE=DIR (a work tree of an earlier distillkit, e.g. made by
#                     `git worktree add`, or `git archive` into a folder): the same ipc 10 benchmark
#                     by that tree (PYTHONPATH), on its own expert, for a before/after on one machine
# A step that fails is noted in its file and the next one runs; the exit status counts the failures.
# QUICK=1 caps expert epochs at 5 steps and times 2 iterations after 1, to check the script on a CPU
# (not the baseline's, which may not know the cap).
set -uo pipefail

data=${1:?usage: gpu_checks.sh FASHION_MNIST_DIR OUT_DIR [DEVICE]}
out=${2:?usage: gpu_checks.sh FASHION_MNIST_DIR OUT_DIR [DEVICE]}
device=${3:-cuda}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 COLUMNS=160  # whole tables in the logs
failed=0
quick=() timing=()
if [ "${QUICK:-0}" = 1 ]; then
    quick=(--set experts.max_steps_per_epoch=5)
    timing=(--warmup 1 --window 2)
fi

step() {  # step NAME SECONDS FILE COMMAND...: run COMMAND with a time limit, its output to FILE
    local name=$1 limit=$2 file=$3
    shift 3
    echo "[$(date +%H:%M:%S)] $name (at most ${limit} s)"
    local began=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >>"$out/$file" 2>&1
    local rc=$?
    echo "# $name: exit $rc after $((SECONDS - began)) s" >>"$out/$file"
    echo "[$(date +%H:%M:%S)] $name: exit $rc after $((SECONDS - began)) s"
    [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

{
    date -u
    nvidia-smi -L 2>&1 || echo "no nvidia-smi"
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
"cudnn", torch.backends.cudnn.version(), "available", torch.cuda.is_available())'
} >"$out/environment.txt" 2>&1
# --no-build-isolation and --no-deps: such a machine reaches no package index; its image holds
# the dependencies.
step install 120 environment.txt python3 -m pip install -q --no-deps --no-build-isolation -e .

step tests 240 tests.log python3 -m pytest -q -rs -p no:cacheprovider -k cuda tests

store=$(mktemp -d)/experts
step experts 180 experts.log python3 examples/benchmarks/batched_experts.py --device "$device" \
    --experts 8 --epochs 1 --data-path "$data" "${quick[@]}"
step eval-steps 120 eval_steps.log python3 examples/benchmarks/batched_eval.py steps --device "$device" \
    --networks 10 --repeats 5
# One 3-epoch expert, trained into $store by the first benchmark and read by the second.
short=(--preset fmnist-cpu --device "$device" --data-path "$data" --experts "$store"
    --set experts.count=1 --set experts.epochs=3 --set distill.max_start_epoch=1
    "${quick[@]}" "${timing[@]}")
step bench-ipc10 180 bench.log python3 -m distillkit bench "${short[@]}" --ipc 10 \
    --json-out "$out/bench_ipc10.json"
step bench-ipc1 120 bench.log python3 -m distillkit bench "${short[@]}" --ipc 1 \
    --skip-experts-throughput --json-out "$out/bench_ipc1.json"
if [ -n "${BASELINE:-}" ]; then  # the same ipc 10 benchmark by an earlier tree, for before/after
    step baseline-ipc10 240 bench.log env PYTHONPATH="$BASELINE" python3 -m distillkit bench \
        --preset fmnist-cpu --device "$device" --data-path "$data" --experts "$store-baseline" \
        --set experts.count=1 --set experts.epochs=3 --set distill.max_start_epoch=1 --ipc 10 \
        --skip-experts-throughput "${timing[@]}" --json-out "$out/bench_baseline_ipc10.json"
fi

echo "$failed step(s) failed; files in $out"
exit "$failed"
