#!/usr/bin/env bash
# Expert smoothness on FashionMNIST (the AST paper's Fig. 4 / Table 6 comparison): trains one store
# per recipe — plain SGD, momentum only, smooth without its gradient penalty (clipped CE only),
# smooth — then writes the table, the per-epoch JSON and the plot.
#
#   PRESET   expert budget (default fmnist-ref: 1 expert × 6 epochs, seed 0; fmnist-cpu: 4 experts)
#   RECIPES  which stores to train (default "plain momentum clip-only smooth")
#   FIGURE   output path without extension (default docs/img/expert-smoothness-fmnist)
#
# At one thread per store, fmnist-ref takes about 10, 10, 8 and 50 minutes; fmnist-cpu four times that.
# Usage (from the repository root):
#   examples/benchmarks/fmnist_smoothness.sh STORES_DIR [extra experts options...]
#   PRESET=fmnist-cpu RECIPES="plain momentum smooth" FIGURE=docs/img/expert-smoothness-fmnist-cpu \
#     examples/benchmarks/fmnist_smoothness.sh STORES_DIR --nproc 2
set -euo pipefail
out="${1:?usage: fmnist_smoothness.sh STORES_DIR [options...]}"
shift
extra=("$@")
preset="${PRESET:-fmnist-ref}"
read -r -a recipes <<<"${RECIPES:-plain momentum clip-only smooth}"
figure="${FIGURE:-docs/img/expert-smoothness-fmnist}"

options() { # the experts options of one recipe
    case "$1" in
    plain) ;;
    momentum) # the recipe `smooth` brings, without the plugin
        echo --set experts.momentum=0.9 --set experts.lr_decay=ast-code --set experts.lr_decay_factor=0.6 ;;
    clip-only) echo --plugins smooth --set smooth.gp_weight=0 ;;
    smooth) echo --plugins smooth ;;
    *) echo "unknown recipe: $1" >&2 && exit 2 ;;
    esac
}

stores=()
for recipe in "${recipes[@]}"; do
    read -r -a opts <<<"$(options "$recipe")"
    distillkit experts --preset "$preset" --quiet --out "$out/fmnist-$recipe" --set experts.eval_every=1 \
        "${opts[@]}" "${extra[@]}"
    stores+=("$out/fmnist-$recipe")
done

COLUMNS=160 distillkit inspect-experts "${stores[@]}" --plot "$figure.png"
distillkit inspect-experts "${stores[@]}" --json >"$figure.json"
