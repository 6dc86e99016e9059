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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
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


# How a declared dtype is checked against a cell's Arrow schema; an all-null column passes any.
_DTYPES = {
    "str": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
    "int": pa.types.is_integer,
    "float": lambda t: pa.types.is_integer(t) or pa.types.is_floating(t),
    "bool": pa.types.is_boolean,
    "list": lambda t: pa.types.is_list(t) or pa.types.is_large_list(t),
}


@dataclass(frozen=True)
class RowSchema:
    """What a stage's rows must hold, declared once beside the code that writes them.

    ``version`` goes into every cell key (bump it when rows change shape or meaning, so older cells are
    recomputed); where ``version_column`` is set, rows also carry it as a column, checked on read.
    ``columns`` maps the columns readers rely on to a dtype: str, int, float (int or float), bool, list.
    """

    version: int
    columns: Mapping[str, str]
    version_column: str | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.columns.values()) - set(_DTYPES))
        if unknown:
            raise ValueError(f"unknown column dtypes {unknown}; valid: {', '.join(_DTYPES)}")

    def problem(self, table: pa.Table) -> str | None:
        """Why rows do not match this schema, or None."""
        missing = [c for c in self.columns if c not in table.column_names]
        if missing:
            return f"missing columns {', '.join(missing)}"
        wrong = [f"{c} is {table.schema.field(c).type}, not {kind}" for c, kind in self.columns.items()
                 if not pa.types.is_null(table.schema.field(c).type) and not _DTYPES[kind](table.schema.field(c).type)]
        if wrong:
            return "; ".join(wrong)
        if self.version_column is not None:
            if self.version_column not in table.column_names:
                return f"no '{self.version_column}' column"
            found = set(table.column(self.version_column).to_pylist())
            if found != {self.version}:
                return f"row schema {sorted(found, key=str)}, not {self.version}"
        return None


class DamagedCell(Exception):
    """A cell file that exists but cannot be used: unreadable, or not the rows its stage declares."""


def read_cell(path: Path, schema: RowSchema | None = None) -> pa.Table:
    """A cell's rows, read whole (a footer alone can hide damaged pages) and checked against ``schema``;
    raises ``DamagedCell`` saying why it cannot be used."""
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise DamagedCell(str(err).splitlines()[0] if str(err) else type(err).__name__) from None
    why = schema.problem(table) if schema is not None else None
    if why:
        raise DamagedCell(why)
    return table


def cell_done(path: Path, schema: RowSchema | None = None) -> bool:
    """Whether a grid cell is finished: its file exists, reads back whole and matches ``schema``. A
    damaged one (cut short, not Parquet, other columns or version) is removed with a warning that names
    it, so the grid recomputes it instead of trusting it."""
    return _usable(path, schema) is not None


def _usable(path: Path, schema: RowSchema | None) -> pa.Table | None:
    if not path.exists():
        return None
    try:
        return read_cell(path, schema)
    except DamagedCell as err:
        log.warning("damaged result cell %s (%s): recomputing it", path, err)
        path.unlink(missing_ok=True)
        return None


def _read_cell(path: Path, stage: str, schema: RowSchema | None) -> pd.DataFrame:
    try:
        return read_cell(path, schema).to_pandas()  # read once, checked as the grid checks it
    except (DamagedCell, pa.ArrowException, OSError) as err:
        raise StudyError(f"damaged result cell {path} ({str(err).splitlines()[0]}); rerun the stage that writes "
                         f"results/{stage} (dvc repro) to recompute it") from None


def write_cell(df: pd.DataFrame, path: Path) -> None:
    """Write a cell so that readers see either nothing or the whole file (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not named *.parquet, so a write killed midway is never read back as a cell; named after the cell, so
    # that a job prunes only its own leftovers, never a file another job is writing.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.stem}-", suffix=".partial")
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


@dataclass(frozen=True)
class Cell:
    name: str  # the file's stem: the job's prefix and the content key (rows carry it as `cell`)
    path: Path


@dataclass
class CellGrid:
    """One job's cells of one stage: each is planned (keyed by content), skipped where a usable file is
    there, written atomically, and counted; `prune` removes what the plan no longer has within the scope
    the job declares, so that other jobs' cells (other settings, other prefixes) are left alone.

    A cell that is there but unreadable, or does not match the stage's `RowSchema`, is removed with a
    warning naming it and recomputed."""

    stage: str
    schema: RowSchema
    results: Path
    planned: set[Path] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=lambda: {"computed": 0, "skipped": 0})

    @property
    def folder(self) -> Path:
        return Path(self.results) / self.stage

    def plan(self, prefix: str = "", **parts: object) -> Cell:
        """The cell of these parts; ``prefix`` lets a job find its own cells among all others."""
        name = prefix + cell_key(stage=self.stage, schema=self.schema.version, **parts)
        path = cell_path(self.stage, name, Path(self.results))
        self.planned.add(path)
        return Cell(name, path)

    def done(self, cell: Cell) -> bool:
        """Whether the cell is there, readable and valid (counted as skipped); a damaged one is removed."""
        if _usable(cell.path, self.schema) is None:
            return False
        self.counts["skipped"] += 1
        return True

    def existing(self, cell: Cell) -> pd.DataFrame | None:
        """The finished cell's rows, or None where it must be computed."""
        return pd.read_parquet(cell.path) if self.done(cell) else None

    def write(self, cell: Cell, df: pd.DataFrame) -> None:
        why = self.schema.problem(pa.Table.from_pandas(df, preserve_index=False))
        if why:  # a bug in the writer: never leave a cell that the next run would throw away
            raise ValueError(f"{self.stage} cell {cell.name} does not match its row schema: {why}")
        write_cell(df, cell.path)
        self.counts["computed"] += 1

    def prune(self, *scopes: str) -> int:
        """Remove the cells whose names match these globs (the job's own scope, e.g. its prefix + "*")
        that were not planned, and the scope's temp files left by killed writes; returns how many."""
        stale = {p for scope in scopes for p in self.folder.glob(f"{scope}.parquet") if p not in self.planned}
        stale |= {p for scope in scopes for p in self.folder.glob(f".tmp-{scope}.partial")}
        for p in stale:
            p.unlink(missing_ok=True)
        return len(stale)

    def prune_invalid(self) -> int:
        """Remove every cell of the stage that does not match the row schema (e.g. an older version)."""
        stale = [p for p in sorted(self.folder.glob("*.parquet")) if p not in self.planned and _invalid(p, self.schema)]
        for p in stale:
            p.unlink(missing_ok=True)
        if stale:
            log.info("removed %d %s cells that do not match row schema %d", len(stale), self.stage,
                     self.schema.version)
        return len(stale)


def _invalid(path: Path, schema: RowSchema) -> bool:
    try:
        read_cell(path, schema)
        return False
    except DamagedCell:
        return True


def load_results(stage: str, root: Path | str | None = None, with_examples: bool = False,
                 schema: RowSchema | None = None) -> pd.DataFrame:
    """All rows of one stage's results as a DataFrame (per-example list columns dropped unless asked).
    A cell that cannot be read, or does not hold the rows ``schema`` (its writer's) declares, fails in one
    line naming it."""
    if stage not in STAGES:
        raise ValueError(f"unknown results stage '{stage}'; valid: {', '.join(STAGES)}")
    folder = Path(root or RESULTS_ROOT) / stage
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no results in {folder}; run the '{stage}' stage first (dvc repro)")
    df = pd.concat([_read_cell(f, stage, schema) for f in files], ignore_index=True)
    if not with_examples:
        df = df.drop(columns=[c for c in df.columns if c.startswith("ex_")])
    return df
