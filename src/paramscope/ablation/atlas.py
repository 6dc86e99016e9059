"""Ablation maps: every unit of a group ablated in turn, each paired with the clean model.

A *map* (model x task x split x group x op x value) is one grid cell and one Parquet file; its rows
are the units. Statistics per row are paired against the clean model on the same documents.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
from tqdm import tqdm

from paramscope.ablation.interventions import UnitSpec, apply
from paramscope.evaluation.requests import Doc
from paramscope.evaluation.scorer import Scores, score
from paramscope.models.adapters import Adapter
from paramscope.stats import paired_bootstrap_ci, paired_delta_summary

MAP_GROUPS = ("heads", "neurons", "attn", "mlp", "layers")
MAP_OPS = ("zero", "scale")


def unit_specs(adapter: Adapter, group: str, op: str, value: float, neuron_block: int = 64) -> Iterator[UnitSpec]:
    """Every unit of ``group``: heads one by one, neurons in contiguous blocks, sublayers, layers."""
    for layer in range(adapter.n_layers):
        if group == "heads":
            for h in range(adapter.n_heads):
                yield UnitSpec("heads", layer, (h,), op, value)
        elif group == "neurons":
            for start in range(0, adapter.d_ffn, neuron_block):
                yield UnitSpec("neurons", layer, tuple(range(start, min(start + neuron_block, adapter.d_ffn))), op, value)
        else:
            yield UnitSpec(group, layer, (), op, value)


def unit_label(spec: UnitSpec) -> int:
    """The row's ``unit`` column: head index, first neuron of a block, or -1 for a whole site."""
    return spec.units[0] if spec.units else -1


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
    specs = list(unit_specs(adapter, group, op, value, neuron_block))
    for spec in tqdm(specs, desc=f"{group}/{op}={value}", leave=False):
        with apply(adapter, [spec]):
            ablated = score(adapter.model, docs, batch_size)
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


def effect(df: pd.DataFrame) -> np.ndarray:
    """Importance of each unit: how much accuracy its ablation costs (positive = the task needs it)."""
    return -df["delta_acc"].to_numpy()
