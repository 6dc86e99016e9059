"""Ablation maps: every unit of a group ablated in turn, each paired with the clean model.

A *map* (model x task x split x group x op x value) is one grid cell and one Parquet file; its rows
are the units. Statistics per row are paired against the clean model on the same documents.

Activation groups (heads, neurons, attn, mlp, layers) take every op: `zero` and `scale` run on the fast
engine; `mean`, `noise` and `resample` under the intervention's hooks, with reference activations from
the task's dev documents (`reference`). Weight groups (matrix, magnitude, random; see `weights`) take
`zero` and `scale`, with the weights edited reversibly. Both run through `engine.branched_scores`:
blocks before the ablated one come from one clean forward per batch of documents, not one per unit.

`mean` and `resample` replace the unit at every position by a reference activation taken at the same
position counted from the end of the context (`alignment`): the last context token gets a last context
token's activation, earlier tokens the activation as far before the end, choice tokens the activation
at the same place in a gold continuation. A single last-position statistic written everywhere would
put, at every earlier position, an activation that later layers never see there. `noise` adds Gaussian
noise with std = value x the unit's matched std, sqrt(mean over the unit's dimensions of their
variance across dev documents at the last context position, the one the scorer reads), so value=1 is
noise as large as the unit's natural variation; it is seeded per unit (seed, unit order).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from paramscope.ablation.alignment import AlignedActivations, layout_of_batch
from paramscope.ablation.engine import FAST_OPS, branched_scores, fast_map
from paramscope.ablation.interventions import GROUPS, Site, UnitSpec, apply, n_units
from paramscope.ablation.neuron_groups import NEURON_GROUPINGS, cluster_specs
from paramscope.ablation.reference import last_context_activations, resample_pool, site_stats
from paramscope.ablation.resample import ResamplePool
from paramscope.ablation.screen import attribution_screen
from paramscope.ablation.units import unit_label, unit_name, unit_specs
from paramscope.ablation.weights import (
    WEIGHT_GROUPS,
    WEIGHT_OPS,
    WeightUnit,
    edited,
    first_layer,
    weight_units,
)
from paramscope.evaluation.documents import Doc, Scores
from paramscope.evaluation.packing import Batch
from paramscope.models.adapters import Adapter
from paramscope.stats import paired_bootstrap_ci, paired_delta_summary

MAP_GROUPS = (*GROUPS, *NEURON_GROUPINGS, *WEIGHT_GROUPS)
MAP_OPS = ("zero", "scale", "mean", "noise", "resample")
STAT_OPS = ("mean", "noise", "resample")  # ops that need reference activations from dev documents


def matched_std(adapter: Adapter, spec: UnitSpec, stds: Mapping[Site, Tensor]) -> float:
    """The unit's natural variation: sqrt of the mean, over its dimensions, of their variance."""
    per_unit = stds[spec.site].reshape(n_units(adapter, spec.group), -1)
    selected = per_unit[list(spec.units) or [0]]
    return float(selected.double().pow(2).mean().sqrt())


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


# Groups with many units per layer, where a cheap ranking is what the screen is for.
SCREENED_GROUPS = ("heads", "neurons")


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
    reference: tuple[Doc, ...] | None = None,
    magnitude_bins: int = 10,
    exact_units: int | None = None,
    single_neuron_units: int = 16,
) -> pd.DataFrame:
    """One row per unit: the model scored with that unit ablated, paired with ``clean``.

    ``exact_units`` = k makes a zero map of heads or neurons *screened*: only the dev screen's top k
    units and k random others are computed exactly (`screened_specs`), for models too large for every
    unit; None computes every unit.

    ``reference`` (the task's dev documents) gives the statistics of ``mean`` and ``noise`` and the donors
    of ``resample``; ``seed`` also seeds the noise, the donor draw and the random controls. Weight groups use
    ``magnitude_bins`` bins.
    The neuron groupings (`neuron_groups`) are zero maps chosen on ``reference``: single neurons screened
    (``single_neuron_units`` top and as many random ones), clusters fitted there.
    """
    if group in WEIGHT_GROUPS:
        return _weight_map(adapter, docs, group, op, value, clean, n_resamples, seed, batch_size, magnitude_bins)
    if group not in (*GROUPS, *NEURON_GROUPINGS) or op not in MAP_OPS:
        raise ValueError(f"unknown map {group}/{op}; groups: {', '.join(MAP_GROUPS)}; ops: {', '.join(MAP_OPS)}")
    rows = []
    screen = None
    checked: list[str] | None = None
    if group in NEURON_GROUPINGS:
        if op != "zero" or reference is None:
            raise ValueError(f"group '{group}' is a zero map chosen on reference documents (the task's dev split)")
        if group == "single_neurons":
            specs, checked = screened_specs(adapter, reference, "neurons", 1, single_neuron_units, seed, batch_size)
        else:
            specs = cluster_specs(last_context_activations(adapter, reference, "neurons", batch_size), adapter.d_ffn,
                                  neuron_block, seed)
        results = fast_map(adapter, docs, "neurons", batch_size=batch_size, specs=specs)
    elif exact_units is not None and op == "zero" and group in SCREENED_GROUPS:
        if reference is None:
            raise ValueError("a screened map needs reference documents (the task's dev split) to choose units on")
        specs, checked = screened_specs(adapter, reference, group, neuron_block, exact_units, seed, batch_size)
        results = fast_map(adapter, docs, group, op, value, batch_size, neuron_block=neuron_block, specs=specs)
    elif op in FAST_OPS:  # the engine: clean trunk once, ablated variants batched from their layer on
        results = fast_map(adapter, docs, group, op, value, batch_size, neuron_block=neuron_block)
    elif op in STAT_OPS:
        if reference is None:
            raise ValueError(f"op '{op}' needs reference documents (the task's dev split)")
        if op == "resample":
            pool = resample_pool(adapter, reference, group, seed, batch_size)
        else:
            means, stds = site_stats(adapter, reference, group, batch_size)
        specs = list(unit_specs(adapter, group, op if op in ("mean", "resample") else "scale", 0.0, neuron_block))
        variants = []
        dev = next(adapter.model.parameters()).device
        for i, base in enumerate(specs):
            if op == "mean":
                variants.append((base, hook_variant(adapter, base, means=means)))
            elif op == "resample":
                variants.append((base, hook_variant(adapter, base, pool=pool)))
            else:
                spec = UnitSpec(base.group, base.layer, base.units, "noise", value * matched_std(adapter, base, stds))
                gen = torch.Generator(dev).manual_seed(int(seed) * 1_000_003 + i)
                variants.append((spec, hook_variant(adapter, spec, generator=gen)))
        scored = branched_scores(adapter, docs, [(spec.layer, enter) for spec, enter in variants], batch_size)
        results = [(spec, s) for (spec, _), s in zip(variants, scored)]
    else:
        specs = list(unit_specs(adapter, group, op, value, neuron_block))
        results = list(zip(specs, branched_scores(adapter, docs, [(s.layer, hook_variant(adapter, s)) for s in specs],
                                                  batch_size)))
    if op == "zero" and group in (*SCREENED_GROUPS, *NEURON_GROUPINGS):
        # The first-order screen, stored beside the exact map to be judged against it, never used for it.
        screen = attribution_screen(adapter, docs, results[0][0].group, neuron_block, op, value,
                                    batch_size=batch_size, specs=[spec for spec, _ in results])
    for k, (spec, ablated) in enumerate(results):
        rows.append(
            {
                "group": group,
                "layer": spec.layer,
                "unit": unit_label(spec),
                "n_units": max(1, len(spec.units)),
                "op": op,
                "value": float(value),
                "unit_name": (f"L{spec.layer} cluster of {len(spec.units)} neurons from {spec.units[0]}"
                              if group == "neuron_clusters" else unit_name(spec)),
                **paired_row(clean, ablated, n_resamples, seed),
                # estimated change in mean gold log-likelihood; the exact one is -delta_loss
                "screen_delta_gold_ll": float(screen[k]) if screen is not None else float("nan"),
                # why the unit was computed exactly: every unit ("all"), or, in a screened map, among the
                # dev screen's top units ("screen-top") or the equally many random others ("random")
                "checked": checked[k] if checked is not None else "all",
            }
        )
    return pd.DataFrame(rows)


