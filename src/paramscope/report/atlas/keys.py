"""How the atlas keys its maps, names its map types and units, and orders its rows.

A map is every unit of one group ablated one way (``op``, ``value``) for one model, task and split.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from paramscope.report.order import sort_rows
from paramscope.report.settings import Settings

GROUP_ORDER = ("heads", "neurons", "single_neurons", "neuron_clusters", "attn", "mlp", "layers")
UNIT_GROUPS = ("heads", "neurons")  # many units per layer: heatmaps, top-k tables, Spearman of maps
SITE_GROUPS = ("attn", "mlp", "layers")  # one unit per layer: layer profiles
MAP_KEYS = ["model", "task", "split", "group", "op", "value"]


def in_report_order(df: pd.DataFrame, s: Settings, extra: Sequence[str] = ()) -> pd.DataFrame:
    """Rows in the paper's order (models and tasks as configured), independent of file names."""
    ranked = (("model", s.models), ("task", s.tasks), ("split", (s.select_split, s.split)), ("group", GROUP_ORDER))
    return sort_rows(df, ranked, then=("op", "value", *extra))


def map_label(group: str, op: str, value: float) -> str:
    """A map type as one word: 'heads' for zero ablation, 'heads-scale2' for scaling by 2."""
    return group if op == "zero" else f"{group}-{op}{value:g}"


def unit_name(group: str, layer: int, unit: int, n_units: int = 1) -> str:
    """How a unit is written in tables: L2H1, L0N64-127 (a neuron block), L3 attn, layer 3."""
    if group == "heads":
        return f"L{layer}H{unit}"
    if group in ("neurons", "single_neurons"):
        return f"L{layer}N{unit}" if n_units <= 1 else f"L{layer}N{unit}-{unit + n_units - 1}"
    if group == "neuron_clusters":  # a cluster is named by its first neuron (clusters partition a layer)
        return f"L{layer}C{unit} ({n_units} neurons)"
    if group == "layers":
        return f"layer {layer}"
    return f"L{layer} {'MLP' if group == 'mlp' else group}"
