"""Which trained weights are statistically indistinguishable from their initialisation.

The null is the model's real initialisation: the step-0 checkpoint of the same lineage (for the tiny
study `scratch-step0`, which `gen2` and `tuned` share because they were fine-tuned from `scratch`; for
Pythia its `step0` revision). Two tests per entry of every attention and MLP projection, each against
a null built from the same matrix:

- **value test** (is w_T a plausible draw of this matrix's initialisation?). Null: the distribution of
  the n0 step-0 entries of the same matrix, two-sided through magnitudes (every init the study meets
  is symmetric about 0). Where the step-0 entries are consistent with a centred normal (Kolmogorov-
  Smirnov against N(0, sigma0^2), sigma0 their RMS, p >= `NORMAL_FIT_ALPHA`; true of the normal
  initialisations of every family here), the null is that normal: p = 2 Phi(-|w_T| / sigma0), whose
  smallest attainable value is below 1e-300. Otherwise it is the empirical add-one tail
  p = (1 + #{|w_0| >= |w_T|}) / (1 + n0), valid under the null but never below 1/(n0 + 1): with BH
  over all of a model's entries (m of them) such an entry can only be rejected along with at least
  m / ((n0 + 1) fdr) others, which is why the normal null is preferred where it holds.
- **drift test** (did this entry move more than the diffuse drift every entry undergoes?). d = w_T - w_0.
  Every entry drifts (weight decay, optimiser noise), so "no drift" is no null; the null is the drift
  of entries that received no consistent, localised update. With one pair of checkpoints its scale can
  only be estimated from the matrix itself, as Efron's empirical null: d ~ N(m, s^2) with m the median
  and s = 1.4826 * MAD of the matrix's drifts, robust to the minority of entries that were learned.
  p = 2 * Phi(-|d - m| / s). This is a *relative* test: it finds localised updates, and it cannot see
  learning that moved every entry of a matrix alike. (s = 0, i.e. most entries did not move at all:
  an entry with d = m has p = 1, any other p = 0.)

Benjamini-Hochberg q-values are taken across all tested entries of the model, per test. An entry is
*indistinguishable* when neither test rejects at the FDR level (q > fdr for both). For annealing the
two are merged into one evidence score by Bonferroni: p = min(1, 2 min(p_value, p_drift)).

**Edges** (`units.py`: all entries of a block that link residual channel i and unit u) are tested with
the same two nulls aggregated over the edge's entries, each entry standardised by its matrix:

- value: T = sum (w_T / sigma_0)^2 with sigma_0 the RMS of the step-0 matrix. Null: the empirical
  distribution of the same statistic computed from the step-0 weights over every edge of the same kind
  (heads or neurons) in the same block; p = (1 + #{T_0 >= T}) / (1 + n_edges).
- drift: D = sum ((d - m) / s)^2 over the edge's entries; under the entries' empirical nulls (independent
  normals) D ~ chi^2 with as many degrees of freedom as the edge has entries.

Biases, norms, embeddings and the unembedding are not tested: their step-0 values are constants
(norms 1, biases 0) or they are not part of a block's unit structure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from paramscope.stats import benjamini_hochberg
from paramscope.structure.units import MatrixRole

MAD_TO_SD = 1.4826  # the MAD of a normal distribution is 0.6745 sd


# A step-0 matrix whose entries a KS test rejects as N(0, sigma0^2) at this level takes the empirical null.
NORMAL_FIT_ALPHA = 1e-3


@dataclass(frozen=True)
class ValueNull:
    """The value test's null for one matrix: `normal` (N(0, sigma0^2)) or `empirical` (the step-0 entries)."""

    kind: str
    sigma0: float
    ks_p: float  # KS test of the step-0 entries against N(0, sigma0^2)
    n0: int

    @property
    def smallest_p(self) -> float:
        """The smallest p-value this null can give (the normal tail's underflow; 1/(n0+1) empirically)."""
        return float(np.finfo(np.float64).tiny) if self.kind == "normal" else 1.0 / (self.n0 + 1)


