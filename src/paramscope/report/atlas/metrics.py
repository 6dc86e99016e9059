"""Headline numbers of the atlas as a flat dict, for ``dvc metrics show/diff``."""

from __future__ import annotations

import numpy as np

from paramscope.report.atlas.keys import map_label
from paramscope.report.atlas.reports import Reports
from paramscope.report.settings import Settings


def _r(x: object) -> float | int | None:
    if isinstance(x, (int, np.integer)):
        return int(x)
    x = float(x)
    return float(f"{x:.6g}") if np.isfinite(x) else None  # six significant digits: small p-values survive


def build_metrics(rep: Reports, s: Settings) -> dict[str, float | int | None]:
    """Headline numbers as a flat dict (``dvc metrics show/diff``), all measured on ``s.split``."""
    out: dict[str, float | int | None] = {}
    for r in rep.clean[rep.clean["split"] == s.split].itertuples():
        out[f"acc/{r.split}/{r.model}/{r.task}"] = _r(r.acc)
    for r in rep.pairs.itertuples():
        out[f"pair/{r.model}-vs-{r.reference}/{r.task}/delta_acc"] = _r(r.delta_acc)
        out[f"pair/{r.model}-vs-{r.reference}/{r.task}/p_mcnemar"] = _r(r.p_mcnemar)
    maps = rep.maps[rep.maps["split"] == s.split]
    for r in maps.itertuples():
        out[f"atlas/{r.model}/{r.task}/{r.label}/n_sig"] = _r(r.n_sig)
        out[f"atlas/{r.model}/{r.task}/{r.label}/n_units"] = _r(r.n_units)
        out[f"atlas/{r.model}/{r.task}/{r.label}/top_delta_acc"] = _r(r.top_delta_acc)
    for label, g in maps.groupby("label", sort=False):
        out[f"atlas/all/{label}/n_sig"] = _r(g["n_sig"].sum())
    for (group, model), g in rep.spearman[rep.spearman["kind"] == "task"].groupby(["group", "scope"], sort=False):
        out[f"spearman/{group}/{model}/mean_rho"] = _r(g["rho"].mean())
    for (group, task), g in rep.spearman[rep.spearman["kind"] == "model"].groupby(["group", "scope"], sort=False):
        out[f"spearman_models/{group}/{task}/mean_rho"] = _r(g["rho"].mean())
    inter = rep.interactions[rep.interactions["split"] == s.split] if len(rep.interactions) else rep.interactions
    if len(inter):
        out["pairs/n"] = len(inter)
        out["pairs/n_super"] = int((inter["sign"] == "super").sum())
        out["pairs/n_sub"] = int((inter["sign"] == "sub").sum())
    screen = rep.screen[rep.screen["split"] == s.split]
    for (group, op, value), g in screen.groupby(["group", "op", "value"], sort=True):
        label = map_label(group, op, value)
        out[f"screen/{label}/median_spearman"] = _r(g["spearman"].median())
        out[f"screen/{label}/median_recall_at_k"] = _r(g["recall_at_k"].median())
    return out
