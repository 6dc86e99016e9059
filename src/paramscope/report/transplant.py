"""Report of the transplant topic (STUDY.md section 5): tables, macros, figures and metrics.

What is claimed, and on which split:

- the donor-target gap of every (pair, task) on the report split, with its CI and a BH-corrected
  McNemar q across all (pair, task) of the grid; GBR is reported only where that gap is significant;
- per (pair, task), the selected transplant (ranking, K, alpha) with the best accuracy on the
  *selection* split (dev), then reported on the report split (test): accuracy, TIR and GBR with CIs,
  and its difference from the random-K and layer-matched random-K controls (mean over seeds, paired by
  document) and from copy-all;
- beside the paper's headline numbers, the maximum TIR and GBR over the whole grid on test, which is
  how the paper reports them: a maximum over many cells chosen on the reported data, so optimistic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from omegaconf import DictConfig

from paramscope import row_schemas
from paramscope.errors import StudyError
from paramscope.report import latex as tex
from paramscope.report.output import write_json, write_text
from paramscope.report.style import colors, new_figure, paper_style, save_pdf
from paramscope.stats import paired_bootstrap_ci
from paramscope.store import load_results
from paramscope.transplant.metrics import with_gap_significance

TOPIC = "Transplant"
CI_LEVEL = 0.95  # the level of every CI in the transplant cells (the stats helpers' default)
KINDS = ("cross-generation", "base-tuned")
# arXiv 2602.16189, abstract (MATH500, 50 items): target-baseline multiple and gap-based recovery.
PAPER = {
    "cross-generation": {"tir": "2", "gbr": r"$>$100"},
    "base-tuned": {"tir": "2.33", "gbr": "100"},
}
PAPER_BENCHMARK, PAPER_N_ITEMS = "MATH500", "50"


def _kinds(rows: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(rows["kind"]))
    return [k for k in KINDS if k in present] + [k for k in present if k not in KINDS]


def _pair_tasks(rows: pd.DataFrame, tasks: list[str]) -> list[tuple[str, str]]:
    """(pair, task) in kind order, then pair order, then the profile's task order."""
    out = []
    for kind in _kinds(rows):
        sub = rows[rows.kind == kind]
        for pair in dict.fromkeys(sub["pair"]):
            present = set(sub.loc[sub.pair == pair, "task"])
            out += [(pair, t) for t in [*tasks, *sorted(present - set(tasks))] if t in present]
    return out


def _one(df: pd.DataFrame, what: str) -> pd.Series:
    if len(df) != 1:
        raise ValueError(f"expected exactly one transplant row for {what}, found {len(df)}")
    return df.iloc[0]


def _docs(row: pd.Series) -> np.ndarray:
    return np.asarray(row["ex_doc_ids"])


def _per_doc_mean(rows: pd.DataFrame, doc_ids: np.ndarray) -> np.ndarray | None:
    """Per-document correctness averaged over control replicates, aligned with ``doc_ids``."""
    if rows.empty:
        return None
    for _, r in rows.iterrows():
        if not np.array_equal(_docs(r), doc_ids):
            raise ValueError("control rows were scored on other documents than the selected row")
    return np.mean(np.stack([np.asarray(c, dtype=float) for c in rows["ex_correct"]]), axis=0)


