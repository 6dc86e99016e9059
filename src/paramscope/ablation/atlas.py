"""Ablation maps: every unit of a group ablated in turn, each paired with the clean model.

A *map* (model x task x split x group x op x value) is one grid cell and one Parquet file; its rows
are the units. Statistics per row are paired against the clean model on the same documents.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm import tqdm

from paramscope.ablation.engine import FAST_OPS, fast_map
from paramscope.ablation.interventions import UnitSpec, apply
from paramscope.ablation.units import unit_label, unit_specs
from paramscope.evaluation.requests import Doc
from paramscope.evaluation.scorer import Scores, score
from paramscope.models.adapters import Adapter
from paramscope.stats import paired_bootstrap_ci, paired_delta_summary

MAP_GROUPS = ("heads", "neurons", "attn", "mlp", "layers")
MAP_OPS = ("zero", "scale")


def paired_row(clean: Scores, ablated: Scores, n_resamples: int, seed: int) -> dict:
    """Accuracy and loss deltas of one ablation against the clean model, with CI and McNemar p."""
    stats = paired_delta_summary(clean.correct, ablated.correct, n_resamples=n_resamples, seed=seed)
    dloss, dloss_lo, dloss_hi = paired_bootstrap_ci(-clean.gold_ll, -ablated.gold_ll, n_resamples, seed=seed)
    return {
        "n": len(clean.gold),
        **stats,
        "loss": float(-ablated.gold_ll.mean()),
        "loss_clean": float(-clean.gold_ll.mean()),
        "delta_loss": dloss,
        "delta_loss_ci_low": dloss_lo,
        "delta_loss_ci_high": dloss_hi,
        "ex_correct": ablated.correct.tolist(),
        "ex_gold_ll": ablated.gold_ll.tolist(),
    }


def ablation_map(
    adapter: Adapter,
    docs: tuple[Doc, ...],
    group: str,
    op: str,
    value: float,
    clean: Scores,
    n_resamples: int,
    seed: int,
    batch_size: int = 64,
    neuron_block: int = 64,
) -> pd.DataFrame:
    """One row per unit: the model scored with that unit ablated, paired with ``clean``."""
    rows = []
    if op in FAST_OPS:  # the engine: clean trunk once, ablated variants batched from their layer on
        results = fast_map(adapter, docs, group, op, value, batch_size, neuron_block=neuron_block)
    else:
        results = [(spec, _loop_scores(adapter, docs, spec, batch_size))
                   for spec in tqdm(list(unit_specs(adapter, group, op, value, neuron_block)), leave=False)]
    for spec, ablated in results:
        rows.append(
            {
                "group": group,
                "layer": spec.layer,
                "unit": unit_label(spec),
                "n_units": max(1, len(spec.units)),
                "op": op,
                "value": float(value),
                **paired_row(clean, ablated, n_resamples, seed),
            }
        )
    return pd.DataFrame(rows)


def _loop_scores(adapter: Adapter, docs: tuple[Doc, ...], spec: UnitSpec, batch_size: int) -> Scores:
    """The plain way: the whole model scored once with one unit ablated."""
    with apply(adapter, [spec]):
        return score(adapter.model, docs, batch_size)


def effect(df: pd.DataFrame) -> np.ndarray:
    """Importance of each unit: how much accuracy its ablation costs (positive = the task needs it)."""
    return -df["delta_acc"].to_numpy()
