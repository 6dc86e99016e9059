"""Report files written atomically (temp file + rename) and byte-for-byte reproducibly."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import pandas as pd

FLOAT_FORMAT = "%.6g"  # enough digits for any plot or table; fewer spurious diffs between reruns


def write_bytes(path: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; reports are ordinary shared files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_csv(df: pd.DataFrame, path: Path) -> None:
    write_text(path, df.to_csv(index=False, float_format=FLOAT_FORMAT, lineterminator="\n"))


def json_ready(value: object) -> object:
    """NaN is not JSON: a value that does not exist is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(obj: dict, path: Path) -> None:
    clean = {k: json_ready(v) for k, v in obj.items()}
    write_text(path, json.dumps(clean, indent=2, sort_keys=True, allow_nan=False) + "\n")
