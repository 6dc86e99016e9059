"""Report of the VPS topic: the dev grid, the dev-chosen configuration on test, overhead, verification.

Every test number pairs the chosen configuration with the base model on the same documents (matched by
document id): paired bootstrap CI of the accuracy delta, exact McNemar p, Benjamini-Hochberg q across
the model x task cells. The grid itself is only ever summarised on dev.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from omegaconf import DictConfig

from paramscope import row_schemas
from paramscope.errors import StudyError
from paramscope.report import latex as tex
from paramscope.report.output import write_csv, write_json, write_text
from paramscope.report.style import new_figure, paper_style, save_pdf
from paramscope.stats import benjamini_hochberg, mcnemar_exact, paired_bootstrap_ci
from paramscope.store import load_results
from paramscope.vps.policy import Policy

AXES = ["gamma", "rank", "builder", "layer_set", "policy"]


def by_doc(row: pd.Series, column: str = "ex_correct") -> pd.Series:
    return pd.Series(np.asarray(row[column], dtype=float), index=np.asarray(row["ex_doc_ids"]))


def paired(reference: pd.Series, treated: pd.Series, n_resamples: int, level: float, seed: int,
           column: str = "ex_correct") -> dict[str, float]:
    """Delta (treated - reference) on the documents both rows share, with CI and McNemar p."""
    a, b = by_doc(reference, column), by_doc(treated, column)
    if set(a.index) != set(b.index):
        raise ValueError(f"rows to pair cover different documents ({reference.cell} vs {treated.cell})")
    a, b = a.sort_index().to_numpy(), b.loc[a.sort_index().index].to_numpy()
    delta, low, high = paired_bootstrap_ci(a, b, n_resamples=n_resamples, level=level, seed=seed)
    p = mcnemar_exact(a.astype(int), b.astype(int)) if column == "ex_correct" else float("nan")
    return {"delta": delta, "low": low, "high": high, "p": p, "n": len(a)}


def axis_means(mean: pd.DataFrame) -> pd.DataFrame:
    """Mean dev change per value of each grid axis (over every other axis), best value first."""
    rows = [{"axis": axis, "value": f"{value:g}" if isinstance(value, float) else str(value),
             "delta_acc": part.delta_acc.mean(), "n_configs": len(part)}
            for axis in AXES for value, part in mean.groupby(axis)]
    out = pd.DataFrame(rows)
    return out.sort_values(["axis", "delta_acc"], ascending=[True, False], kind="mergesort").reset_index(drop=True)


def axes_table(mean: pd.DataFrame) -> str:
    rows = []
    for axis, part in axis_means(mean).groupby("axis", sort=False):
        rows.append(None)
        rows += [[tex.escape(axis), tex.escape(r.value), tex.integer(r.n_configs), tex.pct(r.delta_acc, 2)]
                 for r in part.itertuples()]
    return tex.booktabs(["Axis", "Value", "Configurations", r"Mean $\Delta$ acc (pp)"], rows, "llrr")


def check_one_setting(df: pd.DataFrame) -> None:
    """Cells made under other fixed settings (tau, clamp, ridge, ...) for the same grid point would be
    averaged and chosen among as if they were one experiment: refuse them instead."""
    base = df[df.condition == "base"]
    two_bases = base.duplicated(["model", "task", "split"], keep=False).any()  # two checkpoints of a model
    grid = df[df.condition == "grid"]
    settings = grid.groupby(["model", "task", "split", *AXES], dropna=False)[["tau", "clamp", "ridge", "lo_ratio"]]
    if two_bases or (settings.nunique(dropna=False) > 1).any(axis=None):
        raise StudyError("results/vps holds cells of one grid point made under different settings or weights; "
                         "delete results/vps (or the stale cells) and rerun the vps stage")


def dev_grid(df: pd.DataFrame) -> pd.DataFrame:
    """Every grid configuration's dev accuracy delta against the base model, per model x task."""
    base = df[(df.condition == "base") & (df.split == "dev")].set_index(["model", "task"]).acc
    grid = df[(df.condition == "grid") & (df.split == "dev")].copy()
    grid["delta_acc"] = grid.acc.to_numpy() - base.loc[list(zip(grid.model, grid.task))].to_numpy()
    return grid[["model", "task", *AXES, "tau", "clamp", "ridge", "lo_ratio", "acc", "delta_acc"]]


