"""Behaviour tests for paramscope.stats (paired bootstrap, McNemar, BH, importance maps)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from paramscope.stats import (
    benjamini_hochberg,
    bootstrap_ratio_ci,
    bootstrap_recovery_ci,
    concentration,
    map_spearman,
    mcnemar_exact,
    non_additivity,
    paired_bootstrap_ci,
    paired_delta_summary,
    pairwise_spearman,
    recall_at_k,
)


def _paired_binary(n: int, p_a: float, p_b: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Correlated paired correctness: b copies a, then flips a share of docs to hit p_b."""
    rng = np.random.default_rng(seed)
    a = (rng.random(n) < p_a).astype(int)
    b = a.copy()
    ones = np.flatnonzero(a == 1)
    k = int(round((p_a - p_b) * n))
    b[rng.choice(ones, size=k, replace=False)] = 0
    return a, b


# ----------------------------------------------------------------------------- bootstrap


def test_ci_covers_true_delta_and_is_roughly_symmetric():
    a, b = _paired_binary(2000, 0.7, 0.6, seed=1)
    delta, low, high = paired_bootstrap_ci(a, b, n_resamples=2000, seed=0)
    assert delta == pytest.approx(b.mean() - a.mean())
    assert delta == pytest.approx(-0.1, abs=0.01)
    assert low < -0.1 < high
    assert low < delta < high
    upper, lower = high - delta, delta - low
    assert abs(upper - lower) < 0.25 * (high - low)
    # analytic paired SE for this design: sqrt(p(1-p)/n) of the per-doc -1/0 differences
    se = math.sqrt(0.1 * 0.9 / 2000)
    assert (high - low) == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_constant_difference_gives_degenerate_ci():
    rng = np.random.default_rng(0)
    a = rng.normal(size=300)
    delta, low, high = paired_bootstrap_ci(a, a + 0.3, n_resamples=1000)
    assert delta == pytest.approx(0.3)
    assert low == pytest.approx(0.3) and high == pytest.approx(0.3)


def test_pairing_is_used():
    # Large between-document variance that cancels in the difference: a paired CI is tight.
    rng = np.random.default_rng(3)
    base = rng.normal(scale=10.0, size=500)
    noise = rng.normal(scale=0.1, size=500)
    _, low, high = paired_bootstrap_ci(base, base + 1.0 + noise, n_resamples=1000)
    assert high - low < 0.1
    assert low < 1.0 < high


def test_ci_width_shrinks_with_n():
    widths = []
    for n in (200, 2000):
        a, b = _paired_binary(n, 0.7, 0.6, seed=2)
        _, low, high = paired_bootstrap_ci(a, b, seed=0)
        widths.append(high - low)
    assert widths[1] < widths[0] / 2.0  # ~ sqrt(10) = 3.2x narrower


def test_same_seed_identical_different_seed_differs():
    # continuous (log-likelihood-like) values: binary CIs sit on a 1/n grid and may coincide
    rng = np.random.default_rng(4)
    a = rng.normal(-2.0, 1.0, size=500)
    b = a + rng.normal(-0.1, 0.5, size=500)
    r1 = paired_bootstrap_ci(a, b, seed=7)
    r2 = paired_bootstrap_ci(a, b, seed=7)
    r3 = paired_bootstrap_ci(a, b, seed=8)
    assert r1 == r2
    assert r1[1:] != r3[1:]
    assert bootstrap_ratio_ci(-a, -b, seed=7) == bootstrap_ratio_ci(-a, -b, seed=7)


def test_rejects_too_few_resamples_and_bad_input():
    a = np.zeros(10)
    with pytest.raises(ValueError):
        paired_bootstrap_ci(a, a, n_resamples=999)
    with pytest.raises(ValueError):
        paired_bootstrap_ci(a, np.zeros(11))
    with pytest.raises(ValueError):
        paired_bootstrap_ci(a, np.full(10, np.nan))
    with pytest.raises(ValueError):
        bootstrap_recovery_ci(a, a, a, n_resamples=10)


def test_ratio_ci_tir():
    target, transplanted = _paired_binary(1000, 0.6, 0.3, seed=5)
    # TIR = acc_transplanted / acc_target, here 0.3/0.6 = 0.5
    r = bootstrap_ratio_ci(target, transplanted)
    assert r.point == pytest.approx(transplanted.mean() / target.mean())
    assert r.low < 0.5 < r.high
    assert r.n_dropped == 0


