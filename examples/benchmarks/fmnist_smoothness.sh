#!/usr/bin/env bash
# Expert smoothness on FashionMNIST at the fmnist-ref expert budget (1 expert × 6 epochs, seed 0):
# plain SGD, momentum only, smooth without its gradient penalty (clipped CE only), smooth (the AST
# paper's Fig. 4 / Table 6 comparison). Trains the four stores (about 10, 10, 8 and 50 minutes at
# one thread), then writes the table, docs/img/expert-smoothness-fmnist.{png,json}.
# Usage (from the repository root): examples/benchmarks/fmnist_smoothness.sh STORES_DIR [extra experts options...]
set -euo pipefail
out="${1:?usage: fmnist_smoothness.sh STORES_DIR [options...]}"
shift
extra=("$@")
momentum=(--set experts.momentum=0.9 --set experts.lr_decay=ast-code --set experts.lr_decay_factor=0.6)

train() { # name, then distillkit experts options
    local name="$1"
    shift
    distillkit experts --preset fmnist-ref --quiet --out "$out/$name" "$@" "${extra[@]}"
}

train fmnist-plain
train fmnist-momentum "${momentum[@]}"      # the recipe `smooth` brings, without the plugin
train fmnist-clip-only --plugins smooth --set smooth.gp_weight=0
train fmnist-smooth --plugins smooth

stores=("$out"/fmnist-{plain,momentum,clip-only,smooth})
COLUMNS=160 distillkit inspect-experts "${stores[@]}" --plot docs/img/expert-smoothness-fmnist.png
distillkit inspect-experts "${stores[@]}" --json >docs/img/expert-smoothness-fmnist.json