def value_null(init: np.ndarray) -> ValueNull:
    w0 = np.asarray(init, dtype=np.float64).ravel()
    sigma0 = float(np.sqrt(np.mean(np.square(w0))))
    ks_p = float(stats.kstest(w0, "norm", args=(0.0, sigma0)).pvalue) if sigma0 > 0 else 0.0
    return ValueNull("normal" if ks_p >= NORMAL_FIT_ALPHA else "empirical", sigma0, ks_p, w0.size)


def value_pvalues(trained: np.ndarray, init: np.ndarray) -> np.ndarray:
    """Two-sided tail p-value of every trained entry under its matrix's step-0 null (module docstring)."""
    magnitude = np.abs(np.asarray(trained, dtype=np.float64))
    null = value_null(init)
    if null.kind == "normal":
        return np.minimum(1.0, 2.0 * stats.norm.sf(magnitude / null.sigma0))
    step0 = np.sort(np.abs(np.asarray(init, dtype=np.float64).ravel()))
    at_least = step0.size - np.searchsorted(step0, magnitude, side="left")
    return (1.0 + at_least) / (1.0 + step0.size)


def drift_null(drift: np.ndarray) -> tuple[float, float]:
    """(centre, scale) of the empirical null of a matrix's drifts: median and 1.4826 * MAD."""
    centre = float(np.median(drift))
    return centre, MAD_TO_SD * float(np.median(np.abs(drift - centre)))


def _drift_z(drift: np.ndarray) -> np.ndarray:
    centre, scale = drift_null(drift)
    deviation = np.abs(drift - centre)
    if scale > 0:
        return deviation / scale
    return np.where(deviation > 0, np.inf, 0.0)


def drift_pvalues(trained: np.ndarray, init: np.ndarray) -> np.ndarray:
    """Two-sided p-value of every entry's drift under its matrix's empirical null (module docstring)."""
    drift = np.asarray(trained, dtype=np.float64) - np.asarray(init, dtype=np.float64)
    return 2.0 * stats.norm.sf(_drift_z(drift))


def combined_pvalues(p_value: np.ndarray, p_drift: np.ndarray) -> np.ndarray:
    """Bonferroni of the two tests: evidence that an entry was learned, by either test."""
    return np.minimum(1.0, 2.0 * np.minimum(p_value, p_drift))