def chosen(df: pd.DataFrame, s: DictConfig, seed: int) -> pd.DataFrame:
    """Per model x task: the configuration chosen on dev, on test against the base model.

    A plain run has one chosen row per model x task. Multirun jobs each choose within their own sub-grid;
    their best dev row (the widest grid first, then dev accuracy, then dev loss) is then the choice over
    the union of those sub-grids, so the choice still looks at dev only.
    """
    sel = df[(df.condition == "selected") & (df.split == "test")]
    base = df[(df.condition == "base") & (df.split == "test")].set_index(["model", "task"])
    dev_base = df[(df.condition == "base") & (df.split == "dev")].set_index(["model", "task"]).acc
    out = []
    for (model, task), group in sel.groupby(["model", "task"], sort=True):
        row = group.sort_values(["grid_size", "dev_acc", "dev_loss", "cell"],
                                ascending=[False, False, True, True]).iloc[0]
        ref = base.loc[(model, task)]
        acc = paired(ref, row, s.n_resamples, s.level, seed)
        ll = paired(ref, row, s.n_resamples, s.level, seed, column="ex_gold_ll")
        out.append({"model": model, "task": task, "cell": row.cell, **{a: row[a] for a in AXES},
                    "grid_size": int(row.grid_size),
                    "dev_acc": row.dev_acc, "dev_delta": row.dev_acc - dev_base.loc[(model, task)],
                    "acc_base": ref.acc, "acc": row.acc, "delta_acc": acc["delta"],
                    "ci_low": acc["low"], "ci_high": acc["high"], "p": acc["p"], "n": acc["n"],
                    "delta_ll": ll["delta"], "ll_low": ll["low"], "ll_high": ll["high"],
                    **{k: row[k] for k in ("sec_per_token_base", "sec_per_token", "latency_ratio", "peak_bytes_base",
                                           "peak_bytes", "memory_ratio", "n_tokens", "threads")}})
    table = pd.DataFrame(out)
    table["q"] = benjamini_hochberg(table.p.to_numpy()) if len(table) else []
    return table


def verification(df: pd.DataFrame, ch: pd.DataFrame, s: DictConfig, seed: int) -> pd.DataFrame:
    """The loop with VPS candidates against the base model and against its gamma = 0 control, for the
    configuration chosen on dev (the loops are tied to their chosen cell)."""
    test = df[df.split == "test"]
    out = []
    if "selected_cell" not in test:  # no task of the profile runs the loop (vps.verify.tasks)
        return pd.DataFrame(out)
    for _, chosen_row in ch.iterrows():
        model, task = chosen_row["model"], chosen_row["task"]
        loops = test[test.condition.isin(["verify", "verify_control"]) & (test.selected_cell == chosen_row.cell)]
        if loops.empty:
            continue
        row = loops[loops.condition == "verify"].iloc[0]
        control = loops[loops.condition == "verify_control"].iloc[0]
        base = test[(test.condition == "base") & (test.model == model) & (test.task == task)].iloc[0]
        vs_base = paired(base, row, s.n_resamples, s.level, seed)
        vs_control = paired(control, row, s.n_resamples, s.level, seed)
        control_vs_base = paired(base, control, s.n_resamples, s.level, seed)
        out.append({"model": model, "task": task, "acc_base": base.acc, "acc_control": control.acc, "acc": row.acc,
                    "max_rounds": row["rounds"], "n_candidates": row.n_candidates,
                    "verified": row.verified, "rounds": row.mean_rounds, "control_rounds": control.mean_rounds,
                    **{f"{k}_base": v for k, v in vs_base.items()},
                    **{f"{k}_control": v for k, v in vs_control.items()},
                    **{f"{k}_cvb": v for k, v in control_vs_base.items()}})
    return pd.DataFrame(out)


