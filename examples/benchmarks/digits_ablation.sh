#!/usr/bin/env bash
# Digits default budget: plain MTT, each AST plugin alone, and all five, over several seeds.
# Usage: examples/benchmarks/digits_ablation.sh OUT_DIR [SEEDS...]   (default seeds: 0 1 2)
# Prints one markdown row per arm: distilled accuracy per seed (mean ± std over 5 nets) and the mean.
set -euo pipefail
out="${1:?usage: digits_ablation.sh OUT_DIR [SEEDS...]}"
shift
seeds=("${@:-0 1 2}")
[[ $# -gt 0 ]] || seeds=(0 1 2)
arms=("plain:" "smooth:smooth" "kmeans-init:kmeans-init" "bil:bil" "itm:itm" "wp:wp"
      "five:smooth,kmeans-init,bil,itm,wp")
mkdir -p "$out"
echo "| arm | $(printf 'seed %s | ' "${seeds[@]}")mean of seeds |"
echo "|---|$(printf -- '---|%.0s' "${seeds[@]}")---|"
for spec in "${arms[@]}"; do
    name="${spec%%:*}" plugins="${spec#*:}"
    row="| $name |"
    for seed in "${seeds[@]}"; do
        dir="$out/$name-seed$seed"
        distillkit run --plugins "$plugins" --seed "$seed" --quiet --overwrite --out "$dir" >"$dir.log" 2>&1 ||
            { cat "$dir.log"; exit 1; }
        row+=" $(python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['distilled']
print(f\"{100*r['mean']:.2f} ± {100*r['std']:.2f}\")" "$dir/results.json") |"
    done
    mean=$(python3 -c "import json,sys,statistics as s
print(f'{100*s.mean(json.load(open(p))[\"distilled\"][\"mean\"] for p in sys.argv[1:]):.2f}')" \
        $(for seed in "${seeds[@]}"; do echo "$out/$name-seed$seed/results.json"; done))
    echo "$row $mean |"
done
