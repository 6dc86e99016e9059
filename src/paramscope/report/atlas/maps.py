"""Statistics of each ablation map: per-map FDR, its most harmful units, its summary, pair interactions
and how well the first-order screen ranked its units."""

from __future__ import annotations

import numpy as np
import pandas as pd

from paramscope.errors import StudyError
from paramscope.report.atlas.keys import MAP_KEYS, in_report_order, map_label, unit_name
from paramscope.report.settings import Settings
from paramscope.stats import benjamini_hochberg, concentration, map_spearman, recall_at_k


def annotate_atlas(ab: pd.DataFrame, s: Settings) -> pd.DataFrame:
    """Every ablation row plus ``q``: BH-FDR across the units of its own map only, and ``significant``."""
    df = in_report_order(ab, s, extra=("layer", "unit"))
    q = np.full(len(df), np.nan)
    p = df["p_mcnemar"].to_numpy(dtype=float)
    for idx in df.groupby(MAP_KEYS, sort=False, dropna=False).indices.values():
        q[idx] = benjamini_hochberg(p[idx])
    df["q"] = q
    df["significant"] = df["q"] < s.fdr
    return df


INTERACTION_COLUMNS = ["model", "task", "split", "pair_group", "unit_name", "unit_a", "unit_b", "rank_a", "rank_b",
                       "delta_acc_a", "delta_acc_b", "delta_acc", "nonadd", "nonadd_ci_low", "nonadd_ci_high"]


def interactions(pair_rows: pd.DataFrame, s: Settings) -> pd.DataFrame:
    """Non-additivity of every pair of top units (chosen on dev), with ``sign``: the direction its CI
    excludes 0 in (``super``: the pair hurts more than the singles together, ``sub``: less), or ``none``."""
    if pair_rows.empty:
        return pd.DataFrame(columns=[*INTERACTION_COLUMNS, "sign"])
    df = in_report_order(pair_rows, s, extra=("unit",))[INTERACTION_COLUMNS].reset_index(drop=True)
    df["sign"] = np.select([df["nonadd_ci_low"] > 0, df["nonadd_ci_high"] < 0], ["super", "sub"], "none")
    return df


def _ranked(m: pd.DataFrame) -> pd.DataFrame:
    # most harmful first; ties in accuracy broken by the loss increase, then by position (deterministic)
    return m.sort_values(["delta_acc", "delta_loss", "layer", "unit"], ascending=[True, False, True, True],
                         kind="mergesort")


def _maps(atlas: pd.DataFrame) -> dict[tuple, pd.DataFrame]:
    return {key: m for key, m in atlas.groupby(MAP_KEYS, sort=False, dropna=False)}


def top_units(atlas: pd.DataFrame, s: Settings) -> pd.DataFrame:
    """The ``top_k`` most harmful units of each map, chosen on ``select_split``, reported on the map's split.

    A map on the selection split chooses on itself (``selected_on`` says so); a map on another split
    without its selection-split counterpart is an error: choosing its top units on the documents they
    are reported on would bias every number read from them.
    """
    maps = _maps(atlas)
    parts = []
    for key, m in maps.items():
        sel_key = (*key[:2], s.select_split, *key[3:])
        if key[2] != s.select_split and sel_key not in maps:
            what = ", ".join(f"{k}={v}" for k, v in zip(MAP_KEYS, key))
            raise StudyError(f"the ablation map ({what}) has no {s.select_split} counterpart to choose its top "
                             f"units on; run the grid on both splits (ablate.splits: [{s.select_split}, {key[2]}])")
        selector = maps.get(sel_key, m)
        chosen = _ranked(selector)[["layer", "unit", "delta_acc"]].head(s.top_k)
        chosen = chosen.rename(columns={"delta_acc": "sel_delta_acc"})
        picked = chosen.merge(m, on=["layer", "unit"], how="inner")
        picked.insert(0, "rank", np.arange(1, len(picked) + 1))
        picked["selected_on"] = sel_key[2] if sel_key in maps else key[2]
        parts.append(picked)
    cols = [*MAP_KEYS, "rank", "layer", "unit", "n_units", "delta_acc", "ci_low", "ci_high", "p_mcnemar", "q",
            "significant", "delta_loss", "selected_on", "sel_delta_acc"]
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