class Report:
    """Everything derived from the rows, computed once and shared by tables, macros and figures."""

    def __init__(self, cfg: DictConfig, rows: pd.DataFrame) -> None:
        r = cfg.report
        self.split, self.select, self.fdr = str(r.split), str(r.select_split), float(r.fdr)
        self.n_resamples, self.seed = int(r.n_resamples), int(cfg.seed)
        self.rows = with_gap_significance(rows, self.fdr)
        self.pair_tasks = _pair_tasks(self.rows, list(cfg.tasks))
        self.choices = pd.DataFrame([self._choice(p, t) for p, t in self.pair_tasks])

    def at(self, split: str, **match: object) -> pd.DataFrame:
        sel = self.rows[self.rows.split == split]
        for col, value in match.items():
            sel = sel[sel[col] == value]
        return sel

    def _choice(self, pair: str, task: str) -> dict:
        """The dev-best selected transplant of (pair, task), reported on the report split."""
        test_any = self.at(self.split, pair=pair, task=task).iloc[0]
        dev_any = self.at(self.select, pair=pair, task=task)
        out = {"pair": pair, "task": task, "kind": test_any["kind"], "donor": test_any["donor"],
               "target": test_any["model"], "n_modules": int(test_any["n_modules"]),
               **{c: test_any[c] for c in ("acc_target", "acc_donor", "gap", "gap_ci_low", "gap_ci_high",
                                           "p_gap", "q_gap", "gap_significant")},
               "dev_gap": float(dev_any["gap"].iloc[0]) if len(dev_any) else np.nan}
        candidates = self.at(self.select, pair=pair, task=task, method="selected")
        if candidates.empty:
            return out
        # ties: fewer modules, then the weaker blend, then the ranking order of the config
        best = candidates.sort_values(["acc", "k", "alpha", "ranking"], ascending=[False, True, True, True]).iloc[0]
        out.update(ranking=best["ranking"], k=int(best["k"]), alpha=float(best["alpha"]), dev_acc=float(best["acc"]))
        chosen = self.at(self.split, pair=pair, task=task, method="selected", ranking=best["ranking"],
                         k=best["k"], alpha=best["alpha"])
        if chosen.empty:
            return out
        row = _one(chosen, f"{pair} {task}")
        out.update({c: row[c] for c in ("acc", "ci_low", "ci_high", "delta_acc", "p_mcnemar", "tir", "tir_ci_low",
                                        "tir_ci_high", "gbr_reported", "gbr_reported_ci_low",
                                        "gbr_reported_ci_high")})
        out["modules"] = list(row["modules"])
        selected = np.asarray(row["ex_correct"], dtype=float)
        controls = {
            "random": self.at(self.split, pair=pair, task=task, method="random", k=row["k"], alpha=row["alpha"]),
            "layer": self.at(self.split, pair=pair, task=task, method="layer_random", ranking=row["ranking"],
                             k=row["k"], alpha=row["alpha"]),
        }
        for name, ctrl in controls.items():
            mean = _per_doc_mean(ctrl, _docs(row))
            if mean is None:
                continue
            diff, low, high = paired_bootstrap_ci(mean, selected, self.n_resamples, CI_LEVEL, self.seed)
            out.update({f"{name}_acc": float(mean.mean()), f"vs_{name}": diff, f"vs_{name}_low": low,
                        f"vs_{name}_high": high, f"n_{name}": len(ctrl)})
        copy_all = self.at(self.split, pair=pair, task=task, method="all", alpha=row["alpha"])
        if len(copy_all):
            c = _one(copy_all, f"copy-all {pair} {task}")
            out.update(all_acc=c["acc"], all_gbr=c["gbr_reported"], all_gbr_low=c["gbr_reported_ci_low"],
                       all_gbr_high=c["gbr_reported_ci_high"])
        return out

    def grid_vs_random(self) -> pd.DataFrame:
        """Every selected test row against the mean accuracy of its random-K replicates."""
        test = self.rows[self.rows.split == self.split]
        keys = ["pair", "task", "k", "alpha"]
        random_mean = test[test.method == "random"].groupby(keys)["acc"].mean().rename("random_acc")
        sel = test[test.method == "selected"].join(random_mean, on=keys, how="inner")
        sel["vs_random"] = sel["acc"] - sel["random_acc"]
        return sel

    def headline(self, kind: str) -> pd.Series | None:
        """A kind's headline (pair, task): the largest donor-target gap on the *selection* split."""
        if "k" not in self.choices:
            return None
        sub = self.choices[(self.choices.kind == kind) & self.choices["k"].notna()]
        if sub.empty:
            return None
        return sub.sort_values(["dev_gap", "pair", "task"], ascending=[False, True, True]).iloc[0]

    def grid_max(self, kind: str, column: str) -> pd.Series | None:
        """The paper's quantity, the best transplant of the grid, chosen on the selection split and
        reported once on the report split: the selected (pair, task, ranking, K, alpha) with the largest
        dev value of ``column`` (ties: fewer modules, the weaker blend), and that configuration's test row.
        A maximum taken over the test grid itself would be biased upward by the choice."""
        dev = self.at(self.select, kind=kind, method="selected").dropna(subset=[column])
        test = self.at(self.split, kind=kind, method="selected")
        if dev.empty:
            if test[column].notna().any():
                raise StudyError(f"transplant {kind}: {self.split} rows of '{column}' have no {self.select} "
                                 f"counterpart to choose the grid's best on; rerun the grid with both splits")
            return None
        best = dev.sort_values([column, "k", "alpha", "pair", "task", "ranking"],
                               ascending=[False, True, True, True, True, True]).iloc[0]
        chosen = self.at(self.split, kind=kind, method="selected", pair=best["pair"], task=best["task"],
                         ranking=best["ranking"], k=best["k"], alpha=best["alpha"])
        if chosen.empty:
            raise StudyError(f"transplant {kind}: the configuration chosen on {self.select} ({best['pair']}, "
                             f"{best['task']}, K={best['k']}, alpha={best['alpha']:g}) has no {self.split} row")
        return _one(chosen, f"{best['pair']} {best['task']}")


