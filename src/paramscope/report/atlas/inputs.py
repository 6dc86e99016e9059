"""The atlas's inputs: the ``eval`` and ``ablate`` result cells, checked to be complete and from one run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from paramscope import row_schemas
from paramscope.errors import StudyError
from paramscope.report.atlas.keys import MAP_KEYS
from paramscope.store import load_results

PRODUCER = {"eval": "evaluate", "ablate": "ablate"}
SCHEMA = {"eval": row_schemas.EVAL, "ablate": row_schemas.ABLATE}  # what the writing stages declare, checked per cell


def load_inputs(results: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The eval rows (with per-example lists) and the ablate rows (without), checked."""
    frames = []
    for stage, examples in (("eval", True), ("ablate", False)):
        folder = Path(results) / stage
        if not folder.is_dir() or not any(folder.glob("*.parquet")):
            raise StudyError(f"no {stage} results in {folder}: run the '{PRODUCER[stage]}' stage first (dvc repro)")
        frames.append(load_results(stage, results, with_examples=examples, schema=SCHEMA[stage]))
    ev, ab = frames
    _unique(ev, ["model", "task", "split"], "eval")
    _unique(ab, [*MAP_KEYS, "layer", "unit"], "ablate")
    digests = ev.groupby("model")["digest"].agg(lambda d: sorted(set(d)))
    for model, d in digests.items():
        if len(d) > 1:
            raise StudyError(f"eval results of model '{model}' come from {len(d)} checkpoints ({', '.join(d)}): "
                             "remove the stale cells and rerun 'evaluate'")
    for model, d in ab.groupby("model")["digest"].agg(lambda d: sorted(set(d))).items():
        if model not in digests or d != digests[model]:
            raise StudyError(f"ablate results of model '{model}' (checkpoint {', '.join(d)}) do not match its "
                             "eval results: rerun 'evaluate' and 'ablate' on the same models")
    return ev, ab


def _unique(df: pd.DataFrame, keys: list[str], stage: str) -> None:
    dup = df[df.duplicated(keys, keep=False)]
    if len(dup):
        first = ", ".join(f"{k}={dup.iloc[0][k]}" for k in keys)
        raise StudyError(f"{stage} results hold {len(dup)} rows that share one key ({first}): stale cells from "
                         f"an older run; rerun the '{PRODUCER[stage]}' stage")
