#!/usr/bin/env bash
# Digits default budget: plain MTT, each AST plugin alone, and all five, over several seeds.
# Usage: [JOBS=N] examples/benchmarks/digits_ablation.sh OUT_DIR [SEEDS...]   (default seeds: 0 1 2)
# JOBS runs go in parallel (each with OMP_NUM_THREADS=2); runs are deterministic per seed, so
# parallelism changes timings only. Prints one markdown row per arm: distilled accuracy per seed
# (mean ± std over 5 nets) and the mean over seeds, plus the random-real baseline.
set -euo pipefail
out="${1:?usage: digits_ablation.sh OUT_DIR [SEEDS...]}"
shift
seeds=("$@")
[[ ${#seeds[@]} -gt 0 ]] || seeds=(0 1 2)
arms=("plain:none" "smooth:smooth" "kmeans-init:kmeans-init" "bil:bil" "itm:itm" "wp:wp"
      "five:smooth,kmeans-init,bil,itm,wp")
mkdir -p "$out"

one() { # arm-name plugins seed
    local dir="$out/$1-seed$3"
    local plugins="$2"
    [[ "$plugins" != none ]] || plugins=""
    OMP_NUM_THREADS=2 distillkit run --plugins "$plugins" --seed "$3" --quiet --overwrite --out "$dir" \
        --device cpu >"$dir.log" 2>&1 || { cat "$dir.log" >&2; return 1; }
}
export -f one
export out
for spec in "${arms[@]}"; do
    for seed in "${seeds[@]}"; do echo "${spec%%:*} ${spec#*:} $seed"; done
done | xargs -P "${JOBS:-1}" -L 1 bash -c 'one "$0" "$1" "$2"' 2>&1 | tail -n 20

python3 - "$out" "${seeds[@]}" <<'PY'
import json, statistics, sys
out, seeds = sys.argv[1], sys.argv[2:]
arms = ["plain", "smooth", "kmeans-init", "bil", "itm", "wp", "five"]
print("| arm | " + " | ".join(f"seed {s}" for s in seeds) + " | mean of seeds |")
print("|---|" + "---|" * len(seeds) + "---|")
for arm in arms:
    rows = [json.load(open(f"{out}/{arm}-seed{s}/results.json")) for s in seeds]
    cells = [f"{100*r['distilled']['mean']:.2f} ± {100*r['distilled']['std']:.2f}" for r in rows]
    mean = statistics.mean(r["distilled"]["mean"] for r in rows)
    print(f"| {arm} | " + " | ".join(cells) + f" | {100*mean:.2f} |")
real = [json.load(open(f"{out}/plain-seed{s}/results.json"))["random_real"] for s in seeds]
cells = [f"{100*r['mean']:.2f} ± {100*r['std']:.2f}" for r in real]
print("| random real | " + " | ".join(cells) + f" | {100*statistics.mean(r['mean'] for r in real):.2f} |")
PY
