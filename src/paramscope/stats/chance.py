"""Is a model above chance on a multiple-choice task? An exact test when documents differ in their number
of choices: under guessing, document i is right with probability 1/n_i, so the number right follows a
Poisson-binomial distribution (a binomial when every document has the same number of choices)."""

from __future__ import annotations

import numpy as np


def poisson_binomial_pmf(p: np.ndarray) -> np.ndarray:
    """P(X = k) for k = 0..n, X a sum of independent Bernoulli(p_i); exact by convolution."""
    pmf = np.array([1.0])
    for pi in np.asarray(p, dtype=float):
        pmf = np.convolve(pmf, [1.0 - pi, pi])
    return pmf


def above_chance_pvalue(correct: np.ndarray, n_choices: np.ndarray) -> float:
    """One-sided exact p-value of `correct.sum()` or more right answers under uniform guessing."""
    correct, n_choices = np.asarray(correct, dtype=int), np.asarray(n_choices, dtype=int)
    if correct.shape != n_choices.shape or correct.size == 0:
        raise ValueError(f"need one choice count per document, got {correct.shape} and {n_choices.shape}")
    if np.any(n_choices < 2):
        raise ValueError("every document needs at least two choices to have a chance level below 1")
    pmf = poisson_binomial_pmf(1.0 / n_choices)
    return float(min(1.0, pmf[int(correct.sum()):].sum()))
