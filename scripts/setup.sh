#!/usr/bin/env bash
# Install everything the study needs on a machine with only Python and pip.
set -euo pipefail
cd "$(dirname "$0")/.."

# The CPU build of torch first, so that nothing below pulls a multi-GB CUDA build.
python -m pip install --quiet --upgrade pip
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet -e '.[test]'

# LaTeX for the paper stage, from Debian (needs root). Every listed package is checked, not just
# latexmk: a machine with an older, partial install gets what it lacks.
mapfile -t wanted < <(grep -v '^\s*\(#\|$\)' scripts/debian-packages.txt)
missing=()
for pkg in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "installing from Debian: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "paramscope is installed; run: dvc repro"