# ------------------------------------------------------------------------------------------ text


def _ratio_ci(low: float, high: float) -> str:
    return f"[{tex.num(low, 2)}, {tex.num(high, 2)}]"


def _values(xs: pd.Series, fmt) -> str:
    return ", ".join(fmt(x) for x in sorted(set(xs)))


COMPARISON_WORDS = {1: "better than", -1: "worse than", 0: "not distinguishable from"}  # vs a control


def comparison_words(low: float, high: float) -> str:
    """How the selected modules compare with a control, by the interval of their difference."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "not measured"
    return COMPARISON_WORDS[tex.ci_side(low, high)]


def build_macros(rep: Report) -> dict[str, str]:
    m: dict[str, str] = {}

    def add(value: object, *parts: object) -> None:
        m[tex.macro_name(TOPIC, *parts)] = str(value)

    rows = rep.rows
    test = rows[rows.split == rep.split]
    add(tex.escape(rep.split), "Split")
    add(tex.escape(rep.select), "SelectSplit")
    add(tex.num(CI_LEVEL * 100, 0), "CiLevel")
    add(tex.num(rep.fdr, 2), "Fdr")
    add(_values(rows["n_modules"], tex.integer), "NModules")
    add(_values(test.loc[test.method != "all", "k"], tex.integer), "KValues")
    add(_values(rows["alpha"], lambda a: tex.num(a, 2)), "AlphaValues")
    add(tex.integer(test.loc[test.method == "random", "replicate"].nunique()), "NSeeds")
    add(tex.integer(len(test)), "NTestRows")
    gaps = rep.choices
    add(tex.integer(len(gaps)), "NGaps")
    add(tex.integer(int(gaps["gap_significant"].sum())), "NGapsSig")
    vs = rep.grid_vs_random()
    add(tex.integer(len(vs)), "GridNSelected")
    add(tex.integer(int((vs.vs_random > 0).sum())), "GridNAboveRandom")
    add(tex.integer(int((vs.vs_random < 0).sum())), "GridNBelowRandom")
    add(tex.pct(vs.vs_random.mean() if len(vs) else np.nan), "GridMeanVsRandom")
    add(PAPER_BENCHMARK, "PaperBenchmark")
    add(PAPER_N_ITEMS, "PaperNItems")
    for kind in _kinds(rows):
        k = kind.split("-")
        add(PAPER.get(kind, {}).get("tir", tex.DASH), "Paper", *k, "Tir")
        add(PAPER.get(kind, {}).get("gbr", tex.DASH), "Paper", *k, "Gbr")
        for column, name in (("tir", "MaxTir"), ("gbr_reported", "MaxGbr")):
            best = rep.grid_max(kind, column)
            value = np.nan if best is None else best[column]
            add(tex.num(value, 2) if column == "tir" else tex.pct(value, 0), *k, name)
            add(tex.escape(best["task"]) if best is not None else tex.DASH, *k, name, "Task")
            add(tex.integer(best["k"]) if best is not None else tex.DASH, *k, name, "K")
            add(tex.num(best["alpha"], 2) if best is not None else tex.DASH, *k, name, "Alpha")
        h = rep.headline(kind)
        if h is None:
            continue
        for field in ("task", "donor", "target", "ranking"):
            add(tex.escape(h[field]), *k, field.title())
        add(tex.pct(h["acc_target"]), *k, "AccTarget")
        # TIR cannot exceed 1 / acc_target: a strong target leaves little room for the paper's multiples
        add(tex.num(1.0 / h["acc_target"] if h["acc_target"] > 0 else np.nan, 2), *k, "TirCeiling")
        modules = h.get("modules")
        add(tex.escape(", ".join(_short(n) for n in modules)) if isinstance(modules, list) else tex.DASH,
            *k, "Modules")
        add(tex.pct(h["acc_donor"]), *k, "AccDonor")
        _add_ci(add, h, "gap", "gap_ci_low", "gap_ci_high", tex.pct, *k, "Gap")
        add(tex.pval(h["q_gap"]), *k, "GapQ")
        add("significant" if h["gap_significant"] else "not significant", *k, "GapVerdict")
        add(tex.integer(h["k"]), *k, "K")
        add(tex.num(h["alpha"], 2), *k, "Alpha")
        add(tex.pct(h.get("dev_acc")), *k, "DevAcc")
        add(tex.pct(h.get("acc")), *k, "Acc")
        _add_ci(add, h, "delta_acc", "ci_low", "ci_high", tex.pct, *k, "Delta")
        _add_ci(add, h, "tir", "tir_ci_low", "tir_ci_high", lambda x: tex.num(x, 2), *k, "Tir")
        _add_ci(add, h, "gbr_reported", "gbr_reported_ci_low", "gbr_reported_ci_high", lambda x: tex.pct(x, 0),
                *k, "Gbr")
        for ctrl in ("random", "layer"):
            add(tex.pct(h.get(f"{ctrl}_acc")), *k, ctrl.title(), "Acc")
            _add_ci(add, h, f"vs_{ctrl}", f"vs_{ctrl}_low", f"vs_{ctrl}_high", tex.pct, *k, "Vs", ctrl.title())
            add(comparison_words(h.get(f"vs_{ctrl}_low", np.nan), h.get(f"vs_{ctrl}_high", np.nan)),
                *k, "Vs", ctrl.title(), "Verdict")
        add(tex.pct(h.get("all_acc")), *k, "CopyAllAcc")
        _add_ci(add, h, "all_gbr", "all_gbr_low", "all_gbr_high", lambda x: tex.pct(x, 0), *k, "CopyAllGbr")
    return m


def _add_ci(add, row: pd.Series, point: str, low: str, high: str, fmt, *parts: object) -> None:
    """A value and its interval as three macros (Name, NameLow, NameHigh) for \\pctci-style use."""
    for suffix, column in (("", point), ("Low", low), ("High", high)):
        value = row.get(column, np.nan)
        add(fmt(np.nan if value is None else value), *parts, *([suffix] if suffix else []))


# ----------------------------------------------------------------------------------------- tables


def _finite(x: object) -> bool:
    return x is not None and bool(np.isfinite(x))


def _pct_ci(x: float, low: float, high: float, digits: int = 1) -> str:
    """'value [low, high]' in percent, or a dash alone where the value does not exist."""
    return f"{tex.pct(x, digits)} {tex.ci(low, high, digits)}" if _finite(x) else tex.DASH


def _arrow(donor: str, target: str) -> str:
    return f"{tex.escape(donor)} $\\to$ {tex.escape(target)}"


def summary_table(rep: Report) -> str:
    rows = []
    last_kind = None
    for _, c in rep.choices.iterrows():
        if last_kind is not None and c["kind"] != last_kind:
            rows.append(None)
        last_kind = c["kind"]
        chosen = _finite(c.get("k"))
        rows.append([
            tex.escape(c["kind"]), tex.escape(c["task"]), _arrow(c["donor"], c["target"]),
            _pct_ci(c["gap"], c["gap_ci_low"], c["gap_ci_high"]), tex.pval(c["q_gap"]),
            tex.escape(f"{c['ranking']}, {int(c['k'])}, {c['alpha']:g}") if chosen else tex.DASH,
            _pct_ci(c.get("delta_acc"), c.get("ci_low"), c.get("ci_high")),
            f"{tex.num(c.get('tir'), 2)} {_ratio_ci(c.get('tir_ci_low'), c.get('tir_ci_high'))}"
            if _finite(c.get("tir")) else tex.DASH,
            _pct_ci(c.get("gbr_reported"), c.get("gbr_reported_ci_low"), c.get("gbr_reported_ci_high"), 0),
        ])
    header = ["Pair", "Task", "Donor $\\to$ target", "Gap (pp)", "$q_{gap}$",
              f"Chosen on {tex.escape(rep.select)}",
              r"$\Delta$ acc (pp)", "TIR", "GBR (\\%)"]
    return tex.booktabs(header, rows, "lllcrlccc")


def controls_table(rep: Report) -> str:
    rows = []
    for _, c in rep.choices.iterrows():
        if not _finite(c.get("k")):
            continue
        rows.append([
            tex.escape(c["task"]), _arrow(c["donor"], c["target"]),
            tex.escape(f"{c['ranking']}, {int(c['k'])}, {c['alpha']:g}"),
            tex.pct(c.get("acc")), tex.pct(c.get("random_acc")),
            _pct_ci(c.get("vs_random"), c.get("vs_random_low"), c.get("vs_random_high")),
            tex.pct(c.get("layer_acc")),
            _pct_ci(c.get("vs_layer"), c.get("vs_layer_low"), c.get("vs_layer_high")),
            tex.pct(c.get("all_acc")),
        ])
    header = ["Task", "Donor $\\to$ target", f"Chosen on {tex.escape(rep.select)}", "Selected", "Random",
              "Sel.\\ $-$ random (pp)",
              "Layer-m.", "Sel.\\ $-$ layer-m.\\ (pp)", "Copy-all"]
    return tex.booktabs(header, rows, "lllrrcrcr")


def paper_table(rep: Report) -> str:
    rows = []
    for kind in _kinds(rep.rows):
        h = rep.headline(kind)
        tir, gbr = rep.grid_max(kind, "tir"), rep.grid_max(kind, "gbr_reported")
        paper = PAPER.get(kind, {})
        rows.append([tex.escape(kind), "TIR ($\\times$)", paper.get("tir", tex.DASH),
                     tex.num(tir["tir"], 2) if tir is not None else tex.DASH,
                     f"{tex.num(h.get('tir'), 2)} {_ratio_ci(h.get('tir_ci_low'), h.get('tir_ci_high'))}"
                     if h is not None else tex.DASH])
        rows.append(["", "GBR (\\%)", paper.get("gbr", tex.DASH),
                     tex.pct(gbr["gbr_reported"], 0) if gbr is not None else tex.DASH,
                     _pct_ci(h.get("gbr_reported"), h.get("gbr_reported_ci_low"), h.get("gbr_reported_ci_high"), 0)
                     if h is not None else tex.DASH])
    header = ["Pair kind", "Metric", "Paper (max)",
              f"Ours: grid's best by {tex.escape(rep.select)}, on {tex.escape(rep.split)}",
              f"Ours: chosen on {tex.escape(rep.select)}, on {tex.escape(rep.split)}"]
    return tex.booktabs(header, rows, "llrrc")


# ---------------------------------------------------------------------------------------- figures


def _panel_label(rep: Report, pair: str, task: str) -> str:
    c = rep.choices[(rep.choices.pair == pair) & (rep.choices.task == task)].iloc[0]
    return f"{task}: {c['donor']} \u2192 {c['target']}"


def _grid(rep: Report, pair_tasks: list[tuple[str, str]], height: float = 1.7) -> tuple[Figure, list]:
    pairs = list(dict.fromkeys(p for p, _ in pair_tasks))
    n_cols = max(sum(1 for p, _ in pair_tasks if p == pair) for pair in pairs)
    fig = new_figure(height=height * len(pairs) + 0.4)
    axes = fig.subplots(len(pairs), n_cols, squeeze=False, sharex=True)
    used = []
    for i, pair in enumerate(pairs):
        tasks = [t for p, t in pair_tasks if p == pair]
        for j in range(n_cols):
            if j < len(tasks):
                used.append((axes[i][j], pair, tasks[j]))
            else:
                axes[i][j].set_visible(False)
    return fig, used


def _bottom_labels(panels: list, label: str) -> None:
    """An x label under the bottom row only (a figure-level one would collide with the legend)."""
    for ax, *_ in panels:
        if ax.get_subplotspec().is_last_row():
            ax.set_xlabel(label)


def k_curves(rep: Report) -> Figure:
    """Change in accuracy vs K at the largest alpha (test): selected, controls, copy-all; the donor's gap."""
    alpha = float(rep.rows["alpha"].max())
    palette = colors(["selected abs", "selected signed", "random-K", "layer-matched random-K", "copy-all"])
    fig, panels = _grid(rep, rep.pair_tasks)
    for ax, pair, task in panels:
        rows = rep.at(rep.split, pair=pair, task=task, alpha=alpha)
        gap = rows["gap"].iloc[0] * 100
        ax.axhline(0, color="0.6", lw=0.8)
        ax.axhline(gap, color="0.3", lw=0.8, ls="--", label="donor (gap to target)")
        for ranking in dict.fromkeys(rows.loc[rows.method == "selected", "ranking"]):
            sel = rows[(rows.method == "selected") & (rows.ranking == ranking)].sort_values("k")
            ax.errorbar(sel.k, sel.delta_acc * 100, yerr=[(sel.delta_acc - sel.ci_low) * 100,
                        (sel.ci_high - sel.delta_acc) * 100], marker="o", ms=3, lw=1, capsize=2,
                        color=palette[f"selected {ranking}"], label=f"selected ({ranking})")
        for method, name in (("random", "random-K"), ("layer_random", "layer-matched random-K")):
            ctrl = rows[(rows.method == method) & ((rows.ranking == "abs") | (rows.ranking == ""))]
            if ctrl.empty:
                continue
            band = ctrl.groupby("k")["delta_acc"].agg(["mean", "min", "max"]) * 100
            ax.plot(band.index, band["mean"], color=palette[name], lw=1, ls=":", label=f"{name} (mean, range)")
            ax.fill_between(band.index, band["min"], band["max"], color=palette[name], alpha=0.2, lw=0)
        copy_all = rows[rows.method == "all"]
        if len(copy_all):
            c = copy_all.iloc[0]
            ax.errorbar([c.k], [c.delta_acc * 100], yerr=[[(c.delta_acc - c.ci_low) * 100],
                        [(c.ci_high - c.delta_acc) * 100]], marker="s", ms=4, color=palette["copy-all"],
                        capsize=2, ls="none", label="copy-all")
        ax.set_xscale("log", base=2)
        ks = sorted(set(rows.k))
        ax.set_xticks(ks, [str(int(k)) for k in ks])
        ax.minorticks_off()
        ax.set_title(_panel_label(rep, pair, task), fontsize="small")
    _bottom_labels(panels, "K (modules)")
    fig.supylabel(r"$\Delta$ accuracy vs target (pp)", fontsize="small")
    handles, labels = panels[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize="small")
    return fig


