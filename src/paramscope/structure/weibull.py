"""The Weibull diagnostic of one weight matrix (STUDY.md section 6, after arXiv 2605.18898).

The magnitudes |w| of a matrix are summarised by a two-parameter Weibull law
F(x) = 1 - exp(-(x / lambda)^k), fitted exactly as the study specifies:

1. clip |w| below at 1e-13 and histogram log10|w| into 1024 equal bins on [-12, 2];
2. F at each bin's midpoint = the cumulative fraction of entries below the bin plus half the bin's own
   count (the empirical CDF evaluated at the centre of the bin);
3. keep the bins with 0.1 <= F <= 0.9 and a non-zero count (the middle 80% of the mass); the fit needs
   at least 100 entries in those bins and at least 5 of them;
4. x = ln(centre), with the centre in |w| units (10 to the bin's mid log10), y = ln(-ln(1 - F));
5. least squares of y on x weighted by the bins' counts: k = slope, lambda = exp(-intercept / k);
6. R^2 of that weighted fit, and the Kolmogorov-Smirnov distance between all |w| and the fitted law.

When the fit is not possible (too few kept bins or entries) or its R^2 is below 0.95, the matrix is not
Weibull-like in its middle: k and lambda then come from quantile ratios (method ``quantile``), which
need no linearity. With q_p the p-quantile of |w|, a Weibull law has q_p = lambda (-ln(1 - p))^(1/k),
so the 10% and 90% quantiles (the same middle 80%) give

    k = ln( ln(1 - 0.9) / ln(1 - 0.1) ) / ln(q_0.9 / q_0.1),    lambda = q_0.5 / (ln 2)^(1/k).

The anchors the tests check: Gaussian N(0, sigma^2) entries give k ~= 1.205 and lambda ~= 0.8875 sigma;
PyTorch's default `nn.Linear` init (uniform) gives k ~= 1.37. A trained matrix is therefore compared
with the fit of its own step-0 matrix, never with a textbook constant.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

N_BINS = 1024
LOG10_RANGE = (-12.0, 2.0)
CLIP = 1e-13
F_RANGE = (0.1, 0.9)
MIN_COUNTS = 100
MIN_BINS = 5
MIN_R2 = 0.95
# Reference values of the fit on common initialisations (checked by the tests).
GAUSSIAN_K, GAUSSIAN_LAMBDA_PER_SIGMA = 1.205, 0.8875
TORCH_LINEAR_K = 1.37


@dataclass(frozen=True)
class WeibullFit:
    """Shape ``k`` and scale ``lam`` of |w|, how well the binned fit held, and which method gave them."""

    k: float
    lam: float
    r2: float  # weighted R^2 of the binned fit (NaN when no fit was possible)
    ks: float  # KS distance between the entries' |w| and Weibull(k, lam)
    n: int  # entries in the matrix
    n_bins: int  # bins kept for the fit
    n_fit: int  # entries in the kept bins
    method: str  # "fit" or "quantile" (the fallback)

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def binned_cdf(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bin centres in |w| units, F at the centres, counts) of the study's log10 histogram."""
    magnitudes = np.maximum(np.abs(np.asarray(values, dtype=np.float64).ravel()), CLIP)
    edges = np.linspace(*LOG10_RANGE, N_BINS + 1)
    counts, _ = np.histogram(np.log10(magnitudes), bins=edges)
    total = counts.sum()
    cdf_mid = (np.cumsum(counts) - counts / 2.0) / max(total, 1)
    centres = 10.0 ** ((edges[:-1] + edges[1:]) / 2.0)
    return centres, cdf_mid, counts


def quantile_fit(magnitudes: np.ndarray) -> tuple[float, float]:
    """k and lambda from the 10/50/90% quantiles of |w| (the fallback; formula in the module docstring)."""
    q10, q50, q90 = np.quantile(magnitudes, [0.1, 0.5, 0.9])
    if not (q10 > 0 and q90 > q10):
        return float("nan"), float("nan")
    k = math.log(math.log(1 - 0.9) / math.log(1 - 0.1)) / math.log(q90 / q10)
    return k, float(q50 / math.log(2.0) ** (1.0 / k))


def fit_weibull(values: np.ndarray) -> WeibullFit:
    """The study's Weibull diagnostic of one matrix's entries (any shape; see the module docstring)."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    magnitudes = np.maximum(np.abs(flat), CLIP)
    centres, cdf, counts = binned_cdf(flat)
    keep = (cdf >= F_RANGE[0]) & (cdf <= F_RANGE[1]) & (counts > 0)
    n_bins, n_fit = int(keep.sum()), int(counts[keep].sum())
    k = lam = r2 = float("nan")
    if n_bins >= MIN_BINS and n_fit >= MIN_COUNTS:
        x, y, weight = np.log(centres[keep]), np.log(-np.log1p(-cdf[keep])), counts[keep].astype(np.float64)
        # np.polyfit weights multiply the residuals, so sqrt(count) minimises sum(count * residual^2)
        slope, intercept = np.polyfit(x, y, 1, w=np.sqrt(weight))
        y_hat = slope * x + intercept
        y_bar = np.average(y, weights=weight)
        total_ss = float(np.sum(weight * (y - y_bar) ** 2))
        r2 = 1.0 - float(np.sum(weight * (y - y_hat) ** 2)) / total_ss if total_ss > 0 else float("nan")
        if slope > 0:
            k, lam = float(slope), float(math.exp(-intercept / slope))
    method = "fit"
    if not (math.isfinite(k) and math.isfinite(r2) and r2 >= MIN_R2):
        k, lam = quantile_fit(magnitudes)
        method = "quantile"
    ks = (float(stats.kstest(magnitudes, stats.weibull_min(k, scale=lam).cdf).statistic) if math.isfinite(k)
          else float("nan"))
    return WeibullFit(k, lam, r2, ks, int(flat.size), n_bins, n_fit, method)
