"""Pairwise non-additivity among a map's top units (STUDY.md section 3: entanglement).

The top ``k`` units of a zero-ablation map are chosen on the selection documents (the task's dev
split), never on the documents they are reported on. Every pair of them is then ablated jointly
and compared with the two single ablations on the same documents. With damage = -delta accuracy,

    non-additivity = damage(i and j) - damage(i) - damage(j)
                   = mean over documents of (c_i + c_j - c_clean - c_ij),

so each document contributes one paired value and the bootstrap CI resamples documents once for all
four conditions. > 0: the pair hurts more than the two singles together (the units back each other
up); < 0: it hurts less (a shared pathway that one ablation already breaks, or a saturated metric).
"""

from __future__ import annotations

from itertools import combinations

import pandas as pd

from paramscope.ablation.engine import fast_map
from paramscope.ablation.interventions import UnitSpec, apply
from paramscope.evaluation.documents import Doc, Scores
from paramscope.evaluation.scorer import score
from paramscope.models.adapters import Adapter
from paramscope.stats import paired_bootstrap_ci, paired_delta_summary

PAIR_GROUPS = ("heads", "neurons")


def _short(spec: UnitSpec) -> str:
    letter = "H" if spec.group == "heads" else "N"
    return f"L{spec.layer}{letter}{spec.units[0]}"


def top_units(adapter: Adapter, select_docs: tuple[Doc, ...], group: str, k: int, batch_size: int = 64,
              neuron_block: int = 64) -> list[tuple[UnitSpec, float]]:
    """The ``k`` units whose zero ablation costs most accuracy on ``select_docs`` (ties: gold log-lik.).

    Returns (spec, damage on the selection documents) in rank order; the ranking is deterministic.
    """
    if group not in PAIR_GROUPS:
        raise ValueError(f"pairs are formed among heads or neuron blocks; got '{group}'")
    clean = score(adapter.model, select_docs, batch_size)
    maps = fast_map(adapter, select_docs, group, "zero", 0.0, batch_size, neuron_block=neuron_block)
    ranked = sorted(
        enumerate(maps),
        key=lambda im: (-(clean.correct.mean() - im[1][1].correct.mean()),
                        -(clean.gold_ll.mean() - im[1][1].gold_ll.mean()), im[0]),
    )
    if k > len(ranked):
        raise ValueError(f"k={k} exceeds the {len(ranked)} units of group '{group}'")
    return [(spec, float(clean.correct.mean() - s.correct.mean())) for _, (spec, s) in ranked[:k]]


def pair_map(adapter: Adapter, select_docs: tuple[Doc, ...], docs: tuple[Doc, ...], clean: Scores, group: str,
             k: int, n_resamples: int, seed: int, batch_size: int = 64, neuron_block: int = 64) -> pd.DataFrame:
    """One row per pair of the top ``k`` units (chosen on ``select_docs``), measured on ``docs``."""
    tops = top_units(adapter, select_docs, group, k, batch_size, neuron_block)
    specs = [spec for spec, _ in tops]
    singles = {spec: s for spec, s in fast_map(adapter, docs, group, specs=specs, batch_size=batch_size)}
    c0 = clean.correct.astype(float)
    rows = []
    for n, (a, b) in enumerate(combinations(specs, 2)):
        with apply(adapter, [a, b]):  # zero edits compose, also on one site
            joint = score(adapter.model, docs, batch_size)
        ca, cb, cj = (x.correct.astype(float) for x in (singles[a], singles[b], joint))
        # mean(b - a) with a = c_ij + c_clean and b = c_i + c_j: the per-document non-additivity
        point, low, high = paired_bootstrap_ci(cj + c0, ca + cb, n_resamples, seed=seed)
        rows.append({
            "group": "pairs",
            "layer": -1,
            "unit": n,
            "n_units": 2,
            "op": "zero",
            "value": 0.0,
            "unit_name": f"{_short(a)}+{_short(b)}",
            "pair_group": group,
            "unit_a": _short(a),
            "unit_b": _short(b),
            "rank_a": specs.index(a),
            "rank_b": specs.index(b),
            "n": len(docs),
            **paired_delta_summary(clean.correct, joint.correct, n_resamples=n_resamples, seed=seed),
            "delta_acc_a": float(ca.mean() - c0.mean()),
            "delta_acc_b": float(cb.mean() - c0.mean()),
            "nonadd": point,
            "nonadd_ci_low": low,
            "nonadd_ci_high": high,
            "loss": float(-joint.gold_ll.mean()),
            "loss_clean": float(-clean.gold_ll.mean()),
            "delta_loss": float(clean.gold_ll.mean() - joint.gold_ll.mean()),
            "ex_correct": joint.correct.tolist(),
            "ex_gold_ll": joint.gold_ll.tolist(),
        })
    return pd.DataFrame(rows)
