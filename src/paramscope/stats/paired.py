"""Paired statistics for ablation / transplant cells.

Every result in the study is paired with a reference condition on the *same documents*
(STUDY.md section 3), so uncertainty is estimated by resampling documents, with one shared
index draw per resample applied to all conditions. That keeps the pairing (and therefore the
correlation between conditions) intact, which an unpaired bootstrap would throw away.

All bootstraps are percentile intervals, vectorised over resamples, and deterministic given
``seed`` (numpy ``default_rng``). The study requires at least 1000 resamples.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np
from scipy import stats as _sps

__all__ = [
    "MIN_RESAMPLES",
    "RatioCI",
    "RecoveryCI",
    "paired_bootstrap_ci",
    "bootstrap_ratio_ci",
    "bootstrap_recovery_ci",
    "mcnemar_exact",
    "benjamini_hochberg",
    "paired_delta_summary",
]

MIN_RESAMPLES = 1000
# Bound on the size of one block of the (n_resamples, n) index matrix, to keep memory flat for
# large document sets. The block size depends only on n, so results stay seed-deterministic.
_MAX_BLOCK_ELEMENTS = 4_000_000


class RatioCI(NamedTuple):
    """Ratio-of-means estimate with percentile CI.

    ``n_dropped`` resamples had a zero denominator and were excluded before taking the
    percentiles; ``low``/``high`` are NaN if every resample was dropped.
    """

    point: float
    low: float
    high: float
    n_dropped: int


class RecoveryCI(NamedTuple):
    """Gap-based recovery estimate with percentile CI (see :func:`bootstrap_recovery_ci`)."""

    point: float
    low: float
    high: float
    n_dropped: int
    p_gap: float


# --------------------------------------------------------------------------- helpers


def _as_paired(*arrays: np.ndarray) -> np.ndarray:
    """Stack equal-length 1-D finite vectors into a (k, n) float array, or raise."""
    out = [np.asarray(x, dtype=float) for x in arrays]
    n = out[0].shape
    for x in out:
        if x.ndim != 1:
            raise ValueError(f"expected 1-D per-example vectors, got shape {x.shape}")
        if x.shape != n:
            raise ValueError(f"paired vectors must have equal length, got {[y.shape for y in out]}")
        if not np.all(np.isfinite(x)):
            raise ValueError("per-example values must be finite (no NaN/inf)")
    if n[0] == 0:
        raise ValueError("empty input")
    return np.stack(out)


def _check_args(n_resamples: int, level: float) -> None:
    if int(n_resamples) != n_resamples or n_resamples < MIN_RESAMPLES:
        raise ValueError(f"n_resamples must be an integer >= {MIN_RESAMPLES}, got {n_resamples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


def _bootstrap_means(x: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Means of each row of ``x`` (k, n) over document resamples -> (n_resamples, k).

    One index row per resample is shared by all k conditions (the pairing).
    """
    k, n = x.shape
    out = np.empty((n_resamples, k))
    start = 0
    for idx in _resample_indices(n, n_resamples, seed):  # (b, n) index matrices
        out[start: start + len(idx)] = x[:, idx].mean(axis=2).T  # (k, b, n) -> (b, k)
        start += len(idx)
    return out


