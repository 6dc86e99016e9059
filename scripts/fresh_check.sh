#!/usr/bin/env bash
# A newcomer's first run, reproduced: clone this repository's committed state into a new folder, make a
# new virtual environment, run the README's two commands there, and report each one's time and exit
# status. Usage: bash scripts/fresh_check.sh [--skip-tests] [folder]   (default folder: a new temp dir)
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
run_tests=1
if [[ "${1:-}" == "--skip-tests" ]]; then run_tests=0; shift; fi
where="${1:-$(mktemp -d /tmp/paramscope-fresh.XXXXXX)}"

git clone --quiet "$repo" "$where/paramscope" || exit 1
cd "$where/paramscope"
python3 -m venv "$where/venv" && source "$where/venv/bin/activate" || exit 1
echo "fresh clone of $(git rev-parse --short HEAD) in $PWD, venv $VIRTUAL_ENV ($(python --version))"

timed() {  # timed LABEL COMMAND...: run it, log to $where/LABEL.log, print status and wall time
  local label=$1; shift
  local start=$SECONDS
  # each log line carries the seconds since the command started, so the log shows where time goes
  "$@" 2>&1 | while IFS= read -r line; do printf '%5d %s\n' $((SECONDS - start)) "$line"; done >"$where/$label.log"
  local rc=${PIPESTATUS[0]}
  printf '%-8s exit %d  %4d s  (%s; log %s)\n' "$label" "$rc" $((SECONDS - start)) "$*" "$where/$label.log"
  return $rc
}

timed setup bash scripts/setup.sh || exit 1
timed repro dvc repro || { tail -5 "$where/repro.log"; exit 1; }
if ((run_tests)); then
  timed tests python -m pytest || { tail -5 "$where/tests.log"; exit 1; }
  tail -1 "$where/tests.log"
fi
