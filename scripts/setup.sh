#!/usr/bin/env bash
# Install everything the study needs on a machine with only Python and pip.
set -euo pipefail
cd "$(dirname "$0")/.."

# The CPU build of torch first, so that nothing below pulls a multi-GB CUDA build.
python -m pip install --quiet --upgrade pip
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet -e '.[test]'

# LaTeX for the paper stage (Debian packages; needs root).
if ! command -v latexmk >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    latexmk texlive-latex-recommended texlive-fonts-recommended texlive-latex-extra >/dev/null
fi
echo "paramscope is installed; run: dvc repro"
