"""The headline metrics of several runs of the study side by side, with their range across runs.

Each argument is a study folder (a clone after `dvc repro`, e.g. from scripts/seed_study.sh); its
numbers are read from reports/metrics.json and reports/<topic>/metrics.json, the files `dvc metrics
show` reads. Numeric metrics whose names match --keys (regular expressions) are printed one per line:
the value in each folder, then min-max.

    python scripts/seed_ranges.py . /tmp/s/seed1 /tmp/s/seed2 [--keys 'acc/test/' 'indist']
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

# What README's findings paragraph reports, by metric name.
HEADLINE = [
    r"^acc/test/(scratch|gen2|tuned)/",
    r"^atlas/",
    r"^pairs/",
    r"^optimize/",
    r"^transplant/.*(recovery|vs_random)",
    r"^structure/scratch/indist(_value|_drift)?$",
    r"^structure/scratch/drift_rms_over_twin$",
    r"^structure/scratch/.*sparsity_dev$",
    r"^vps/",
]


def flat(prefix: str, value, out: dict[str, float]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            flat(f"{prefix}/{k}" if prefix else str(k), v, out)
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        out[prefix] = float(value)


def study_metrics(folder: Path) -> dict[str, float]:
    reports = folder / "reports"
    files = [reports / "metrics.json", *sorted(reports.glob("*/metrics.json"))]
    if not files[0].exists():
        sys.exit(f"seed_ranges.py: {files[0]} not found; run `dvc repro` in {folder} first")
    out: dict[str, float] = {}
    for f in files:
        if f.exists():
            topic = "" if f.parent == reports else f.parent.name
            flat(topic, json.loads(f.read_text()), out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--keys", nargs="+", default=HEADLINE, help="regular expressions on metric names")
    args = ap.parse_args()
    runs = [study_metrics(f) for f in args.folders]
    patterns = [re.compile(k) for k in args.keys]
    names = sorted({k for r in runs for k in r if any(p.search(k) for p in patterns)})
    width = max((len(n) for n in names), default=10)
    print(f"{'metric':<{width}}  " + "  ".join(f"{str(f)[-12:]:>12}" for f in args.folders) + "   range")
    for name in names:
        values = [r.get(name) for r in runs]
        shown = "  ".join(f"{v:12.4g}" if v is not None else f"{'-':>12}" for v in values)
        known = [v for v in values if v is not None]
        print(f"{name:<{width}}  {shown}   {min(known):.4g} to {max(known):.4g}")


if __name__ == "__main__":
    main()
