"""The atlas's booktabs fragments: clean accuracy, model pairs, map summaries, interactions and top units."""

from __future__ import annotations

import pandas as pd

from paramscope.report import latex as tex
from paramscope.report.atlas.keys import GROUP_ORDER, UNIT_GROUPS, map_label, unit_name
from paramscope.report.atlas.reports import Reports
from paramscope.report.order import preferred_order
from paramscope.report.settings import Settings


def _cell(x: float, low: float, high: float) -> str:
    return rf"{tex.pct(x)} {{\scriptsize {tex.ci(low, high)}}}"


def _column(group: str, op: str, value: float) -> str:
    if op == "zero":
        return tex.escape(group)
    return rf"{tex.escape(group)} $\times${value:g}" if op == "scale" else tex.escape(f"{group} {op} {value:g}")


def _summary_table(maps: pd.DataFrame, s: Settings) -> str:
    """Significant / tested units per map type, one row per model and task."""
    types = list(dict.fromkeys(zip(maps["group"], maps["op"], maps["value"])))
    by = maps.set_index(["model", "task", "group", "op", "value"])
    rows = []
    for model in preferred_order(maps["model"], s.models):
        rows.append(None)
        for task in preferred_order(maps[maps["model"] == model]["task"], s.tasks):
            cells = []
            for t in types:
                r = by.loc[(model, task, *t)] if (model, task, *t) in by.index else None
                cells.append(tex.DASH if r is None else f"{int(r['n_sig'])}/{int(r['n_units'])}")
            acc = maps[(maps["model"] == model) & (maps["task"] == task)]["acc_clean"].iloc[0]
            rows.append([rf"\textsf{{{tex.escape(model)}}}", rf"\textsf{{{tex.escape(task)}}}", tex.pct(acc), *cells])
    return tex.booktabs(["Model", "Task", "Clean acc", *[_column(*t) for t in types]], rows, "llr" + "c" * len(types))


def build_tables(rep: Reports, s: Settings) -> dict[str, str]:
    """Booktabs fragments, one per file name; the paper wraps each in its own float and caption."""
    tables = {}
    level = f"{s.level * 100:g}\\%"
    clean = rep.clean[rep.clean["split"] == s.split]
    tasks = preferred_order(clean["task"], s.tasks)
    by = clean.set_index(["model", "task"])
    rows = []
    for model in preferred_order(clean["model"], s.models):
        cells = [_cell(*by.loc[(model, t), ["acc", "ci_low", "ci_high"]]) if (model, t) in by.index else tex.DASH
                 for t in tasks]
        rows.append([rf"\textsf{{{tex.escape(model)}}}", *cells])
    tables["clean_accuracy"] = tex.booktabs(["Model", *[rf"\textsf{{{tex.escape(t)}}}" for t in tasks]], rows,
                                       "l" + "c" * len(tasks))

    rows = []
    for _, g in rep.pairs.groupby(["model", "reference"], sort=False):
        rows.append(None)
        for r in g.itertuples():
            rows.append([rf"\textsf{{{tex.escape(r.model)}}} $-$ \textsf{{{tex.escape(r.reference)}}}",
                         rf"\textsf{{{tex.escape(r.task)}}}", tex.pct(r.acc_model), tex.pct(r.acc_reference),
                         _cell(r.delta_acc, r.ci_low, r.ci_high), tex.pval(r.p_mcnemar), tex.pval(r.q)])
    tables["model_pairs"] = tex.booktabs(
        ["Pair", "Task", "Model", "Reference", rf"$\Delta$ acc [{level} CI]", "$p$", "$q$"], rows, "llrrcrr")

    maps = rep.maps[rep.maps["split"] == s.split]
    weights = ~maps["group"].isin(GROUP_ORDER)  # matrix, magnitude, ... : weight edits, not activation sites
    for name, ops, part in (("atlas_summary", ["zero"], ~weights),
                            ("atlas_summary_weights", ["zero", "scale"], weights),
                            ("atlas_summary_scale", ["scale"], ~weights),
                            ("atlas_summary_replace", ["mean", "resample", "noise"], ~weights)):
        part = maps[maps["op"].isin(ops) & part]
        if len(part):
            tables[name] = _summary_table(part, s)

    inter = rep.interactions[rep.interactions["split"] == s.split] if len(rep.interactions) else rep.interactions
    if len(inter):
        rows = []
        for _, g in inter.groupby("model", sort=False):
            rows.append(None)
            for r in g.itertuples():
                rows.append([rf"\textsf{{{tex.escape(r.model)}}}", rf"\textsf{{{tex.escape(r.task)}}}",
                             tex.escape(f"{r.unit_a} + {r.unit_b}"), tex.pct(r.delta_acc_a), tex.pct(r.delta_acc_b),
                             tex.pct(r.delta_acc), _cell(r.nonadd, r.nonadd_ci_low, r.nonadd_ci_high)])
        tables["atlas_interactions"] = tex.booktabs(
            ["Model", "Task", "Pair", r"$\Delta_i$", r"$\Delta_j$", r"$\Delta_{ij}$",
             rf"Non-additivity [{level} CI]"], rows, "lllrrrc")

    tops = rep.tops[(rep.tops["split"] == s.split) & rep.tops["group"].isin(UNIT_GROUPS)]
    for (group, op, value), g in tops.groupby(["group", "op", "value"], sort=False):
        rows = []
        for _, gm in g.groupby("model", sort=False):
            rows.append(None)
            for r in gm.itertuples():
                rows.append([rf"\textsf{{{tex.escape(r.model)}}}", rf"\textsf{{{tex.escape(r.task)}}}", str(r.rank),
                             tex.escape(unit_name(group, r.layer, r.unit, r.n_units)),
                             _cell(r.delta_acc, r.ci_low, r.ci_high), tex.num(r.delta_loss, 2), tex.pval(r.q)])
        name = "atlas_top_" + map_label(group, op, value).replace("-", "_").replace(".", "p")
        tables[name] = tex.booktabs(
            ["Model", "Task", "Rank", "Unit", rf"$\Delta$ acc [{level} CI]", r"$\Delta$ loss", "$q$"], rows,
            "llrlcrr")
    return tables