@lru_cache(maxsize=4)
def _resample_indices(n: int, n_resamples: int, seed: int) -> tuple[np.ndarray, ...]:
    """The resampled document indices, drawn once per (n, n_resamples, seed): a map's rows all share one
    seed and one document count, and drawing them again per row was most of a row's cost."""
    rng = np.random.default_rng(seed)
    block = max(1, _MAX_BLOCK_ELEMENTS // n)
    blocks = []
    for start in range(0, n_resamples, block):
        idx = rng.integers(0, n, size=(min(start + block, n_resamples) - start, n))
        idx.flags.writeable = False  # shared by every caller
        blocks.append(idx)
    return tuple(blocks)


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    if values.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def _binary(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {x.shape}")
    if not np.all((x == 0) | (x == 1)):
        raise ValueError(f"{name} must be binary 0/1 correctness")
    return x.astype(bool)


# --------------------------------------------------------------------------- bootstraps


def paired_bootstrap_ci(
    a: np.ndarray,
    b: np.ndarray,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean paired difference ``mean(b - a)`` with a percentile bootstrap CI over documents.

    ``a``/``b`` are per-example values (0/1 correctness, gold log-likelihoods, ...) of the same
    documents under two conditions (e.g. clean, ablated). Returns ``(delta, low, high)``.
    """
    _check_args(n_resamples, level)
    x = _as_paired(a, b)
    d = x[1] - x[0]
    boot = _bootstrap_means(d[None, :], n_resamples, seed)[:, 0]
    low, high = _percentiles(boot, level)
    return float(d.mean()), low, high


def bootstrap_ratio_ci(
    a: np.ndarray,
    b: np.ndarray,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> RatioCI:
    """Ratio of means ``mean(b) / mean(a)`` of paired samples with a percentile CI.

    Used for TIR = acc_transplanted / acc_target (``a`` = target, ``b`` = transplanted).
    Resamples with ``mean(a) == 0`` have no defined ratio: they are dropped and counted in
    ``n_dropped`` (so the CI is conditional on a non-zero denominator). The point estimate
    is NaN when ``mean(a) == 0`` on the full data.
    """
    _check_args(n_resamples, level)
    x = _as_paired(a, b)
    den = x[0].mean()
    point = float(x[1].mean() / den) if den != 0 else float("nan")
    m = _bootstrap_means(x, n_resamples, seed)
    ok = m[:, 0] != 0
    low, high = _percentiles(m[ok, 1] / m[ok, 0], level)
    return RatioCI(point, low, high, int((~ok).sum()))


def bootstrap_recovery_ci(
    target: np.ndarray,
    donor: np.ndarray,
    transplanted: np.ndarray,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> RecoveryCI:
    """Gap-based recovery ``(acc_t - acc_target) / (acc_donor - acc_target)`` with a CI.

    The three vectors are per-example correctness of the same test documents. Each resample
    draws one document index set shared by all three. Resamples where the donor-target gap is
    exactly 0 are dropped and counted in ``n_dropped``; the point estimate is NaN when the gap
    is 0 on the full data, and ``low``/``high`` are NaN when every resample was dropped.

    ``p_gap`` is the exact McNemar p-value of donor vs target: STUDY.md section 5 asks that GBR
    be reported as undefined when the gap is not significant, and a tiny gap also makes the
    ratio explode, so callers should check ``p_gap`` (ideally after BH across the grid).
    """
    _check_args(n_resamples, level)
    x = _as_paired(target, donor, transplanted)
    gap = x[1].mean() - x[0].mean()
    point = float((x[2].mean() - x[0].mean()) / gap) if gap != 0 else float("nan")
    m = _bootstrap_means(x, n_resamples, seed)
    den = m[:, 1] - m[:, 0]
    # Means of the same n documents are multiples of 1/n for 0/1 data; compare with a tolerance
    # far below 1/n so a float round-off never counts as a non-zero gap.
    ok = np.abs(den) > 1e-12
    low, high = _percentiles((m[ok, 2] - m[ok, 0]) / den[ok], level)
    try:
        p_gap = mcnemar_exact(x[0], x[1])
    except ValueError:  # non-binary inputs (e.g. scores): no exact McNemar
        p_gap = float("nan")
    return RecoveryCI(point, low, high, int((~ok).sum()), p_gap)


# --------------------------------------------------------------------------- tests


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> float:
    """Exact two-sided McNemar p-value for paired binary outcomes.

    Only discordant pairs carry information about a difference; under H0 they split 50/50, so
    this is a two-sided binomial test (``scipy.stats.binomtest``) on the discordant counts.
    Returns 1.0 when there are no discordant pairs.
    """
    a_ = _binary(a, "a")
    b_ = _binary(b, "b")
    if a_.shape != b_.shape:
        raise ValueError(f"a and b must have equal length, got {a_.shape} and {b_.shape}")
    n10 = int(np.sum(a_ & ~b_))
    n01 = int(np.sum(~a_ & b_))
    if n10 + n01 == 0:
        return 1.0
    return float(_sps.binomtest(n10, n10 + n01, 0.5, alternative="two-sided").pvalue)


def benjamini_hochberg(p: np.ndarray | list[float]) -> np.ndarray:
    """Benjamini-Hochberg q-values (FDR across units), same shape as ``p``.

    NaNs (cells with no test) stay NaN and do not count towards the number of tests m.
    Uses ``scipy.stats.false_discovery_control`` on the non-NaN entries.
    """
    arr = np.asarray(p, dtype=float)
    flat = arr.ravel()
    q = np.full(flat.shape, np.nan)
    ok = ~np.isnan(flat)
    if np.any((flat[ok] < 0) | (flat[ok] > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    if ok.any():
        q[ok] = _sps.false_discovery_control(flat[ok], method="bh")
    return q.reshape(arr.shape)


def paired_delta_summary(
    clean: np.ndarray,
    ablated: np.ndarray,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Standard per-cell statistics for binary correctness vs the clean model.

    Keys: ``acc_clean``, ``acc``, ``delta_acc`` (= acc - acc_clean), ``ci_low``, ``ci_high``
    (95% paired bootstrap), ``p_mcnemar`` (exact).
    """
    c = _binary(clean, "clean")
    a = _binary(ablated, "ablated")
    delta, low, high = paired_bootstrap_ci(c, a, n_resamples=n_resamples, seed=seed)
    return {
        "acc_clean": float(c.mean()),
        "acc": float(a.mean()),
        "delta_acc": delta,
        "ci_low": low,
        "ci_high": high,
        "p_mcnemar": mcnemar_exact(c, a),
    }
