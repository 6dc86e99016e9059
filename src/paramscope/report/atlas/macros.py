"""Every number (and the few words that depend on numbers) the paper text cites from the atlas."""

from __future__ import annotations

import numpy as np

from paramscope.report import latex as tex
from paramscope.report.atlas.reports import Reports
from paramscope.report.order import preferred_order
from paramscope.report.settings import Settings
from paramscope.stats import benjamini_hochberg


def significance_words(delta: float, q: float, fdr: float) -> str:
    """A difference in words by its q-value, not its interval: the atlas reports BH-corrected tests."""
    if not (np.isfinite(q) and q < fdr):
        return "no significant change"
    return "a significant drop" if delta < 0 else "a significant gain"


def _label_parts(group: str, op: str, value: float) -> tuple[str, ...]:
    return (group,) if op == "zero" else (group, op, f"{value:g}")


def build_macros(rep: Reports, s: Settings) -> dict[str, str]:
    """Every number (and the few words that depend on numbers) the paper text cites."""
    m = tex.Macros()
    m.add(f"{s.level * 100:g}", "CiLevel")
    m.add(f"{s.fdr:g}", "FdrLevel")
    m.add(s.n_resamples, "ReportResamples")
    m.add(s.top_k, "TopK")
    m.add(tex.escape(s.split), "ReportSplit")
    m.add(tex.escape(s.select_split), "SelectSplit")
    if s.n_choices:
        m.add(tex.pct(1.0 / s.n_choices), "ChanceAcc")
    for name, value in s.facts:
        m.add(value, name)

    clean = rep.clean
    models, tasks = preferred_order(clean["model"], s.models), preferred_order(clean["task"], s.tasks)
    m.add(len(models), "NModels")
    m.add(len(tasks), "NTasks")
    m.add(len(preferred_order(rep.atlas["model"], s.models)), "NAblatedModels")
    for name in models + [t for t in tasks if t not in models]:
        m.add(rf"\textsf{{{tex.escape(name)}}}", "Name", name)
    for (task, split), g in clean.groupby(["task", "split"], sort=False):
        m.add(int(g["n"].max()), task, split, "N")
    for split, g in clean.groupby("split", sort=False):
        m.add(int(g["n"].min()), split, "NMin")
        m.add(int(g["n"].max()), split, "NMax")
    for r in clean[clean["split"] == s.split].itertuples():
        m.add(tex.pct(r.acc), r.model, r.task, r.split, "Acc")
        m.add(tex.pct(r.ci_low), r.model, r.task, r.split, "AccLow")
        m.add(tex.pct(r.ci_high), r.model, r.task, r.split, "AccHigh")
    ablated = clean[(clean["split"] == s.split) & clean["model"].isin(rep.atlas["model"])]
    if len(ablated):
        low = ablated.loc[ablated["acc"].idxmin()]
        m.add(rf"\textsf{{{tex.escape(low['model'])}}}", "CleanMinModel")
        m.add(rf"\textsf{{{tex.escape(low['task'])}}}", "CleanMinTask")
        m.add(tex.pct(low["acc"]), "CleanMinAcc")
        m.add(tex.pct(low["ci_low"]), "CleanMinAccLow")
        m.add(tex.pct(low["ci_high"]), "CleanMinAccHigh")

    for (model, ref), g in rep.pairs.groupby(["model", "reference"], sort=False):
        pair = (model, "vs", ref)
        for r in g.itertuples():
            m.add(tex.pct(r.delta_acc), *pair, r.task, "Delta")
            m.add(tex.pct(r.ci_low), *pair, r.task, "DeltaLow")
            m.add(tex.pct(r.ci_high), *pair, r.task, "DeltaHigh")
            m.add(tex.pval(r.p_mcnemar), *pair, r.task, "P")
            m.add(tex.pval(r.q), *pair, r.task, "Q")
        m.add(int((g["q"] < s.fdr).sum()), *pair, "NSig")
        m.add(len(g), *pair, "NTasks")
        for which, row in (("Min", g.loc[g["delta_acc"].idxmin()]), ("Max", g.loc[g["delta_acc"].idxmax()])):
            m.add(rf"\textsf{{{tex.escape(row['task'])}}}", *pair, which, "Task")
            m.add(tex.pct(row["delta_acc"]), *pair, which, "Delta")
            m.add(tex.pct(row["ci_low"]), *pair, which, "DeltaLow")
            m.add(tex.pct(row["ci_high"]), *pair, which, "DeltaHigh")
            m.add(tex.pval(row["p_mcnemar"]), *pair, which, "P")
            m.add(tex.pval(row["q"]), *pair, which, "Q")
            m.add(significance_words(row["delta_acc"], row["q"], s.fdr), *pair, which, "Verdict")

    maps = rep.maps[rep.maps["split"] == s.split]
    tops = rep.tops[(rep.tops["split"] == s.split) & (rep.tops["rank"] == 1)]
    m.add(len(maps), "AtlasNMaps")
    m.add(int(maps["n_units"].sum()), "AtlasNUnits")
    m.add(int(maps["n_sig"].sum()), "AtlasNSig")
    m.add(int(maps["n_sig_harm"].sum()), "AtlasNSigHarm")
    m.add(int(maps["n_sig_help"].sum()), "AtlasNSigHelp")
    rows = rep.atlas[rep.atlas["split"] == s.split]
    m.add(tex.pct((rows["ci_high"] - rows["ci_low"]).median()), "AtlasMedianCiWidth")
    chosen_on = sorted(set(tops["selected_on"]))
    m.add(tex.escape(" / ".join(chosen_on) if chosen_on else s.select_split), "AtlasSelectedOn")
    for r in maps.itertuples():
        key = ("Atlas", r.model, r.task, *_label_parts(r.group, r.op, r.value))
        m.add(r.n_units, *key, "NUnits")
        m.add(r.n_sig, *key, "NSig")
        m.add(r.n_sig_harm, *key, "NSigHarm")
        m.add(r.n_sig_help, *key, "NSigHelp")
        m.add(tex.pct(r.conc50), *key, "ConcFifty")
        m.add(tex.pct(r.conc90), *key, "ConcNinety")
        m.add(tex.escape(r.top_name) if r.top_name else tex.DASH, *key, "TopUnit")
        m.add(tex.pct(r.top_delta_acc), *key, "TopDelta")
        m.add(tex.pct(r.top_ci_low), *key, "TopDeltaLow")
        m.add(tex.pct(r.top_ci_high), *key, "TopDeltaHigh")
        m.add(tex.pval(r.top_q), *key, "TopQ")
    for op, g in maps.groupby("op", sort=False):
        m.add(len(g), "Atlas", op, "NMaps")
        m.add(int(g["n_units"].sum()), "Atlas", op, "NUnits")
        m.add(int(g["n_sig"].sum()), "Atlas", op, "NSig")
        m.add(int(g["n_sig_harm"].sum()), "Atlas", op, "NSigHarm")
        m.add(int(g["n_sig_help"].sum()), "Atlas", op, "NSigHelp")
    for (group, op, value), g in maps.groupby(["group", "op", "value"], sort=False):
        key = ("Atlas", *_label_parts(group, op, value))
        m.add(len(g), *key, "NMaps")
        m.add(int(g["n_units"].sum()), *key, "NUnits")
        m.add(int(g["n_sig"].sum()), *key, "NSig")
        m.add(int(g["n_sig_harm"].sum()), *key, "NSigHarm")
        m.add(int(g["n_sig_help"].sum()), *key, "NSigHelp")
        m.add(int(g["n_units"].max()), *key, "UnitsPerMap")
        m.add(int((g["n_sig"] > 0).sum()), *key, "NMapsWithSig")
        for frac, word in (("conc50", "Fifty"), ("conc90", "Ninety")):
            m.add(tex.pct(g[frac].min()), *key, "Conc", word, "Min")
            m.add(tex.pct(g[frac].max()), *key, "Conc", word, "Max")
        cand = g.dropna(subset=["top_sel_delta_acc"])
        if len(cand):
            # the strongest unit of the whole map type, chosen by its effect on the selection split
            best = cand.loc[cand["top_sel_delta_acc"].idxmin()]
            m.add(rf"\textsf{{{tex.escape(best['model'])}}}", *key, "TopModel")
            m.add(rf"\textsf{{{tex.escape(best['task'])}}}", *key, "TopTask")
            m.add(tex.escape(best["top_name"]), *key, "TopUnit")
            m.add(tex.pct(best["top_delta_acc"]), *key, "TopDelta")
            m.add(tex.pct(best["top_ci_low"]), *key, "TopDeltaLow")
            m.add(tex.pct(best["top_ci_high"]), *key, "TopDeltaHigh")
            m.add(tex.pval(best["top_q"]), *key, "TopQ")

    rho = rep.spearman
    for (group, kind, scope), g in rho.groupby(["group", "kind", "scope"], sort=False):
        for r in g.itertuples():
            m.add(tex.num(r.rho, 2), scope, group, "Rho", r.a, r.b)
            m.add(tex.pval(r.p), scope, group, "Rho", r.a, r.b, "P")
        valid = g.dropna(subset=["rho"])
        m.add(tex.num(valid["rho"].mean(), 2) if len(valid) else tex.DASH, scope, group, "RhoMean")
        for which, pick in (("Min", "idxmin"), ("Max", "idxmax")):
            row = valid.loc[getattr(valid["rho"], pick)()] if len(valid) else None  # constant maps: no rho
            m.add(tex.DASH if row is None else tex.num(row["rho"], 2), scope, group, "Rho", which)
            m.add(tex.DASH if row is None else tex.escape(f"{row['a']}/{row['b']}"), scope, group, "Rho", which, "Pair")
    for (group, kind), g in rho.groupby(["group", "kind"], sort=False):
        valid = g.dropna(subset=["rho"])
        m.add(tex.num(valid["rho"].mean(), 2) if len(valid) else tex.DASH, group, "Across", kind, "RhoMean")
        m.add(int((benjamini_hochberg(valid["p"].to_numpy(float)) < s.fdr).sum()), group, "Across", kind, "NRhoSig")
        m.add(len(g), group, "Across", kind, "NRho")
    inter = rep.interactions[rep.interactions["split"] == s.split] if len(rep.interactions) else rep.interactions
    m.add(len(inter), "PairsN")
    m.add(int((inter["sign"] == "super").sum()) if len(inter) else 0, "PairsNSuper")
    m.add(int((inter["sign"] == "sub").sum()) if len(inter) else 0, "PairsNSub")
    m.add(tex.pct(inter["nonadd"].abs().median()) if len(inter) else tex.DASH, "PairsMedianAbsNonadd")
    m.add(int(inter["rank_b"].max()) + 1 if len(inter) else 0, "PairsTopK")  # units per map that pairs come from
    screen = rep.screen[(rep.screen["split"] == s.split) & (rep.screen["op"] == "zero")]
    for group, g in screen.groupby("group", sort=False):
        m.add(tex.num(g["spearman"].median(), 2), "Screen", group, "MedianRho")
        m.add(tex.num(g["recall_at_k"].median(), 2), "Screen", group, "MedianRecall")
        m.add(int(g["k"].max()), "Screen", group, "K")
        m.add(len(g), "Screen", group, "NMaps")
        m.add(int(g["screen_top_n_sig"].sum()), "Screen", group, "TopNSig")
        m.add(int(g["k"].sum()), "Screen", group, "TopN")
    return dict(m)
