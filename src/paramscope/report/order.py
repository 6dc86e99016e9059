"""The order in which reports list models, tasks and map types: the configured one, not the files'.

A value the configuration does not name still appears, after the named ones; the helpers differ only in
where those extra values go.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd


def preferred_order(values: Iterable[object], preferred: Sequence[object]) -> list:
    """The distinct values, those in ``preferred`` first in its order, the others after them sorted."""
    present = set(values)
    return [v for v in preferred if v in present] + sorted(v for v in present if v not in preferred)


def preferred_then_seen(values: Iterable[object], preferred: Sequence[object]) -> list:
    """The distinct values, those in ``preferred`` first in its order, the others after them as first seen."""
    present = list(dict.fromkeys(values))
    return [v for v in preferred if v in present] + [v for v in present if v not in preferred]


def sort_rows(df: pd.DataFrame, ranked: Sequence[tuple[str, Sequence[object]]],
              then: Sequence[str] = ()) -> pd.DataFrame:
    """Rows ordered by each ``(column, preferred values)`` in ``ranked`` (see ``preferred_order``), then by
    the plain values of ``then``; columns absent from ``df`` are skipped. Stable, so equal rows keep their order."""
    tmp = df.copy()
    ranks = []
    for col, preferred in ranked:
        if col in tmp.columns:
            rank = {v: i for i, v in enumerate(preferred_order(tmp[col], preferred))}
            tmp[f"_{col}"] = tmp[col].map(rank)
            ranks.append(f"_{col}")
    tmp = tmp.sort_values(ranks + [c for c in then if c in tmp.columns], kind="mergesort")
    return tmp.drop(columns=ranks).reset_index(drop=True)