def alpha_curves(rep: Report) -> Figure:
    """GBR vs alpha per K (selected, abs ranking, and copy-all) where the gap is significant (test)."""
    significant = [(p, t) for p, t in rep.pair_tasks
                   if bool(rep.at(rep.split, pair=p, task=t)["gap_significant"].iloc[0])]
    if not significant:
        fig = new_figure(height=1.2)
        ax = fig.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, f"no donor-target gap is significant on {rep.split}: GBR undefined everywhere",
                ha="center", va="center")
        return fig
    fig, panels = _grid(rep, significant)
    ks = sorted(set(rep.rows.loc[rep.rows.method != "all", "k"]))
    palette = colors([*[f"K={k}" for k in ks], "copy-all"])
    for ax, pair, task in panels:
        rows = rep.at(rep.split, pair=pair, task=task)
        ax.axhline(0, color="0.6", lw=0.8)
        ax.axhline(100, color="0.3", lw=0.8, ls="--")
        curves = [(f"K={k}", rows[(rows.method == "selected") & (rows.ranking == "abs") & (rows.k == k)])
                  for k in ks] + [("copy-all", rows[rows.method == "all"])]
        for name, sub in curves:
            sub = sub.sort_values("alpha")
            if sub.empty:
                continue
            ax.errorbar(sub.alpha, sub.gbr_reported * 100,
                        yerr=[(sub.gbr_reported - sub.gbr_reported_ci_low) * 100,
                              (sub.gbr_reported_ci_high - sub.gbr_reported) * 100],
                        marker="o", ms=3, lw=1, capsize=2, color=palette[name], label=name)
        ax.set_title(_panel_label(rep, pair, task), fontsize="small")
    _bottom_labels(panels, r"$\alpha$")
    fig.supylabel("GBR (%)", fontsize="small")
    handles, labels = panels[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize="small")
    return fig


