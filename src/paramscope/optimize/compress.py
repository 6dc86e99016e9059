"""Compression curves: remove heads or FFN neuron groups in some order and watch accuracy fall.

"Remove" is zero-ablation of the unit at inference (the atlas's cut: a head's slice of the attention
output projection's input, a neuron group's entries of the MLP down projection's input), which is
what structured pruning of those rows/columns would compute. Units are ranked over all layers at once
and the first ``round(fraction * n)`` are removed. Orders (the first unit is removed first):

- ``importance``: the atlas's dev zero-ablation, least harmful first (`candidates.importance_order`);
- ``magnitude``: the Frobenius norm of the unit's columns of the output projection, smallest first;
- ``wanda``: a structured Wanda score, sum over the unit's columns j and all rows i of
  |W_ij| * ||x_j||, with ||x_j|| the L2 norm of input feature j over every real token of the task's
  dev contexts (Sun et al. 2023 score single weights per output row; a unit sums its weights' scores);
- ``random``: a seeded permutation (several seeds give a band).

Every statistic that orders units comes from weights or from dev documents, never from test.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from paramscope.ablation.interventions import UnitSpec, record
from paramscope.evaluation.documents import Doc
from paramscope.models.adapters import Adapter, weight_in_out
from paramscope.optimize.profile import Unit

COMPRESS_GROUPS = ("heads", "neurons")
ORDERINGS = ("importance", "magnitude", "wanda", "random")


def _columns(adapter: Adapter, unit: Unit) -> tuple[Tensor, list[int]]:
    """The output projection whose input the unit lives in, as (d_out, d_in), and the unit's columns."""
    if unit.group == "heads":
        proj = adapter.attn_out_proj(unit.layer)
        (h,) = unit.units
        return weight_in_out(proj), list(range(h * adapter.d_head, (h + 1) * adapter.d_head))
    if unit.group == "neurons":
        return weight_in_out(adapter.mlp_down_proj(unit.layer)), list(unit.units)
    raise ValueError(f"compression removes heads or neuron groups, not '{unit.group}'")


@torch.no_grad()
def magnitude_scores(adapter: Adapter, units: Sequence[Unit]) -> np.ndarray:
    scores = []
    for unit in units:
        weight, cols = _columns(adapter, unit)
        scores.append(float(weight[:, cols].double().norm()))
    return np.array(scores)


@torch.inference_mode()
def input_norms(adapter: Adapter, docs: Sequence[Doc], group: str, batch_size: int = 64) -> dict[int, Tensor]:
    """Per layer, the L2 norm of each input feature of the group's output projection over every real
    (unpadded) token of ``docs``' contexts: Wanda's ||x_j||."""
    if not docs:
        raise ValueError("input norms need at least one document")
    model = adapter.model
    device = next(model.parameters()).device
    sites = [(group, layer) for layer in range(adapter.n_layers)]
    squares: dict[int, Tensor] = {}
    for start in range(0, len(docs), batch_size):
        batch = docs[start: start + batch_size]
        width = max(len(d.context) for d in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, doc in enumerate(batch):
            ids[row, : len(doc.context)] = torch.tensor(doc.context)
            mask[row, : len(doc.context)] = 1
        with record(adapter, sites) as seen:  # right padding: real positions never see the pads
            model.base_model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
        real = mask.bool().to(device)
        for _, layer in sites:
            [acts] = seen[(group, layer)]
            total = acts[real].double().pow(2).sum(0)
            squares[layer] = squares[layer] + total if layer in squares else total
    return {layer: s.sqrt() for layer, s in squares.items()}


@torch.no_grad()
def wanda_scores(adapter: Adapter, units: Sequence[Unit], norms: dict[int, Tensor]) -> np.ndarray:
    scores = []
    for unit in units:
        weight, cols = _columns(adapter, unit)
        x = norms[unit.layer][cols].to(weight.device)
        scores.append(float((weight[:, cols].double().abs() * x).sum()))
    return np.array(scores)


def ascending(units: Sequence[Unit], scores: np.ndarray) -> list[Unit]:
    """Units from the smallest score to the largest (stable: ties keep unit order)."""
    return [units[i] for i in np.argsort(scores, kind="stable")]


def random_order(units: Sequence[Unit], seed: int) -> list[Unit]:
    return [units[i] for i in np.random.default_rng(seed).permutation(len(units))]


def n_removed(fraction: float, n_units: int) -> int:
    """How many units a fraction removes: round half up, so 0.5 of 3 removes 2 in any numpy."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"compression fractions lie in [0, 1), got {fraction}")
    return int(np.floor(fraction * n_units + 0.5))


def removal_specs(removed: Sequence[Unit]) -> list[UnitSpec]:
    """One zero spec per (group, layer), listing every removed unit of that site."""
    by_site: dict[tuple[str, int], set[int]] = {}
    for unit in removed:
        by_site.setdefault((unit.group, unit.layer), set()).update(unit.units)
    return [UnitSpec(group, layer, tuple(sorted(us)), "zero") for (group, layer), us in sorted(by_site.items())]
