#!/usr/bin/env bash
# Plain MTT vs all five AST plugins on FashionMNIST at the fmnist-cpu budget (ipc 1 and 10).
# Usage: examples/benchmarks/fmnist_plugins.sh OUT_DIR [plain|ast|both] [extra distillkit options...]
# Results land in OUT_DIR/{plain,ast}-ipc{1,10}/results.json; experts are shared per arm.
set -euo pipefail
out="${1:?usage: fmnist_plugins.sh OUT_DIR [plain|ast|both] [options...]}"
arm="${2:-both}"
shift $(($# >= 2 ? 2 : 1))
extra=("$@")

run() { # arm-name plugins ipc
    local log="$out/$1-ipc$3.txt"
    distillkit run --preset fmnist-cpu --ipc "$3" --plugins "$2" --quiet --overwrite \
        --experts "$out/experts-$1" --out "$out/$1-ipc$3" "${extra[@]}" >"$log" 2>&1 ||
        { cat "$log"; exit 1; }
    tail -n 12 "$log"
}

mkdir -p "$out"
if [[ "$arm" != ast ]]; then run plain "" 1; run plain "" 10; fi
if [[ "$arm" != plain ]]; then
    run ast smooth,kmeans-init,bil,itm,wp 1
    run ast smooth,kmeans-init,bil,itm,wp 10
fi