def _short(name: str) -> str:
    """'gpt_neox.layers.3.attention.dense' -> 'L3 dense': the block index is the first number."""
    layer = next(part for part in name.split(".") if part.isdigit())
    return f"L{layer} {name.rsplit('.', 1)[-1]}"


def module_ranks(rep: Report) -> Figure:
    """Rank of every module by |activity difference| (1 = most different; dev workload) per (pair, task),
    one heatmap per architecture: pairs of different architectures have different modules."""
    groups: dict[tuple[str, ...], tuple[list[np.ndarray], list[str]]] = {}
    for pair, task in rep.pair_tasks:
        row = rep.at(rep.split, pair=pair, task=task).iloc[0]
        diff = np.abs(np.asarray(row["activity_donor"]) - np.asarray(row["activity_target"]))
        ranks = np.empty(len(diff))
        ranks[np.argsort(-diff, kind="stable")] = np.arange(1, len(diff) + 1)
        lines, labels = groups.setdefault(tuple(row["registry"]), ([], []))
        lines.append(ranks)
        labels.append(_panel_label(rep, pair, task))
    heights = [len(lines) + 4 for lines, _ in groups.values()]  # rows, plus room for the module labels
    fig = new_figure(height=0.3 * sum(heights))
    axes = fig.subplots(len(groups), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, (registry, (lines, labels)) in zip(axes, groups.items()):
        grid = pd.DataFrame(np.stack(lines), index=labels, columns=[_short(n) for n in registry])
        annotate = len(registry) <= 48  # a full-size model's ranks would be unreadable digits
        sns.heatmap(grid, ax=ax, cmap="rocket", annot=annotate, fmt=".0f", annot_kws={"fontsize": 5}, linewidths=0.3,
                    cbar_kws={"label": "rank (1 = largest |activity difference|)"})
        ax.set_xlabel("module (layer, projection)")
        ax.set_ylabel("")
        ax.tick_params(axis="x", labelsize=5, rotation=90)
        ax.tick_params(axis="y", labelsize=6)
    return fig


# ----------------------------------------------------------------------------------------- report


def build_metrics(rep: Report) -> dict[str, float | int | None]:
    metrics: dict[str, float | int | None] = {"n_gaps_significant": int(rep.choices["gap_significant"].sum())}
    for _, c in rep.choices.iterrows():
        key = f"{c['target']}<-{c['donor']}/{c['task']}"
        metrics[f"{key}/gap"] = float(c["gap"])
        metrics[f"{key}/q_gap"] = float(c["q_gap"])
        for field in ("acc", "tir", "gbr_reported", "vs_random", "vs_layer", "all_acc"):
            value = c.get(field, np.nan)
            metrics[f"{key}/{field}"] = float(value) if value is not None and np.isfinite(value) else None
    for kind in _kinds(rep.rows):
        for column in ("tir", "gbr_reported"):
            best = rep.grid_max(kind, column)
            metrics[f"{kind}/max_{column}"] = None if best is None else float(best[column])
    return metrics


def report(cfg: DictConfig, results: Path, out: Path) -> dict:
    """Write macros.tex, tables/, figures/ and metrics.json of the transplant topic into ``out``."""
    rows = load_results("transplant", root=results, with_examples=True, schema=row_schemas.TRANSPLANT)
    # Cells of an older checkpoint of a model (kept under a K or alpha no longer in the grid) would be
    # chosen among and paired as if they were the same model: refuse them.
    checkpoints = pd.concat([rows[["model", "digest"]],
                             rows[["donor", "donor_digest"]].set_axis(["model", "digest"], axis=1)])
    if (checkpoints.drop_duplicates().groupby("model").size() > 1).any():
        raise StudyError("results/transplant holds cells of several checkpoints of one model; delete the stale "
                         "cells (or results/transplant) and rerun the 'transplant' stage")
    rep = Report(cfg, rows)
    write_text(out / "macros.tex", tex.macros_tex(build_macros(rep)))
    for name, text in (("summary", summary_table(rep)), ("controls", controls_table(rep)),
                       ("paper", paper_table(rep))):
        write_text(out / "tables" / f"transplant_{name}.tex", text)
    with paper_style():
        for name, draw in (("k", k_curves), ("alpha", alpha_curves), ("modules", module_ranks)):
            save_pdf(draw(rep), out / "figures" / f"transplant_{name}.pdf")
    metrics = build_metrics(rep)
    write_json(metrics, out / "metrics.json")
    return metrics
