#!/usr/bin/env bash
# The whole tiny study under another seed: clone this repository's committed state into a new folder,
# set the study's one seed (conf/common.yaml: weights' initialisation, training data and order, the
# dev/test split, every resample), run `dvc repro` of every report stage there (not the paper), and
# leave the headline metrics in <folder>/seed<N>/reports. Run it in the environment setup.sh made.
# Usage: bash scripts/seed_study.sh SEED [folder]      (then: python scripts/seed_ranges.py FOLDERS...)
set -euo pipefail
seed=${1:?usage: seed_study.sh SEED [folder]}
[[ "$seed" =~ ^[0-9]+$ ]] || { echo "seed_study.sh: seed must be a whole number, got '$seed'" >&2; exit 2; }
repo="$(cd "$(dirname "$0")/.." && pwd)"
where="${2:-$(mktemp -d /tmp/paramscope-seed.XXXXXX)}/seed$seed"
git clone --quiet "$repo" "$where"
cd "$where"
sed -i "s/^seed: 0$/seed: $seed/" conf/common.yaml
grep -q "^seed: $seed$" conf/common.yaml || { echo "seed_study.sh: conf/common.yaml has no 'seed: 0' line" >&2; exit 1; }
export PYTHONPATH="$where/src${PYTHONPATH:+:$PYTHONPATH}"  # this clone's code, whatever is installed
start=$SECONDS
dvc repro aggregate report-transplant report-structure report-optimize report-vps >"$where.log" 2>&1 \
  || { tail -5 "$where.log"; exit 1; }
echo "seed $seed: dvc repro of the report stages $((SECONDS - start)) s in $where (log $where.log)"
