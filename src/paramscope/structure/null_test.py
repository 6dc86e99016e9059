"""Which trained weights are statistically indistinguishable from their initialisation.

Two reference checkpoints per model (`structure.null_models`, `structure.drift_references`):

- its **step-0 checkpoint**, the model's real initialisation (for the tiny study `scratch-step0`, which
  `gen2` and `tuned` share because they were fine-tuned from `scratch`; for Pythia its `step0` revision);
- its **noise twin** (`paramscope.models.noise_twin`): the same start trained with the same optimiser,
  schedule and number of steps on uniformly random tokens, i.e. how far weights move when there is
  nothing to learn. A model without one (Pythia's hub checkpoints: its recipe is not rerun here) gets no
  drift test, and the value test decides alone; its rows say so (`drift_null` = "none").

Two tests per entry of every attention and MLP projection, each against a null per matrix:

- **value test** (is w_T a plausible draw of this matrix's initialisation?): the reference is the n
  step-0 entries of the same matrix, centred at 0 (every init the study meets is symmetric about 0).
- **drift test** (did d = w_T - w_0 move further than a weight moves without a learning signal?): the
  reference is the twin's drifts d_ref = w_twin - w_0 of the same matrix, centred at their median. Not
  the trained drifts themselves: a null scaled by them calls the bulk of every matrix null however far
  it moved. Under AdamW a weight with zero-mean gradient noise still random-walks by about the learning
  rate per step, so "no drift" is no null either.

Each reference sample r is a two-sided null through |x - c| (`ReferenceNull`). Where r is consistent
with a normal (Kolmogorov-Smirnov against N(c, s^2), s the RMS of r - c, p >= `NORMAL_FIT_ALPHA`; true of
the step-0 entries of every family here, and of some twins' drifts), p = 2 Phi(-|x - c| / s), whose
smallest attainable value is below 1e-300. Otherwise it is the empirical add-one tail
p = (1 + #{|r - c| >= |x - c|}) / (1 + n),
valid under the null but never below 1/(n + 1): with BH over all of a model's entries (m of them) such an
entry can only be rejected along with at least m / ((n + 1) fdr) others, which is why the normal is
preferred where it holds.

Benjamini-Hochberg q-values are taken across all tested entries of the model, per test. An entry is
*indistinguishable* when no test rejects at the FDR level. For annealing the two are merged into one
evidence score by Bonferroni: p = min(1, 2 min(p_value, p_drift)) (p_value alone without a drift test).

**Edges** (`units.py`: all entries of a block that link residual channel i and unit u) aggregate the
same standardised entries, each null from the same statistic over every edge of the same kind (heads or
neurons) in the same block, p = (1 + #{null >= statistic}) / (1 + n_edges):

- value: T = sum (w_T / s_0)^2, s_0 the RMS of the step-0 matrix; null: T of the step-0 weights.
- drift: D = sum ((d - c) / s)^2, c and s the centre and RMS of the twin's drifts of the matrix; null: D
  of the twin's drifts.

Biases, norms, embeddings and the unembedding are not tested: their step-0 values are constants
(norms 1, biases 0) or they are not part of a block's unit structure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from paramscope.stats import benjamini_hochberg
from paramscope.structure.units import MatrixRole

Matrices = Mapping[str, np.ndarray]  # matrix name -> (d_out, d_in) array

# A reference sample that a KS test rejects as N(c, s^2) at this level takes the empirical null.
NORMAL_FIT_ALPHA = 1e-3


@dataclass(frozen=True, eq=False)
class ReferenceNull:
    """A two-sided null for one matrix: `normal` (N(centre, scale^2)) or `empirical` (the reference sample)."""

    kind: str
    centre: float
    scale: float  # RMS of the reference about the centre
    ks_p: float  # KS test of the reference against N(centre, scale^2)
    n: int  # size of the reference sample
    deviations: np.ndarray | None  # |reference - centre|, sorted (the empirical null only)

    @property
    def smallest_p(self) -> float:
        """The smallest p-value this null can give (the normal tail's underflow; 1/(n+1) empirically)."""
        return float(np.finfo(np.float64).tiny) if self.kind == "normal" else 1.0 / (self.n + 1)

    def standardised(self, x: np.ndarray) -> np.ndarray:
        """|x - centre| / scale; where the reference never moved, 0 at the centre and inf elsewhere."""
        deviation = np.abs(np.asarray(x, dtype=np.float64) - self.centre)
        if self.scale > 0:
            return deviation / self.scale
        return np.where(deviation > 0, np.inf, 0.0)

    def pvalues(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "normal":
            return np.minimum(1.0, 2.0 * stats.norm.sf(self.standardised(x)))
        return _upper_tail(self.deviations, np.abs(np.asarray(x, dtype=np.float64) - self.centre))


def _upper_tail(null_sorted: np.ndarray, statistic: np.ndarray) -> np.ndarray:
    """Add-one empirical p-value of each statistic against a sorted null sample: (1 + #{null >= s}) / (1 + n)."""
    at_least = null_sorted.size - np.searchsorted(null_sorted, statistic, side="left")
    return (1.0 + at_least) / (1.0 + null_sorted.size)


def reference_null(sample: np.ndarray, centre: float) -> ReferenceNull:
    r = np.asarray(sample, dtype=np.float64).ravel()
    scale = float(np.sqrt(np.mean(np.square(r - centre))))
    ks_p = float(stats.kstest(r, "norm", args=(centre, scale)).pvalue) if scale > 0 else 0.0
    if ks_p >= NORMAL_FIT_ALPHA:
        return ReferenceNull("normal", centre, scale, ks_p, r.size, None)
    return ReferenceNull("empirical", centre, scale, ks_p, r.size, np.sort(np.abs(r - centre)))


def value_null(init: np.ndarray) -> ReferenceNull:
    """The value test's null: the step-0 entries of the matrix, about 0."""
    return reference_null(init, 0.0)


def drift_null(reference_drift: np.ndarray) -> ReferenceNull:
    """The drift test's null: the noise twin's drifts of the matrix, about their median."""
    return reference_null(reference_drift, float(np.median(reference_drift)))


def combined_pvalues(p_value: np.ndarray, p_drift: np.ndarray) -> np.ndarray:
    """Bonferroni of the two tests: evidence that an entry was learned, by either test."""
    return np.minimum(1.0, 2.0 * np.minimum(p_value, p_drift))


@dataclass(frozen=True)
class Weights:
    """One model's projections, matrix by matrix: trained, at step 0, and its noise twin's (None: no twin)."""

    trained: Matrices
    init: Matrices
    noise_twin: Matrices | None

    def __post_init__(self) -> None:
        for label, other in (("step-0", self.init), ("noise twin", self.noise_twin)):
            if other is None:
                continue
            if set(self.trained) != set(other):
                raise ValueError(f"trained and {label} matrices differ: {sorted(set(self.trained) ^ set(other))}")
            for name, w in self.trained.items():
                if w.shape != other[name].shape:
                    raise ValueError(f"{name}: trained shape {w.shape} != {label} shape {other[name].shape}")

    def drift(self, name: str) -> np.ndarray:
        return self.trained[name].astype(np.float64) - self.init[name]

    def twin_drift(self, name: str) -> np.ndarray:
        return self.noise_twin[name].astype(np.float64) - self.init[name]


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
class EntryTest:
    """One test on every entry: its null per matrix, and p- and q-values as (d_out, d_in) arrays."""

    nulls: dict[str, ReferenceNull]
    p: dict[str, np.ndarray]
    q: dict[str, np.ndarray]

    @classmethod
    def run(cls, nulls: dict[str, ReferenceNull], subject: Mapping[str, np.ndarray]) -> EntryTest:
        p = {n: nulls[n].pvalues(x) for n, x in subject.items()}
        return cls(nulls, p, _bh_per_matrix(p))


@dataclass
class EntryTests:
    """Both tests of one model; `drift` is None where the model has no noise twin."""

    value: EntryTest
    drift: EntryTest | None
    fdr: float

    def indistinguishable(self, name: str) -> np.ndarray:
        kept = self.value.q[name] > self.fdr
        return kept if self.drift is None else kept & (self.drift.q[name] > self.fdr)

    def combined(self, name: str) -> np.ndarray:
        p = self.value.p[name]
        return p if self.drift is None else combined_pvalues(p, self.drift.p[name])


def entry_tests(weights: Weights, fdr: float) -> EntryTests:
    """Both tests on every entry of every matrix (the drift test only where there is a twin)."""
    names = list(weights.trained)
    value = EntryTest.run({n: value_null(weights.init[n]) for n in names}, weights.trained)
    drift = None
    if weights.noise_twin is not None:
        drift = EntryTest.run({n: drift_null(weights.twin_drift(n)) for n in names},
                              {n: weights.drift(n) for n in names})
    return EntryTests(value, drift, fdr)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def matrix_table(tests: EntryTests, weights: Weights, roles: Mapping[str, MatrixRole]) -> pd.DataFrame:
    """One row per matrix: the indistinguishable fractions under each test and under both, and both nulls."""
    rows = []
    for name, role in roles.items():
        value, drift = tests.value.nulls[name], tests.drift.nulls[name] if tests.drift else None
        rows.append({
            "matrix": name, "layer": role.layer, "matrix_type": role.matrix_type, "n": int(weights.trained[name].size),
            "frac_indist_value": float(np.mean(tests.value.q[name] > tests.fdr)),
            "frac_indist_drift": float(np.mean(tests.drift.q[name] > tests.fdr)) if drift else float("nan"),
            "frac_indist": float(np.mean(tests.indistinguishable(name))),
            "init_rms": value.scale, "trained_rms": _rms(weights.trained[name]), "drift_rms": _rms(weights.drift(name)),
            "value_null": value.kind, "init_ks_p": value.ks_p, "value_smallest_p": value.smallest_p,
            "drift_null": drift.kind if drift else "none",
            "drift_ref_centre": drift.centre if drift else float("nan"),
            "drift_ref_scale": drift.scale if drift else float("nan"),
            "drift_ref_ks_p": drift.ks_p if drift else float("nan"),
            "drift_smallest_p": drift.smallest_p if drift else float("nan"),
        })
    return pd.DataFrame(rows)


def _edge_sums(entries: Callable[[str], np.ndarray], roles: list[MatrixRole], n_edges: int, n_units: int) -> np.ndarray:
    """Per edge of one (layer, kind): the sum of `entries(matrix)` over the edge's entries in every matrix."""
    total = np.zeros(n_edges)
    for role in roles:
        x = entries(role.name)
        residual, unit = role.residual_and_unit(x.shape)
        total += np.bincount((residual * n_units + unit).ravel(), weights=x.ravel(), minlength=n_edges)
    return total


def _squared(null: ReferenceNull, x: np.ndarray) -> np.ndarray:
    return np.square(null.standardised(x))


def edge_tests(tests: EntryTests, weights: Weights, roles: Mapping[str, MatrixRole], d_model: int,
               units: Mapping[tuple[int, str], int]) -> pd.DataFrame:
    """One row per (layer, kind): edge counts and indistinguishable fractions (BH across all edges, per test).

    `units[(layer, kind)]` is the number of units of that kind in that layer.
    """
    value = tests.value.nulls
    statistics = {  # per test: the squared standardised entries of the subject and of its reference
        "value": (lambda n: _squared(value[n], weights.trained[n]), lambda n: _squared(value[n], weights.init[n])),
    }
    if tests.drift is not None:
        drift = tests.drift.nulls
        statistics["drift"] = (lambda n: _squared(drift[n], weights.drift(n)),
                               lambda n: _squared(drift[n], weights.twin_drift(n)))
    groups: list[tuple[int, str, np.ndarray, dict[str, np.ndarray]]] = []
    for (layer, kind), n_units in sorted(units.items()):
        members = [r for r in roles.values() if r.layer == layer and r.kind == kind]
        if not members:
            continue
        n_edges = d_model * n_units
        p = {test: _upper_tail(np.sort(_edge_sums(reference, members, n_edges, n_units)),
                               _edge_sums(subject, members, n_edges, n_units))
             for test, (subject, reference) in statistics.items()}
        count = _edge_sums(lambda n: np.ones(weights.trained[n].shape), members, n_edges, n_units)
        groups.append((layer, kind, count, p))
    q = {test: benjamini_hochberg(np.concatenate([g[3][test] for g in groups])) for test in statistics}
    rows, start = [], 0
    for layer, kind, count, _ in groups:
        stop = start + count.size
        kept = {test: q[test][start:stop] > tests.fdr for test in statistics}
        both = kept["value"] & kept["drift"] if "drift" in kept else kept["value"]
        rows.append({
            "layer": layer, "unit_kind": kind, "n_edges": int(count.size), "params_per_edge": float(count.mean()),
            "frac_indist_value": float(np.mean(kept["value"])),
            "frac_indist_drift": float(np.mean(kept["drift"])) if "drift" in kept else float("nan"),
            "frac_indist": float(np.mean(both)),
        })
        start = stop
    return pd.DataFrame(rows)
