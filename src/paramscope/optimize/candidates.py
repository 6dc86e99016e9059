"""The searchable units of a model and their order of promise, read from the ablation atlas (dev only).

The atlas measured what happens to a task when each unit is zeroed (and, for some groups, scaled by
0.5, 1.5 and 2). A unit whose ablation moves the task a lot is a lever; one that moves nothing is
unlikely to help when scaled. Candidates are therefore ranked by their largest atlas effect on the
*dev* split: |delta accuracy| first and |delta loss| (mean gold log-likelihood) to break ties, which
matters on tasks where the clean model is at ceiling and accuracy rarely moves.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from paramscope.errors import StudyError
from paramscope.models.adapters import Adapter
from paramscope.optimize.profile import Unit

SEARCH_GROUPS = ("heads", "neurons", "attn", "mlp")  # the scale factors a profile may hold
RANK_OPS = ("zero", "scale")  # atlas operations that say how much a unit's size matters
SELECT_SPLIT = "dev"


def search_units(adapter: Adapter, groups: tuple[str, ...] | list[str], neuron_block: int) -> list[Unit]:
    """Every unit of ``groups``: each head, each block of ``neuron_block`` FFN neurons, each sublayer."""
    bad = [g for g in groups if g not in SEARCH_GROUPS]
    if bad:
        raise StudyError(f"unknown search group {bad[0]!r}; valid: {', '.join(SEARCH_GROUPS)}")
    units = []
    for group in groups:
        for layer in range(adapter.n_layers):
            if group == "heads":
                units += [Unit("heads", layer, (h,)) for h in range(adapter.n_heads)]
            elif group == "neurons":
                units += [Unit("neurons", layer, tuple(range(s, min(s + neuron_block, adapter.d_ffn))))
                          for s in range(0, adapter.d_ffn, neuron_block)]
            else:
                units.append(Unit(group, layer))
    return sorted(units, key=Unit.sort_key)


KEYS = ["group", "layer", "unit"]


def _dev_rows(atlas: pd.DataFrame, digest: str, task: str, units: list[Unit], ops: tuple[str, ...]) -> pd.DataFrame:
    """The atlas's dev rows of ``ops`` for exactly these units of this model and task, checked.

    Refuses an atlas made for other weights, or one that lacks a unit's zero-ablation on dev.
    """
    rows = atlas[(atlas.task == task) & (atlas.split == SELECT_SPLIT) & atlas.op.isin(ops)]
    mine = rows[rows.digest == digest]
    if mine.empty:
        found = sorted(set(atlas[atlas.task == task].digest))
        raise StudyError(f"no dev atlas rows for task '{task}' and model digest {digest} (atlas has "
                         f"{', '.join(found) or 'none'}); run the ablate stage for this model first")
    groups = sorted({u.group for u in units})
    sizes = {len(u.units) for u in units if u.group == "neurons"}
    # the atlas's neuron blocks must be the profile's neuron groups
    mine = mine[mine.group.isin(groups) & ((mine.group != "neurons") | mine.n_units.isin(sizes))]
    zero = set(mine[mine.op == "zero"][KEYS].itertuples(index=False, name=None))
    missing = [u.name for u in units if (u.group, u.layer, u.label) not in zero]
    if missing:
        raise StudyError(f"the atlas lacks dev zero-ablations of {len(missing)} units for task '{task}' "
                         f"(e.g. {missing[0]}); run the ablate stage for groups {', '.join(groups)}")
    return mine


def _per_unit(rows: pd.DataFrame, units: list[Unit], how: str) -> pd.DataFrame:
    return rows.groupby(KEYS)[["delta_acc", "delta_loss"]].agg(how).loc[[(u.group, u.layer, u.label) for u in units]]


def rank_candidates(atlas: pd.DataFrame, digest: str, task: str, units: list[Unit]) -> list[Unit]:
    """``units`` from the largest dev atlas effect to the smallest (stable: ties keep unit order)."""
    rows = _dev_rows(atlas, digest, task, units, RANK_OPS)
    effect = _per_unit(rows.assign(delta_acc=rows.delta_acc.abs(), delta_loss=rows.delta_loss.abs()), units, "max")
    order = np.lexsort((np.arange(len(units)), -effect.delta_loss.to_numpy(), -effect.delta_acc.to_numpy()))
    return [units[i] for i in order]


def importance_order(atlas: pd.DataFrame, digest: str, task: str, units: list[Unit]) -> list[Unit]:
    """Compression order: the least harmful zero-ablation on dev first (largest delta_acc, then the
    smallest loss increase), so that the units the task needs are removed last."""
    zero = _per_unit(_dev_rows(atlas, digest, task, units, ("zero",)), units, "first")
    order = np.lexsort((np.arange(len(units)), zero.delta_loss.to_numpy(), -zero.delta_acc.to_numpy()))
    return [units[i] for i in order]