def every_unit_exact(m: pd.DataFrame) -> bool:
    """Whether a map computed every unit exactly (not a screened map, `atlas.screened_specs`)."""
    return "checked" not in m or bool((m["checked"].fillna("all") == "all").all())


def map_summary(atlas: pd.DataFrame, tops: pd.DataFrame, s: Settings) -> pd.DataFrame:
    """One row per map: units, significant units (harmful / helpful), concentration, top unit."""
    first = tops[tops["rank"] == 1].set_index(MAP_KEYS)
    rows = []
    for key, m in _maps(atlas).items():
        sig = m["significant"].to_numpy()
        delta = m["delta_acc"].to_numpy()
        # a screened map holds a chosen subset of the units: their share of its damage says nothing of the whole
        conc = concentration(-delta, (0.5, 0.9)) if every_unit_exact(m) else {0.5: np.nan, 0.9: np.nan}
        top = first.loc[key] if key in first.index else None
        rows.append({
            **dict(zip(MAP_KEYS, key)),
            "label": map_label(key[3], key[4], key[5]),
            "n_docs": int(m["n"].iloc[0]),
            "acc_clean": float(m["acc_clean"].iloc[0]),
            "n_units": len(m),
            "n_sig": int(sig.sum()),
            "n_sig_harm": int((sig & (delta < 0)).sum()),
            "n_sig_help": int((sig & (delta > 0)).sum()),
            "conc50": conc[0.5],
            "conc90": conc[0.9],
            "top_layer": np.nan if top is None else int(top["layer"]),
            "top_unit": np.nan if top is None else int(top["unit"]),
            "top_name": "" if top is None else unit_name(key[3], int(top["layer"]), int(top["unit"]),
                                                         int(top["n_units"])),
            "top_delta_acc": np.nan if top is None else float(top["delta_acc"]),
            "top_ci_low": np.nan if top is None else float(top["ci_low"]),
            "top_ci_high": np.nan if top is None else float(top["ci_high"]),
            "top_q": np.nan if top is None else float(top["q"]),
            "top_selected_on": "" if top is None else top["selected_on"],
            "top_sel_delta_acc": np.nan if top is None else float(top["sel_delta_acc"]),
        })
    return pd.DataFrame(rows)


def screen_agreement(atlas: pd.DataFrame, k: int = 10) -> pd.DataFrame:
    """Per map, how well the first-order screen ranks units against the exact map: Spearman rho of
    the screen's estimated gold-log-likelihood change with the exact one (-delta_loss), the share
    of the exact top-k units (largest loss increase) that the screen also puts in its top k, and how
    the screen's own top k fare when checked exactly (every unit of a map is computed exactly, so
    they always are): how many of them are significant, and their mean exact delta accuracy."""
    cols = [*MAP_KEYS, "n_units", "spearman", "recall_at_k", "k", "screen_top_n_sig", "screen_top_delta_acc"]
    if "screen_delta_gold_ll" not in atlas:
        return pd.DataFrame(columns=cols)
    rows = []
    for key, m in atlas.dropna(subset=["screen_delta_gold_ll"]).groupby(MAP_KEYS, sort=True):
        exact, screen = m["delta_loss"].to_numpy(), -m["screen_delta_gold_ll"].to_numpy()
        kk = min(k, len(m))
        top = m.iloc[np.argsort(-screen, kind="stable")[:kk]]
        sig = int(top["significant"].sum()) if "significant" in top else np.nan
        rows.append({**dict(zip(MAP_KEYS, key)), "n_units": len(m), "spearman": map_spearman(screen, exact)[0],
                     "recall_at_k": recall_at_k(screen, exact, kk), "k": kk, "screen_top_n_sig": sig,
                     "screen_top_delta_acc": float(top["delta_acc"].mean())})
    return pd.DataFrame(rows, columns=cols)
