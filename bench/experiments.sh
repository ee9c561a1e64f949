#!/usr/bin/env bash
# The recipe comparison of docs/experiments.md: train each recipe in configs/experiments/
# on a prepared corpus, evaluate it, and print the table.
#
#   poetvae prep ../shared/data/tang_quatrains.txt ../shared/data/song_quatrains.txt -o prep/ts
#   bash bench/experiments.sh prep/ts runs/experiments [recipe ...]
set -euo pipefail
prep=$1
out=$2
shift 2
recipes=${*:-freebits cyclical-fb-wd lm vanilla linear cyclical worddrop bnvae}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
for r in $recipes; do
  poetvae train "$prep" -o "$out/$r" -c "$here/configs/experiments/$r.toml" --overwrite > "$out/$r.train.log" 2>&1
  poetvae evaluate -m "$out/$r" --iw 100 --samples 1000 --json > "$out/$r.eval.json"
done
python "$here/bench/experiments_table.py" "$out"