def test_ratio_ci_zero_denominator():
    a = np.zeros(50)
    b = np.ones(50)
    r = bootstrap_ratio_ci(a, b, n_resamples=1000)
    assert math.isnan(r.point) and math.isnan(r.low) and math.isnan(r.high)
    assert r.n_dropped == 1000


# ----------------------------------------------------------------------------- recovery


def test_recovery_known_case():
    n = 400
    rng = np.random.default_rng(6)
    target = (rng.random(n) < 0.3).astype(int)
    donor = target.copy()
    donor[rng.choice(np.flatnonzero(target == 0), size=120, replace=False)] = 1  # +0.30 gap
    transplanted = target.copy()
    gained = np.flatnonzero((donor == 1) & (target == 0))
    transplanted[gained[:60]] = 1  # recovers half of the gap
    r = bootstrap_recovery_ci(target, donor, transplanted)
    assert r.point == pytest.approx(0.5)
    assert r.low < 0.5 < r.high
    assert r.n_dropped == 0
    assert r.p_gap < 1e-10


def test_recovery_undefined_when_no_gap():
    target = np.array([1, 0, 1, 0, 1, 1, 0, 0])
    r = bootstrap_recovery_ci(target, target.copy(), 1 - target, n_resamples=1000)
    assert math.isnan(r.point) and math.isnan(r.low) and math.isnan(r.high)
    assert r.n_dropped == 1000
    assert r.p_gap == 1.0


def test_recovery_drops_resamples_with_zero_gap():
    n = 10
    target = np.zeros(n, dtype=int)
    donor = np.zeros(n, dtype=int)
    donor[0] = 1  # gap rests on one document
    transplanted = donor.copy()
    r = bootstrap_recovery_ci(target, donor, transplanted, n_resamples=2000, seed=0)
    # P(document 0 never drawn) = (1 - 1/n)^n ~ 0.349
    expected = 2000 * (1 - 1 / n) ** n
    assert abs(r.n_dropped - expected) < 5 * math.sqrt(expected)
    assert r.point == pytest.approx(1.0)
    assert r.low == pytest.approx(1.0) and r.high == pytest.approx(1.0)
    assert r.p_gap == 1.0  # one discordant pair is no evidence of a gap


# ----------------------------------------------------------------------------- McNemar, BH


def test_mcnemar_matches_hand_binomial():
    # 10 docs right->wrong, 2 wrong->right, 5 concordant of each kind
    a = np.array([1] * 10 + [0] * 2 + [1] * 5 + [0] * 5)
    b = np.array([0] * 10 + [1] * 2 + [1] * 5 + [0] * 5)
    # two-sided exact: 2 * sum_{k<=2} C(12,k) / 2^12 = 2 * 79 / 4096
    assert mcnemar_exact(a, b) == pytest.approx(158 / 4096, rel=1e-12)
    assert mcnemar_exact(b, a) == pytest.approx(158 / 4096, rel=1e-12)


def test_mcnemar_no_discordance_and_validation():
    a = np.array([1, 0, 1, 1, 0])
    assert mcnemar_exact(a, a) == 1.0
    assert mcnemar_exact(a.astype(bool), a.astype(float)) == 1.0
    with pytest.raises(ValueError):
        mcnemar_exact(a, np.array([1, 0, 2, 1, 0]))


def test_bh_textbook():
    q = benjamini_hochberg([0.01, 0.04, 0.03, 0.005])
    # sorted p: .005 .01 .03 .04 -> p*m/rank = .02 .02 .04 .04 (then cumulative min from top)
    np.testing.assert_allclose(q, [0.02, 0.04, 0.04, 0.02])


def test_bh_step_up_and_monotone():
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216])
    q = benjamini_hochberg(p)
    raw = p * p.size / np.arange(1, p.size + 1)
    expected = np.minimum.accumulate(raw[::-1])[::-1]
    np.testing.assert_allclose(q, np.minimum(expected, 1.0))
    order = np.argsort(p)
    assert np.all(np.diff(q[order]) >= 0)
    assert np.all(q >= p)
    rng = np.random.default_rng(0)
    pr = rng.random(200)
    qr = benjamini_hochberg(pr)
    assert np.all(np.diff(qr[np.argsort(pr)]) >= -1e-15)
    assert np.all(qr <= 1.0)


