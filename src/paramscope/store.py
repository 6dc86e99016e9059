"""Where results live: tidy Parquet rows, one file per grid cell, written atomically.

A cell's file name is a content hash of what determines it (model digest, task, split, spec), so a
grid that is interrupted and rerun finds its finished cells and never recomputes them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from paramscope.errors import StudyError

log = logging.getLogger(__name__)

RESULTS_ROOT = Path(os.environ.get("PARAMSCOPE_RESULTS", "results"))
STAGES = ("eval", "ablate", "transplant", "optimize", "structure", "vps")


def cell_key(**parts: object) -> str:
    """A stable hash of the things that determine a cell's numbers."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cell_path(stage: str, key: str, root: Path | None = None) -> Path:
    return (root or RESULTS_ROOT) / stage / f"{key}.parquet"


def cell_done(path: Path) -> bool:
    """Whether a grid cell is finished: its file exists and reads back as Parquet. A damaged one (cut
    short, or not Parquet at all) is removed with a warning that names it, so the grid recomputes it
    instead of trusting it."""
    if not path.exists():
        return False
    try:
        pq.read_metadata(path)  # the footer comes last: a file cut short has none
        return True
    except (pa.ArrowException, OSError) as err:
        log.warning("damaged result cell %s (%s): recomputing it", path, str(err).splitlines()[0])
        path.unlink(missing_ok=True)
        return False


def _read_cell(path: Path, stage: str) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (pa.ArrowException, OSError) as err:
        raise StudyError(f"damaged result cell {path} ({str(err).splitlines()[0]}); rerun the stage that "
                         f"writes results/{stage} (dvc repro) to recompute it") from None


def write_cell(df: pd.DataFrame, path: Path) -> None:
    """Write a cell so that readers see either nothing or the whole file (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not named *.parquet, so a write killed midway is never read back as a cell.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".partial")
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Build a directory beside ``path`` and swap it in only if the body finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".tmp-{path.name}-"))
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary shared folder
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def load_results(stage: str, root: Path | str | None = None, with_examples: bool = False) -> pd.DataFrame:
    """All rows of one stage's results as a DataFrame (per-example list columns dropped unless asked)."""
    if stage not in STAGES:
        raise ValueError(f"unknown results stage '{stage}'; valid: {', '.join(STAGES)}")
    folder = Path(root or RESULTS_ROOT) / stage
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no results in {folder}; run the '{stage}' stage first (dvc repro)")
    df = pd.concat([_read_cell(f, stage) for f in files], ignore_index=True)
    if not with_examples:
        df = df.drop(columns=[c for c in df.columns if c.startswith("ex_")])
    return df
