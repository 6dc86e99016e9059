"""Statistics on importance maps.

An importance map is a 1-D array of per-unit effects (e.g. ``-delta_acc`` per head), with
larger = more important. These helpers answer the atlas questions of STUDY.md section 3: how
concentrated importance is, whether maps agree across tasks/models (Spearman), how well a fast
screen recovers the exact top units (recall@k), and whether pairs interact (non-additivity).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
from scipy import stats as _sps

__all__ = [
    "concentration",
    "map_spearman",
    "pairwise_spearman",
    "recall_at_k",
    "non_additivity",
]


def _vec(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D importance map, got shape {arr.shape}")
    return arr


def concentration(
    effects: np.ndarray, fractions: Iterable[float] = (0.5, 0.9)
) -> dict[float, float]:
    """Smallest fraction of units that carries each share of the total positive effect.

    Effects are clipped at 0 (units whose ablation helps carry no importance), sorted
    descending and accumulated; for share f the answer is k/n with k the fewest top units whose
    sum reaches f * total. n counts all non-NaN units (NaN units are ignored). Low values mean
    importance sits in few units. NaN when the total positive effect is 0.
    E.g. [10, 0, 0, 0] -> 0.25 for any share; equal effects over 100 units -> 0.5 / 0.9.
    """
    e = _vec(effects, "effects")
    e = e[~np.isnan(e)]
    fr = [float(f) for f in fractions]
    if any(not 0.0 < f <= 1.0 for f in fr):
        raise ValueError(f"fractions must lie in (0, 1], got {fr}")
    pos = np.sort(np.clip(e, 0.0, None))[::-1]
    total = pos.sum()
    if e.size == 0 or not total > 0:
        return {f: float("nan") for f in fr}
    cum = np.cumsum(pos)
    out: dict[float, float] = {}
    for f in fr:
        # relative tolerance so float round-off in the cumsum never needs an extra unit
        k = int(np.searchsorted(cum, f * total * (1.0 - 1e-12), side="left")) + 1
        out[f] = min(k, e.size) / e.size
    return out


def map_spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman (rho, p) between two maps over units where both are finite.

    Answers "does importance transfer?" (across tasks or models of the same shape).
    (nan, nan) when fewer than 3 shared units remain or either map is constant there.
    """
    a, b = _vec(x, "x"), _vec(y, "y")
    if a.shape != b.shape:
        raise ValueError(f"maps must have equal length, got {a.shape} and {b.shape}")
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan"), float("nan")
    res = _sps.spearmanr(a, b)
    return float(res.statistic), float(res.pvalue)


def pairwise_spearman(maps: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Square DataFrame of Spearman rho between every pair of named maps (NaN-ignoring)."""
    names = list(maps)
    n = len(names)
    rho = np.full((n, n), np.nan)
    for i in range(n):
        for j in range(i, n):
            r, _ = map_spearman(maps[names[i]], maps[names[j]])
            rho[i, j] = rho[j, i] = r
    return pd.DataFrame(rho, index=names, columns=names)


def _top_k(x: np.ndarray, k: int) -> np.ndarray:
    # NaN ranks last; ties are broken by unit index (stable sort) so the result is deterministic.
    key = np.where(np.isnan(x), -np.inf, x)
    return np.argsort(-key, kind="stable")[:k]


def recall_at_k(screen: np.ndarray, exact: np.ndarray, k: int = 10) -> float:
    """Fraction of the exact map's top-k units that also appear in the screen's top-k.

    Measures whether a cheap first-order screen finds the units the exact ablation map ranks
    highest. Ties broken by unit index; NaN effects rank last.
    """
    s, e = _vec(screen, "screen"), _vec(exact, "exact")
    if s.shape != e.shape:
        raise ValueError(f"maps must have equal length, got {s.shape} and {e.shape}")
    if not 1 <= k <= e.size:
        raise ValueError(f"k must be in [1, {e.size}], got {k}")
    hits = np.intersect1d(_top_k(s, k), _top_k(e, k)).size
    return hits / k


def non_additivity(
    effect_i: float | np.ndarray,
    effect_j: float | np.ndarray,
    effect_ij: float | np.ndarray,
) -> float | np.ndarray:
    """Interaction of two units: ``effect_ij - (effect_i + effect_j)``.

    Sign convention (effects = damage, e.g. -delta_acc, larger = more harmful):
    > 0 super-additive: ablating both hurts more than the two singles together (the units back
      each other up / are redundant, so each alone looked unimportant);
    < 0 sub-additive: the pair hurts less than the sum (overlapping function or a shared
      pathway that one ablation already breaks, or a saturated metric);
    = 0 additive (no entanglement). Works element-wise on arrays.
    """
    out = np.asarray(effect_ij, dtype=float) - (
        np.asarray(effect_i, dtype=float) + np.asarray(effect_j, dtype=float)
    )
    return float(out) if out.ndim == 0 else out