def test_bh_nan_safe():
    q = benjamini_hochberg([0.01, np.nan, 0.04, 0.03, 0.005, np.nan])
    assert np.isnan(q[1]) and np.isnan(q[5])
    np.testing.assert_allclose(q[[0, 2, 3, 4]], [0.02, 0.04, 0.04, 0.02])  # m = 4, not 6
    assert benjamini_hochberg([]).shape == (0,)
    with pytest.raises(ValueError):
        benjamini_hochberg([0.5, 1.5])


def test_paired_delta_summary():
    clean, ablated = _paired_binary(600, 0.8, 0.7, seed=9)
    s = paired_delta_summary(clean, ablated)
    assert set(s) == {"acc_clean", "acc", "delta_acc", "ci_low", "ci_high", "p_mcnemar"}
    assert s["acc_clean"] == pytest.approx(clean.mean())
    assert s["acc"] == pytest.approx(ablated.mean())
    assert s["delta_acc"] == pytest.approx(s["acc"] - s["acc_clean"])
    assert s["ci_low"] < s["delta_acc"] < s["ci_high"] < 0
    assert s["p_mcnemar"] < 1e-10
    assert paired_delta_summary(clean, ablated) == s
    with pytest.raises(ValueError):
        paired_delta_summary(clean, ablated, n_resamples=100)


# ----------------------------------------------------------------------------- maps


def test_concentration():
    assert concentration(np.array([10.0, 0, 0, 0])) == {0.5: 0.25, 0.9: 0.25}
    c = concentration(np.full(100, 0.1))
    assert c[0.5] == pytest.approx(0.5) and c[0.9] == pytest.approx(0.9)
    # negative effects carry no importance but still count as units
    c = concentration(np.array([6.0, 3.0, 1.0, -5.0]), fractions=(0.5, 0.9, 1.0))
    assert c == {0.5: 0.25, 0.9: 0.5, 1.0: 0.75}
    # order of the input does not matter
    assert concentration(np.array([0, 1.0, 0, 9.0]))[0.9] == 0.25
    assert all(math.isnan(v) for v in concentration(np.array([0.0, -1.0])).values())
    with pytest.raises(ValueError):
        concentration(np.ones(3), fractions=(0.0,))


def test_map_spearman_and_pairwise():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0, np.nan])
    rho, p = map_spearman(x, np.array([10.0, 20.0, 30.0, 40.0, 50.0, 0.0]))
    assert rho == pytest.approx(1.0) and p < 0.05
    rho, _ = map_spearman(x, -np.exp(np.nan_to_num(x)))
    assert rho == pytest.approx(-1.0)
    assert all(math.isnan(v) for v in map_spearman(x, np.ones(6)))
    maps = {"t1": x, "t2": 2 * x, "t3": -x}
    df = pairwise_spearman(maps)
    assert isinstance(df, pd.DataFrame)
    assert list(df.index) == list(df.columns) == ["t1", "t2", "t3"]
    np.testing.assert_allclose(df.to_numpy(), [[1, 1, -1], [1, 1, -1], [-1, -1, 1]])


def test_recall_at_k():
    exact = np.array([9.0, 8.0, 7.0, 1.0, 0.0, 0.5])
    assert recall_at_k(exact, exact, k=3) == 1.0
    assert recall_at_k(-exact, exact, k=3) == 0.0
    screen = np.array([9.0, 0.0, 7.0, 8.0, 0.0, 0.0])  # top-3 {0, 3, 2} vs exact {0, 1, 2}
    assert recall_at_k(screen, exact, k=3) == pytest.approx(2 / 3)
    assert recall_at_k(screen, exact, k=6) == 1.0
    with pytest.raises(ValueError):
        recall_at_k(screen, exact, k=7)


def test_non_additivity_sign():
    assert non_additivity(0.1, 0.2, 0.5) == pytest.approx(0.2)  # super-additive
    assert non_additivity(0.1, 0.2, 0.1) == pytest.approx(-0.2)  # sub-additive
    assert non_additivity(0.1, 0.2, 0.3) == pytest.approx(0.0)
    out = non_additivity(np.array([0.1, 0.0]), np.array([0.2, 0.0]), np.array([0.3, 0.4]))
    np.testing.assert_allclose(out, [0.0, 0.4], atol=1e-12)