def config_label(row: pd.Series) -> str:
    return f"{row.builder}, r={int(row['rank'])}, $\\gamma$={row.gamma:g}, {row.layer_set}, {row.policy}"


def test_table(ch: pd.DataFrame) -> str:
    rows = [[tex.escape(r["model"]), tex.escape(r["task"]), config_label(r), tex.pct(r.acc_base), tex.pct(r.acc),
             f"{tex.pct(r.delta_acc)} {tex.ci(r.ci_low, r.ci_high)}", tex.pval(r.p), tex.pval(r.q),
             tex.num(r.latency_ratio, 2)] for _, r in ch.iterrows()]
    header = ["model", "task", "chosen on dev", "base", "VPS", r"$\Delta$ (pp) [CI]", "$p$", "$q$", "time$\\times$"]
    return tex.booktabs(header, rows, "lllrrlrrr")


def verify_table(vt: pd.DataFrame) -> str:
    rows = [[tex.escape(r["model"]), tex.escape(r["task"]), tex.pct(r.acc_base), tex.pct(r.acc_control), tex.pct(r.acc),
             f"{tex.pct(r.delta_base)} {tex.ci(r.low_base, r.high_base)}", tex.pval(r.p_base),
             f"{tex.pct(r.delta_control)} {tex.ci(r.low_control, r.high_control)}", tex.pval(r.p_control)]
            for _, r in vt.iterrows()]
    header = ["model", "task", "base", "loop, $\\gamma=0$", "loop, VPS", r"VPS loop $-$ base", "$p$",
              r"VPS loop $-$ $\gamma=0$ loop", "$p$"]
    return tex.booktabs(header, rows, "llrrrlrlr")


def gamma_figure(grid: pd.DataFrame, out: Path) -> None:
    """Mean dev delta over model x task against gamma, per rank and builder, one panel per layer set/policy."""
    mean = grid.groupby(AXES, as_index=False).delta_acc.mean()
    mean["delta_pp"] = mean.delta_acc * 100
    mean["rank"] = mean["rank"].astype(int).astype(str)
    layer_sets = sorted(mean.layer_set.unique())
    policies = sorted(mean.policy.unique())
    fig = new_figure(height=1.9 * len(policies) + 0.4)
    axes = fig.subplots(len(policies), len(layer_sets), sharex=True, sharey=True, squeeze=False)
    for i, policy in enumerate(policies):
        for j, layer_set in enumerate(layer_sets):
            ax = axes[i][j]
            part = mean[(mean.policy == policy) & (mean.layer_set == layer_set)]
            sns.lineplot(part, x="gamma", y="delta_pp", hue="rank", style="builder", markers=True, ax=ax,
                         legend=(i == 0 and j == len(layer_sets) - 1))
            if ax.get_legend() is not None:
                sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1.0))
            ax.axhline(0, color="0.6", lw=0.8, ls="--")
            ax.set_xscale("log")
            ax.set_xticks(sorted(mean.gamma.unique()), [f"{g:g}" for g in sorted(mean.gamma.unique())])
            ax.minorticks_off()
            ax.set_title(f"{layer_set}, {policy}")
            ax.set_xlabel(r"$\gamma$")
            ax.set_ylabel("dev $\\Delta$ acc (pp)" if j == 0 else "")
    save_pdf(fig, out / "figures" / "gamma_rank.pdf")


def overhead_figure(ch: pd.DataFrame, out: Path) -> None:
    long = pd.concat([ch.assign(measure="time per token", ratio=ch.latency_ratio),
                      ch.assign(measure="peak memory", ratio=ch.memory_ratio)])
    fig = new_figure(height=2.2)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, measure in zip(axes, ("time per token", "peak memory")):
        sns.barplot(long[long.measure == measure], x="task", y="ratio", hue="model", ax=ax, errorbar=None,
                    legend=ax is axes[-1])
        ax.axhline(1, color="0.6", lw=0.8, ls="--")
        ax.set_title(measure)
        ax.set_ylabel("VPS / base (same run)")
    save_pdf(fig, out / "figures" / "overhead.pdf")