def _bh_per_matrix(p: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """BH across every entry of every matrix at once, returned matrix by matrix."""
    names = list(p)
    q = benjamini_hochberg(np.concatenate([p[n].ravel() for n in names]))
    out, start = {}, 0
    for n in names:
        out[n] = q[start : start + p[n].size].reshape(p[n].shape)
        start += p[n].size
    return out


@dataclass
class EntryTests:
    """Per-entry p- and q-values of both tests, matrix by matrix, as (d_out, d_in) arrays."""

    p_value: dict[str, np.ndarray]
    p_drift: dict[str, np.ndarray]
    q_value: dict[str, np.ndarray]
    q_drift: dict[str, np.ndarray]
    fdr: float

    def indistinguishable(self, name: str) -> np.ndarray:
        return (self.q_value[name] > self.fdr) & (self.q_drift[name] > self.fdr)

    def combined(self, name: str) -> np.ndarray:
        return combined_pvalues(self.p_value[name], self.p_drift[name])


def entry_tests(trained: Mapping[str, np.ndarray], init: Mapping[str, np.ndarray], fdr: float) -> EntryTests:
    """Both tests on every entry of every matrix (same names and shapes in `trained` and `init`)."""
    if set(trained) != set(init):
        raise ValueError(f"trained and step-0 matrices differ: {sorted(set(trained) ^ set(init))}")
    for name in trained:
        if trained[name].shape != init[name].shape:
            raise ValueError(f"{name}: trained shape {trained[name].shape} != step-0 shape {init[name].shape}")
    p_value = {n: value_pvalues(trained[n], init[n]) for n in trained}
    p_drift = {n: drift_pvalues(trained[n], init[n]) for n in trained}
    return EntryTests(p_value, p_drift, _bh_per_matrix(p_value), _bh_per_matrix(p_drift), fdr)


def matrix_table(tests: EntryTests, trained: Mapping[str, np.ndarray], init: Mapping[str, np.ndarray],
                 roles: Mapping[str, MatrixRole]) -> pd.DataFrame:
    """One row per matrix: the indistinguishable fractions under each test and under both."""
    rows = []
    for name, role in roles.items():
        centre, scale = drift_null(trained[name].astype(np.float64) - init[name])
        null = value_null(init[name])
        rows.append({
            "matrix": name, "layer": role.layer, "matrix_type": role.matrix_type, "n": int(trained[name].size),
            "frac_indist_value": float(np.mean(tests.q_value[name] > tests.fdr)),
            "frac_indist_drift": float(np.mean(tests.q_drift[name] > tests.fdr)),
            "frac_indist": float(np.mean(tests.indistinguishable(name))),
            "init_rms": float(np.sqrt(np.mean(np.square(init[name], dtype=np.float64)))),
            "trained_rms": float(np.sqrt(np.mean(np.square(trained[name], dtype=np.float64)))),
            "drift_centre": centre, "drift_scale": scale,
            "value_null": null.kind, "init_ks_p": null.ks_p, "value_smallest_p": null.smallest_p,
        })
    return pd.DataFrame(rows)


def _edge_statistics(trained: Mapping[str, np.ndarray], init: Mapping[str, np.ndarray],
                     roles: list[MatrixRole], n_edges: int, n_units: int) -> tuple[np.ndarray, ...]:
    """Per edge of one (layer, kind): T (trained), T_0 (step 0), D and the number of entries."""
    t_trained, t_init, d_stat, count = (np.zeros(n_edges) for _ in range(4))
    for role in roles:
        w, w0 = trained[role.name].astype(np.float64), init[role.name].astype(np.float64)
        residual, unit = role.residual_and_unit(w.shape)
        edge = (residual * n_units + unit).ravel()
        sigma0 = np.sqrt(np.mean(np.square(w0)))
        t_trained += np.bincount(edge, weights=np.square(w / sigma0).ravel(), minlength=n_edges)
        t_init += np.bincount(edge, weights=np.square(w0 / sigma0).ravel(), minlength=n_edges)
        d_stat += np.bincount(edge, weights=np.square(_drift_z(w - w0)).ravel(), minlength=n_edges)
        count += np.bincount(edge, minlength=n_edges)
    return t_trained, t_init, d_stat, count


def edge_tests(trained: Mapping[str, np.ndarray], init: Mapping[str, np.ndarray],
               roles: Mapping[str, MatrixRole], d_model: int, units: Mapping[tuple[int, str], int],
               fdr: float) -> pd.DataFrame:
    """One row per (layer, kind): edge counts and indistinguishable fractions (BH across all edges).

    `units[(layer, kind)]` is the number of units of that kind in that layer.
    """
    groups: list[tuple[int, str, np.ndarray, np.ndarray, np.ndarray]] = []
    for (layer, kind), n_units in sorted(units.items()):
        members = [r for r in roles.values() if r.layer == layer and r.kind == kind]
        if not members:
            continue
        t, t0, d, count = _edge_statistics(trained, init, members, d_model * n_units, n_units)
        null = np.sort(t0)
        p_value = (1.0 + null.size - np.searchsorted(null, t, side="left")) / (1.0 + null.size)
        p_drift = stats.chi2.sf(d, count)
        groups.append((layer, kind, p_value, p_drift, count))
    q_value = benjamini_hochberg(np.concatenate([g[2] for g in groups]))
    q_drift = benjamini_hochberg(np.concatenate([g[3] for g in groups]))
    rows, start = [], 0
    for layer, kind, p_value, _, count in groups:
        stop = start + p_value.size
        qv, qd = q_value[start:stop], q_drift[start:stop]
        rows.append({
            "layer": layer, "unit_kind": kind, "n_edges": int(p_value.size), "params_per_edge": float(count.mean()),
            "frac_indist_value": float(np.mean(qv > fdr)), "frac_indist_drift": float(np.mean(qd > fdr)),
            "frac_indist": float(np.mean((qv > fdr) & (qd > fdr))),
        })
        start = stop
    return pd.DataFrame(rows)