def screened_specs(adapter: Adapter, reference: tuple[Doc, ...], group: str, neuron_block: int, k: int, seed: int,
                   batch_size: int = 64) -> tuple[list[UnitSpec], list[str]]:
    """The units a screened map computes exactly, in unit order, and why each: the `k` whose zero
    ablation the first-order screen on the dev documents estimates to hurt most, and `k` others drawn by
    the seed, so that the screen's ranking is checked against units it did not pick. Chosen on dev, the
    same units for every split."""
    specs = list(unit_specs(adapter, group, "zero", 0.0, neuron_block))
    estimate = attribution_screen(adapter, reference, group, neuron_block, batch_size=batch_size, specs=specs)
    order = np.argsort(estimate, kind="stable")  # most negative estimated change first
    top = [int(i) for i in order[:k]]
    rest = np.setdiff1d(np.arange(len(specs)), top)
    drawn = np.random.default_rng(seed).choice(rest, size=min(k, len(rest)), replace=False)
    why = {**{i: "screen-top" for i in top}, **{int(i): "random" for i in drawn}}
    chosen = sorted(why)
    return [specs[i] for i in chosen], [why[i] for i in chosen]


def _weight_map(adapter: Adapter, docs: tuple[Doc, ...], group: str, op: str, value: float, clean: Scores,
                n_resamples: int, seed: int, batch_size: int, magnitude_bins: int) -> pd.DataFrame:
    """Weight groups: each unit's entries edited in place (and restored), the model scored by the loop."""
    if op not in WEIGHT_OPS:
        raise ValueError(f"op '{op}' is for activation groups; weight group '{group}' takes {', '.join(WEIGHT_OPS)}")
    rows = []
    units = list(weight_units(adapter, group, magnitude_bins, seed))
    variants = [(first_layer(adapter, unit), weight_variant(adapter, unit, op, value)) for unit in units]
    for unit, ablated in zip(units, branched_scores(adapter, docs, variants, batch_size)):
        rows.append(
            {
                "group": group,
                "layer": unit.layer,
                "unit": unit.unit,
                "n_units": unit.n_weights,
                "op": op,
                "value": float(value),
                "unit_name": unit.name,
                **paired_row(clean, ablated, n_resamples, seed),
            }
        )
    return pd.DataFrame(rows)


def weight_variant(adapter: Adapter, unit: WeightUnit, op: str, value: float):
    """A `branched_scores` variant's context: the unit's weights edited for the batch."""
    return lambda batch: edited(adapter, unit, op, value)


def hook_variant(adapter: Adapter, spec: UnitSpec, means: AlignedActivations | None = None,
                 generator: torch.Generator | None = None, pool: ResamplePool | None = None):
    """A `branched_scores` variant's context: the spec's hooks for one batch, told the batch's layout
    (branched blocks run without the base model's forward, which would declare it)."""
    def enter(batch: Batch):
        return apply(adapter, [spec], means=means, generator=generator, pool=pool, layout=layout_of_batch(batch))

    return enter


def effect(df: pd.DataFrame) -> np.ndarray:
    """Importance of each unit: how much accuracy its ablation costs (positive = the task needs it)."""
    return -df["delta_acc"].to_numpy()