def macros(grid: pd.DataFrame, ch: pd.DataFrame, vt: pd.DataFrame, s: DictConfig) -> dict[str, str]:
    m: dict[str, str] = {}

    def add(value: str, *parts: object) -> None:
        m[tex.macro_name("Vps", *parts)] = value

    add(tex.integer(grid.groupby(AXES).ngroups), "GridSize")
    add("1", "One")  # the constant of the method's formulas, so the paper types no digit
    add(tex.num(Policy().entropy_scale, 0), "EntropyScale")
    for name in ("tau", "ridge", "lo_ratio"):
        values = grid[name].dropna().unique()
        add(tex.escape(", ".join(f"{v:g}" for v in sorted(values))) if len(values) else "off", name)
    clamps = grid.clamp.dropna().unique()
    add(tex.escape(", ".join(f"{v:g}" for v in sorted(clamps))) if len(clamps) else "off", "Clamp")
    for a in AXES:
        add(tex.escape(", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in sorted(grid[a].unique()))),
            "Axis", a)
    mean = grid.groupby(AXES, as_index=False).delta_acc.mean()
    add(tex.integer((mean.delta_acc > 0).sum()), "DevNPositive")
    add(tex.integer((mean.delta_acc < 0).sum()), "DevNNegative")
    best = mean.sort_values("delta_acc", ascending=False).iloc[0]
    add(tex.pct(best.delta_acc, 2), "DevBestMeanDelta")
    add(config_label(best), "DevBestMeanConfig")
    for gamma, part in mean.groupby("gamma"):
        add(tex.pct(part.delta_acc.mean(), 2), "DevMeanDeltaGamma", f"{gamma:g}")
    for rank, part in mean.groupby("rank"):
        add(tex.pct(part.delta_acc.mean(), 2), "DevMeanDeltaRank", int(rank))
    for col in ("builder", "layer_set", "policy"):
        for value, part in mean.groupby(col):
            add(tex.pct(part.delta_acc.mean(), 2), "DevMeanDelta", value)
    # Per axis, the values with the best and the worst mean change: names that exist for any grid.
    for axis, by_value in axis_means(mean).groupby("axis", sort=False):
        for which, row in (("Best", by_value.iloc[0]), ("Worst", by_value.iloc[-1])):
            add(tex.escape(row.value), "Dev", axis, which)
            add(tex.pct(row.delta_acc, 2), "Dev", axis, which, "Delta")
    add(tex.pct(grid.delta_acc.max()), "DevMaxCellDelta")
    add(tex.pct(grid.delta_acc.min()), "DevMinCellDelta")
    add(tex.integer(len(ch)), "NCells")
    add(tex.integer((ch.q < s.fdr).sum()), "NSig")
    add(tex.integer(((ch.q < s.fdr) & (ch.delta_acc > 0)).sum()), "NSigUp")
    add(tex.integer(((ch.q < s.fdr) & (ch.delta_acc < 0)).sum()), "NSigDown")
    add(tex.integer((ch.delta_acc > 0).sum()), "NUp")
    add(tex.integer((ch.delta_acc < 0).sum()), "NDown")
    add(tex.integer((ch.delta_acc == 0).sum()), "NZero")
    add(tex.pval(ch.p.min()), "MinP")
    headroom = ch[ch.acc_base < 1.0]  # cells where the base model is not already perfect on test
    add(tex.integer(len(headroom)), "NHeadroom")
    add(tex.pct(ch.dev_delta.mean(), 2), "ChosenMeanDevDelta")  # how much the choice gained on dev...
    add(tex.pct(ch.delta_acc.mean(), 2), "ChosenMeanTestDelta")  # ...and what of it held on test
    add(tex.num(s.fdr, 2), "Fdr")
    add(tex.integer(round(100 * s.level)), "CiLevel")
    for _, r in ch.iterrows():
        key = (r["model"], r["task"])
        add(tex.pct(r.delta_acc), *key, "Delta")
        add(tex.pct(r.ci_low), *key, "DeltaLow")
        add(tex.pct(r.ci_high), *key, "DeltaHigh")
        add(tex.pval(r.p), *key, "P")
        add(tex.pval(r.q), *key, "Q")
        add(tex.pct(r.acc_base), *key, "AccBase")
        add(tex.pct(r.acc), *key, "Acc")
        add(tex.num(r.latency_ratio, 2), *key, "Latency")
    add(tex.num(ch.latency_ratio.median(), 2), "LatencyMedian")
    add(tex.num(ch.latency_ratio.min(), 2), "LatencyMin")
    add(tex.num(ch.latency_ratio.max(), 2), "LatencyMax")
    add(tex.num(ch.memory_ratio.median(), 2), "MemoryMedian")
    add(tex.num(ch.memory_ratio.min(), 2), "MemoryMin")
    add(tex.num(ch.memory_ratio.max(), 2), "MemoryMax")
    add(tex.num(ch.sec_per_token_base.median() * 1e6, 0), "UsPerTokenBase")
    add(tex.num(ch.sec_per_token.median() * 1e6, 0), "UsPerToken")
    add(tex.escape(", ".join(str(int(t)) for t in sorted(ch.threads.unique()))), "Threads")
    for _, r in vt.iterrows():
        key = (r["model"], r["task"], "Verify")
        add(tex.pct(r.acc), *key, "Acc")
        add(tex.pct(r.acc_control), *key, "AccControl")
        add(tex.pct(r.acc_base), *key, "AccBase")
        for ref in ("base", "control", "cvb"):
            add(tex.pct(r[f"delta_{ref}"]), *key, ref, "Delta")
            add(tex.pct(r[f"low_{ref}"]), *key, ref, "DeltaLow")
            add(tex.pct(r[f"high_{ref}"]), *key, ref, "DeltaHigh")
            add(tex.pval(r[f"p_{ref}"]), *key, ref, "P")
        add(tex.num(r.rounds, 2), *key, "Rounds")
    if len(vt):
        add(tex.integer(vt.max_rounds.max()), "VerifyMaxRounds")
        add(tex.integer(vt.n_candidates.max()), "VerifyCandidates")
    return m


def metrics(ch: pd.DataFrame, vt: pd.DataFrame, grid: pd.DataFrame, s: DictConfig) -> dict:
    out: dict[str, float | int | None] = {
        "vps/grid_size": int(grid.groupby(AXES).ngroups),
        "vps/n_cells": len(ch),
        "vps/n_significant": int((ch.q < s.fdr).sum()),
        "vps/latency_ratio_median": float(ch.latency_ratio.median()),
        "vps/memory_ratio_median": float(ch.memory_ratio.median()),
    }
    for _, r in ch.iterrows():
        out[f"vps/{r['model']}/{r['task']}/delta_acc"] = float(r.delta_acc)
        out[f"vps/{r['model']}/{r['task']}/p"] = float(r.p)
    for _, r in vt.iterrows():
        out[f"vps/{r['model']}/{r['task']}/verify_delta_vs_control"] = float(r.delta_control)
        out[f"vps/{r['model']}/{r['task']}/verify_delta_vs_base"] = float(r.delta_base)
    return out


def report(cfg: DictConfig, results: Path, out: Path) -> dict:
    s = cfg.report
    df = load_results("vps", results, with_examples=True, schema=row_schemas.VPS)
    check_one_setting(df)
    grid = dev_grid(df)
    ch = chosen(df, s, int(cfg.seed))
    vt = verification(df, ch, s, int(cfg.seed))
    with paper_style():
        gamma_figure(grid, out)
        overhead_figure(ch, out)
    write_text(out / "tables" / "test.tex", test_table(ch))
    write_text(out / "tables" / "axes.tex", axes_table(grid.groupby(AXES, as_index=False).delta_acc.mean()))
    if len(vt):
        write_text(out / "tables" / "verify.tex", verify_table(vt))
    write_csv(grid, out / "data" / "dev_grid.csv")
    write_csv(ch, out / "data" / "test_chosen.csv")
    write_csv(vt, out / "data" / "verify.csv")
    write_text(out / "macros.tex", tex.macros_tex(macros(grid, ch, vt, s)))
    result = metrics(ch, vt, grid, s)
    write_json(result, out / "metrics.json")
    return result
