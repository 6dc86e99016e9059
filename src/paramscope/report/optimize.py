"""Report of the optimize topic: profile gains on dev and test, random controls, transfer, compression.

Inputs are the optimize stage's cells (`paramscope.optimize.run`). Every interval is recomputed here
from the per-document vectors with the report's settings (paired bootstrap over documents, `level`,
`n_resamples`, `seed`), so the numbers match the rest of the paper.

What is chosen where: the profile (method and factors) was chosen on dev by the stage; its dev gain is
therefore optimistic by construction and is shown only to be compared with test. A compression level
is chosen on dev (the largest fraction whose dev accuracy stays within `TOLERANCE` of clean at that
fraction and every smaller one) and reported on test; the same quantity read off the test curve is
given as a description of that curve, marked as such.

When the results hold several search configurations (a k/budget grid), the headline numbers use the
most thorough one (largest budget, then largest k) and `tables/configs.tex` lists all of them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from omegaconf import DictConfig

from paramscope import row_schemas
from paramscope.errors import StudyError
from paramscope.report import latex as tex
from paramscope.report.order import preferred_order, sort_rows
from paramscope.report.output import write_csv, write_json, write_text
from paramscope.report.settings import Settings
from paramscope.report.style import (
    DIVERGING,
    TEXT_WIDTH,
    colors,
    new_figure,
    paper_style,
    save_pdf,
)
from paramscope.stats import mcnemar_exact, paired_bootstrap_ci
from paramscope.store import load_results

TOPIC = "Optimize"
TOLERANCE = 0.01  # "within 1 point of clean accuracy"
ORDERING_ORDER = ("importance", "magnitude", "wanda", "random")
GROUP_ORDER = ("heads", "neurons")
KINDS = ("search", "control", "transfer", "compress")


def _vec(x: object) -> np.ndarray:
    return np.asarray(list(x), dtype=float)


def _delta(clean: np.ndarray, other: np.ndarray, s: Settings) -> tuple[float, float, float]:
    return paired_bootstrap_ci(clean, other, n_resamples=s.n_resamples, level=s.level, seed=s.seed)


def _paired(row: pd.Series, s: Settings) -> dict:
    """Accuracy and gold log-likelihood deltas of one row against the clean model on its documents."""
    clean, acc = _vec(row.ex_clean_correct), _vec(row.ex_correct)
    d, lo, hi = _delta(clean, acc, s)
    dll, dll_lo, dll_hi = _delta(_vec(row.ex_clean_gold_ll), _vec(row.ex_gold_ll), s)
    return {"n": len(acc), "acc_clean": clean.mean(), "acc": acc.mean(), "delta_acc": d, "ci_low": lo,
            "ci_high": hi, "p_mcnemar": mcnemar_exact(clean, acc), "delta_ll": dll, "ll_ci_low": dll_lo,
            "ll_ci_high": dll_hi}


def load(results: Path) -> pd.DataFrame:
    try:
        df = load_results("optimize", results, with_examples=True, schema=row_schemas.OPTIMIZE)
    except FileNotFoundError as e:
        raise StudyError(f"{e}") from None
    missing = [k for k in KINDS if k not in set(df.kind)]
    if missing:
        raise StudyError(f"optimize results lack {', '.join(missing)} cells; rerun the 'optimize' stage")
    # Cells of another checkpoint, or compression curves of another seed (another dev/test split), would
    # be paired or pooled with these document by document: refuse them rather than mix them.
    checkpoints = df.groupby("model")["digest"].nunique()
    fixed = df[(df.kind == "compress") & (df.ordering != "random")]
    if (checkpoints > 1).any() or fixed.duplicated(["model", "task", "group", "ordering", "fraction", "split"]).any():
        raise StudyError("results/optimize mixes cells of several checkpoints or seeds; delete the stale cells "
                         "(or results/optimize) and rerun the 'optimize' stage")
    return df


def primary_config(df: pd.DataFrame) -> str:
    """The most thorough search configuration present (largest budget, then largest k)."""
    configs = df[df.kind == "search"][["config", "budget", "k"]].drop_duplicates()
    return str(configs.sort_values(["budget", "k", "config"], ascending=[False, False, True]).iloc[0].config)


# ------------------------------------------------------------------------------------- tables of numbers


def search_summary(df: pd.DataFrame, s: Settings) -> pd.DataFrame:
    """One row per model, task, config, method and split: the method's best profile against clean."""
    rows = []
    for r in df[df.kind == "search"].itertuples(index=False):
        r = pd.Series(r._asdict())
        rows.append({"model": r.model, "task": r.task, "config": r.config, "method": r.method,
                     "selected": bool(r.selected), "split": r.split, "n_factors": int(r.n_factors),
                     "profile": r.profile,
                     "strength": float(r.strength), "evaluations": int(r.evaluations), **_paired(r, s)})
    return _ordered(pd.DataFrame(rows), s)


def control_summary(df: pd.DataFrame, search: pd.DataFrame, s: Settings) -> pd.DataFrame:
    """Random profiles of the selected profile's size and strength on test: their spread, and how often
    one does at least as well as the profile (an empirical p-value with the +1 correction)."""
    rows = []
    chosen = search[search.selected & (search.split == s.split)].set_index(["model", "task", "config"])
    for (model, task, config), g in df[df.kind == "control"].groupby(["model", "task", "config"], sort=False):
        stats = pd.DataFrame([_paired(r, s) for _, r in g.iterrows()])
        best = chosen.loc[(model, task, config)]
        tail = (1.0 - s.level) / 2.0
        at_least = int((stats.delta_acc >= best.delta_acc - 1e-12).sum())
        at_least_ll = int((stats.delta_ll >= best.delta_ll - 1e-12).sum())
        rows.append({"model": model, "task": task, "config": config, "n_draws": len(stats),
                     "n_factors": int(g.n_factors.iloc[0]), "strength": float(g.strength.iloc[0]),
                     "delta_acc_mean": stats.delta_acc.mean(), "delta_acc_low": stats.delta_acc.quantile(tail),
                     "delta_acc_high": stats.delta_acc.quantile(1.0 - tail), "delta_ll_mean": stats.delta_ll.mean(),
                     "p_acc": (1 + at_least) / (1 + len(stats)), "p_ll": (1 + at_least_ll) / (1 + len(stats))})
    return _ordered(pd.DataFrame(rows), s)


def transfer_summary(df: pd.DataFrame, s: Settings) -> pd.DataFrame:
    rows = []
    for _, r in df[df.kind == "transfer"].iterrows():
        rows.append({"model": r.model, "task": r.task, "target_task": r.target_task, "config": r.config,
                     "n_factors": int(r.n_factors), **_paired(r, s)})
    return _ordered(pd.DataFrame(rows), s)


def compress_curves(df: pd.DataFrame, s: Settings) -> pd.DataFrame:
    """Accuracy against fraction removed per ordering; random orders pooled per document over draws
    (mean correctness), so their interval covers documents and draws together."""
    rows = []
    keys = ["model", "task", "group", "ordering", "fraction", "split"]
    for key, g in df[df.kind == "compress"].groupby(keys, sort=False):
        clean = _vec(g.ex_clean_correct.iloc[0])
        acc = np.mean([_vec(x) for x in g.ex_correct], axis=0)
        d, lo, hi = _delta(clean, acc, s)
        rows.append({**dict(zip(keys, key)), "n_removed": int(g.n_removed.iloc[0]),
                     "n_units_total": int(g.n_units_total.iloc[0]), "n_draws": len(g), "acc_clean": clean.mean(),
                     "acc": acc.mean(), "delta_acc": d, "ci_low": lo, "ci_high": hi})
    return _ordered(pd.DataFrame(rows), s, extra=("fraction",))


def removable(curves: pd.DataFrame, s: Settings) -> pd.DataFrame:
    """Per model, task, group and ordering: the largest fraction within TOLERANCE of clean accuracy at
    it and every smaller fraction, chosen on dev and reported on test; and the same read off test."""
    rows = []
    for key, g in curves.groupby(["model", "task", "group", "ordering"], sort=False):
        dev = g[g.split == s.select_split].sort_values("fraction")
        test = g[g.split == s.split].sort_values("fraction").set_index("fraction")
        f_dev, f_test = _largest_within(dev), _largest_within(test.reset_index())
        at = test.loc[f_dev]
        rows.append({**dict(zip(["model", "task", "group", "ordering"], key)), "fraction_dev": f_dev,
                     "n_removed": int(at.n_removed), "n_units_total": int(at.n_units_total),
                     "test_delta_acc": at.delta_acc, "test_ci_low": at.ci_low, "test_ci_high": at.ci_high,
                     "fraction_test": f_test})
    return pd.DataFrame(rows)


def _largest_within(curve: pd.DataFrame) -> float:
    ok = (curve.sort_values("fraction").delta_acc >= -TOLERANCE - 1e-12).to_numpy()
    first_bad = int(np.argmin(ok)) if not ok.all() else len(ok)
    return float(curve.sort_values("fraction").fraction.iloc[max(first_bad - 1, 0)])


def _ordered(df: pd.DataFrame, s: Settings, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """Rows by model, task, target task, group, ordering, method and split as configured, then ``extra``."""
    if df.empty:
        return df
    ranked = (("model", s.models), ("task", s.tasks), ("target_task", s.tasks), ("group", GROUP_ORDER),
              ("ordering", ORDERING_ORDER), ("method", ("coordinate", "cmaes")), ("split", (s.select_split, s.split)))
    return sort_rows(df, ranked, then=extra)


# ------------------------------------------------------------------------------------------ macros


def nats(x: float) -> str:
    """A log-likelihood difference: two decimals, or two significant digits when it is that small
    (on tasks at ceiling the gold answers are near-certain and moves are in thousandths of a nat)."""
    if abs(x) >= 0.01 or x == 0 or not np.isfinite(x):
        return tex.num(x, 2)
    mantissa, exponent = f"{x:.1e}".split("e")
    return rf"\ensuremath{{{mantissa}\times 10^{{{int(exponent)}}}}}"


ZERO_WORDS = {1: "above zero", -1: "below zero", 0: "includes zero"}  # where a delta's interval lies


def build_macros(search: pd.DataFrame, control: pd.DataFrame, transfer: pd.DataFrame, curves: pd.DataFrame,
                 keep: pd.DataFrame, config: str, s: Settings) -> dict[str, str]:
    m = tex.Macros(TOPIC)
    chosen = search[search.selected]
    m.add(config.split("-")[0][1:], "K")
    m.add(config.split("-")[1][1:], "Budget")
    m.add(tex.pct(TOLERANCE, 0), "Tolerance")
    low, high = json.loads(chosen.profile.iloc[0])["provenance"]["scale_range"]
    m.add(tex.num(low, 0), "ScaleMin")
    m.add(tex.num(high, 0), "ScaleMax")
    counts = {"DevUp": 0, "TestUp": 0, "TestDown": 0, "DevLlUp": 0, "TestLlUp": 0, "BeatsRandom": 0}
    for (model, task), g in chosen.groupby(["model", "task"], sort=False):
        dev = g[g.split == s.select_split].iloc[0]
        test = g[g.split == s.split].iloc[0]
        m.add(tex.escape(dev.method), model, task, "Method")
        m.add(int(dev.n_factors), model, task, "Factors")
        m.add(tex.num(dev.strength, 2), model, task, "Strength")
        m.interval(dev.delta_acc, dev.ci_low, dev.ci_high, model, task, "DevDelta")
        m.interval(test.delta_acc, test.ci_low, test.ci_high, model, task, "TestDelta")
        m.interval(test.delta_ll, test.ll_ci_low, test.ll_ci_high, model, task, "TestDeltaLl", fmt=nats)
        m.interval(dev.delta_ll, dev.ll_ci_low, dev.ll_ci_high, model, task, "DevDeltaLl", fmt=nats)
        m.add(tex.pct(test.acc_clean), model, task, "TestClean")
        m.add(ZERO_WORDS[tex.ci_side(dev.ci_low, dev.ci_high)], model, task, "DevVerdict")
        m.add(ZERO_WORDS[tex.ci_side(test.ci_low, test.ci_high)], model, task, "TestVerdict")
        m.add(ZERO_WORDS[tex.ci_side(test.ll_ci_low, test.ll_ci_high)], model, task, "TestLlVerdict")
        c = control[(control.model == model) & (control.task == task)].iloc[0]
        m.add(tex.pct(c.delta_acc_mean), model, task, "RandomDelta")
        m.add(tex.pct(c.delta_acc_low), model, task, "RandomDeltaLow")
        m.add(tex.pct(c.delta_acc_high), model, task, "RandomDeltaHigh")
        m.add(tex.pval(c.p_acc), model, task, "RandomP")
        m.add(tex.pval(c.p_ll), model, task, "RandomPLl")
        counts["DevUp"] += dev.ci_low > 0
        counts["TestUp"] += test.ci_low > 0
        counts["TestDown"] += test.ci_high < 0
        counts["DevLlUp"] += dev.ll_ci_low > 0
        counts["TestLlUp"] += test.ll_ci_low > 0
        counts["BeatsRandom"] += c.p_acc < 0.05
    for name, value in counts.items():
        m.add(int(value), "NTasks", name)
    m.add(chosen.task.nunique(), "NTasks")
    m.add(int(control.n_draws.iloc[0]), "NControls")
    off = transfer[transfer.task != transfer.target_task]
    m.add(tex.pct(off.delta_acc.mean()), "TransferOffMean")
    m.add(int((off.ci_high < 0).sum()), "TransferOffHurt")
    m.add(int((off.ci_low > 0).sum()), "TransferOffHelp")
    m.add(len(off), "TransferOffN")
    for r in keep.itertuples(index=False):
        parts = (r.model, r.task, r.group, r.ordering)
        m.add(tex.pct(r.fraction_dev, 0), *parts, "Fraction")
        m.add(r.n_removed, *parts, "Removed")
        m.interval(r.test_delta_acc, r.test_ci_low, r.test_ci_high, *parts, "TestDelta")
        m.add(tex.pct(r.fraction_test, 0), *parts, "FractionOnTest")
    for group, g in keep.groupby("group"):
        mean = g.groupby("ordering").fraction_dev.mean()
        m.add(tex.escape(mean.idxmax()), group, "BestOrdering")
        m.add(tex.pct(mean.max(), 0), group, "BestOrderingMeanFraction")
        for ordering in mean.index:
            m.add(tex.pct(mean[ordering], 0), group, ordering, "MeanFraction")
        wide = g.pivot(index=["model", "task"], columns="ordering", values="fraction_dev")
        for other in (o for o in ORDERING_ORDER if o != "importance" and o in wide):
            m.add(int((wide["importance"] >= wide[other]).sum()), group, "ImportanceAtLeast", other)
        m.add(len(wide), group, "NCases")
    # did the dev-chosen compression level hold on test?
    m.add(len(keep), "CompressCases")
    m.add(int((keep.test_delta_acc >= -TOLERANCE - 1e-12).sum()), "CompressHeld")
    m.add(int((keep.test_ci_high < -TOLERANCE).sum()), "CompressFailed")
    return dict(m)


def build_metrics(search: pd.DataFrame, control: pd.DataFrame, keep: pd.DataFrame, s: Settings) -> dict:
    out: dict[str, float | int | str | None] = {}
    for r in search[search.selected].itertuples(index=False):
        out[f"optimize/{r.model}/{r.task}/{r.split}_delta_acc"] = float(r.delta_acc)
        out[f"optimize/{r.model}/{r.task}/{r.split}_delta_ll"] = float(r.delta_ll)
    for r in control.itertuples(index=False):
        out[f"optimize/{r.model}/{r.task}/random_delta_acc_mean"] = float(r.delta_acc_mean)
    for r in keep.itertuples(index=False):
        out[f"optimize/{r.model}/{r.task}/{r.group}/{r.ordering}/removable_fraction"] = float(r.fraction_dev)
    return out


# ------------------------------------------------------------------------------------------ LaTeX tables


def search_table(search: pd.DataFrame, control: pd.DataFrame, s: Settings) -> str:
    header = ["Task", "Method", "Factors", r"Dev $\Delta$ (pp)", r"Test $\Delta$ (pp)", r"Test $\Delta$ LL (mnat)",
              r"Random $\Delta$", r"$p_{\mathrm{rand}}$"]
    rows: list[list[str] | None] = []
    for (model, task), g in search.groupby(["model", "task"], sort=False):
        c = control[(control.model == model) & (control.task == task)].iloc[0]
        for method, h in g.groupby("method", sort=False):
            dev = h[h.split == s.select_split].iloc[0]
            mark = r"$^\ast$" if dev.selected else ""
            if dev.selected:  # only the method chosen on dev is ever scored on test
                test = h[h.split == s.split].iloc[0]
                mnat = [tex.num(1000 * x, 1) for x in (test.delta_ll, test.ll_ci_low, test.ll_ci_high)]
                on_test = [f"{tex.pct(test.delta_acc)} {tex.ci(test.ci_low, test.ci_high)}",
                           f"{mnat[0]} [{mnat[1]}, {mnat[2]}]", tex.pct(c.delta_acc_mean), tex.pval(c.p_acc)]
            else:
                on_test = [tex.DASH, tex.DASH, "", ""]
            rows.append([tex.escape(task), tex.escape(method) + mark, str(int(dev.n_factors)),
                         f"{tex.pct(dev.delta_acc)} {tex.ci(dev.ci_low, dev.ci_high)}", *on_test])
        rows.append(None)
    return tex.booktabs(header, rows, "llrllll r".replace(" ", ""))


def transfer_table(transfer: pd.DataFrame, s: Settings) -> str:
    targets = preferred_order(transfer.target_task, s.tasks)
    header = [r"Profile $\downarrow$ / scored on $\rightarrow$", *[tex.escape(t) for t in targets]]
    rows = []
    for task, g in transfer.groupby("task", sort=False):
        by = g.set_index("target_task")
        rows.append([tex.escape(task), *[f"{tex.pct(by.loc[t].delta_acc)} {tex.ci(by.loc[t].ci_low, by.loc[t].ci_high)}"
                                         for t in targets]])
    return tex.booktabs(header, rows, "l" + "r" * len(targets))


def compress_table(keep: pd.DataFrame) -> str:
    header = ["Task", "Units", "Order", "Removed (dev)", r"Test $\Delta$ (pp)", "Removed (test curve)"]
    rows: list[list[str] | None] = []
    for (task, group), g in keep.groupby(["task", "group"], sort=False):
        for r in g.itertuples(index=False):
            rows.append([tex.escape(task), tex.escape(group), tex.escape(r.ordering),
                         f"{tex.pct(r.fraction_dev, 0)}\\% ({r.n_removed}/{r.n_units_total})",
                         f"{tex.pct(r.test_delta_acc)} {tex.ci(r.test_ci_low, r.test_ci_high)}",
                         f"{tex.pct(r.fraction_test, 0)}\\%"])
        rows.append(None)
    return tex.booktabs(header, rows, "lllrrr")


def configs_table(search: pd.DataFrame, s: Settings) -> str:
    header = ["Config", "Task", r"Dev $\Delta$ (pp)", r"Test $\Delta$ (pp)"]
    rows: list[list[str] | None] = []
    for (config, task), g in search[search.selected].groupby(["config", "task"], sort=False):
        dev, test = g[g.split == s.select_split].iloc[0], g[g.split == s.split].iloc[0]
        rows.append([tex.escape(config), tex.escape(task),
                     f"{tex.pct(dev.delta_acc)} {tex.ci(dev.ci_low, dev.ci_high)}",
                     f"{tex.pct(test.delta_acc)} {tex.ci(test.ci_low, test.ci_high)}"])
    return tex.booktabs(header, rows, "llrr")


# ------------------------------------------------------------------------------------------ figures


def gain_figure(search: pd.DataFrame, control: pd.DataFrame, raw_control: pd.DataFrame, s: Settings,
                path: Path) -> None:
    """Per task: the selected profile's dev and test deltas with CIs, and the random profiles on test."""
    chosen = search[search.selected]
    tasks = preferred_order(chosen.task, s.tasks)
    palette = colors([s.select_split, s.split, "random"])
    fig = new_figure(TEXT_WIDTH, 2.4)
    axes = fig.subplots(1, 2)
    for ax, (col, lo, hi, label, scale) in zip(axes, [("delta_acc", "ci_low", "ci_high",
                                                       r"$\Delta$ accuracy (pp)", 100),
                                                      ("delta_ll", "ll_ci_low", "ll_ci_high",
                                                       r"$\Delta$ mean gold log-lik. (nats)", 1)]):
        for offset, split in ((-0.2, s.select_split), (0.0, s.split)):
            part = chosen[chosen.split == split].set_index("task").loc[tasks]
            x = np.arange(len(tasks)) + offset
            y = part[col].to_numpy() * scale
            err = np.vstack([y - part[lo].to_numpy() * scale, part[hi].to_numpy() * scale - y])
            ax.errorbar(x, y, yerr=err, fmt="o", color=palette[split], label=f"profile, {split}", capsize=2)
        rand = raw_control[raw_control.task.isin(tasks)]
        for i, task in enumerate(tasks):
            vals = rand[rand.task == task][col].to_numpy() * scale
            ax.scatter(np.full(len(vals), i + 0.2), vals, s=6, color=palette["random"], alpha=0.6,
                       label="random, test" if i == 0 else None)
        ax.axhline(0, color="0.5", lw=0.6)
        ax.set_xticks(np.arange(len(tasks)), tasks)
        ax.set_ylabel(label)
    axes[0].legend(loc="best", fontsize="small")
    save_pdf(fig, path)


def transfer_figure(transfer: pd.DataFrame, s: Settings, path: Path) -> None:
    tasks = preferred_order(transfer.task, s.tasks)
    targets = preferred_order(transfer.target_task, s.tasks)
    wide = transfer.pivot(index="task", columns="target_task", values="delta_acc").loc[tasks, targets] * 100
    fig = new_figure(TEXT_WIDTH * 0.55, 2.4)
    ax = fig.subplots()
    bound = max(1.0, float(np.nanmax(np.abs(wide.to_numpy()))))
    sns.heatmap(wide, ax=ax, cmap=DIVERGING, center=0, vmin=-bound, vmax=bound, annot=True, fmt=".1f",
                cbar_kws={"label": r"$\Delta$ accuracy (pp), test"}, linewidths=0.5)
    ax.tick_params(axis="y", rotation=0)
    ax.set_xlabel("scored on task")
    ax.set_ylabel("profile of task")
    save_pdf(fig, path)


def compression_figure(curves: pd.DataFrame, s: Settings, path: Path) -> None:
    test = curves[curves.split == s.split]
    tasks = preferred_order(test.task, s.tasks)
    groups = preferred_order(test.group, GROUP_ORDER)
    palette = {**colors(list(ORDERING_ORDER)), "random": (0.45, 0.45, 0.45)}
    fig = new_figure(TEXT_WIDTH, 1.6 * len(groups) + 0.6)
    axes = np.atleast_2d(fig.subplots(len(groups), len(tasks), sharex=True, sharey=True, squeeze=False))
    for i, group in enumerate(groups):
        for j, task in enumerate(tasks):
            ax = axes[i, j]
            part = test[(test.group == group) & (test.task == task)]
            for ordering in preferred_order(part.ordering, ORDERING_ORDER):
                line = part[part.ordering == ordering].sort_values("fraction")
                ax.plot(line.fraction, line.acc * 100, marker="o", ms=2, lw=1, color=palette[ordering],
                        label=ordering)
                ax.fill_between(line.fraction, (line.acc_clean + line.ci_low) * 100,
                                (line.acc_clean + line.ci_high) * 100,
                                color=palette[ordering], alpha=0.15, lw=0)
            if len(part):
                ax.axhline((part.acc_clean.iloc[0] - TOLERANCE) * 100, color="0.4", lw=0.6, ls="--")
            if i == 0:
                ax.set_title(task)
            if j == 0:
                ax.set_ylabel(f"{group}: test acc. (%)")
            if i == len(groups) - 1:
                ax.set_xlabel("fraction removed")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize="small")
    save_pdf(fig, path)


# ------------------------------------------------------------------------------------------ entry point


def report(cfg: DictConfig, results: Path, out: Path) -> dict:
    """Write macros.tex, tables/, figures/, data/ and metrics.json of the optimize topic into ``out``."""
    s = Settings.from_cfg(cfg)
    df = load(results)
    config = primary_config(df)
    all_search = search_summary(df, s)
    main = df[(df.kind == "compress") | (df.config == config)]
    search = all_search[all_search.config == config]
    control = control_summary(main, all_search, s)
    raw_control = pd.DataFrame([{"task": r.task, "model": r.model, **_paired(r, s)}
                                for _, r in main[main.kind == "control"].iterrows()])
    transfer = transfer_summary(main, s)
    curves = compress_curves(main, s)
    keep = removable(curves, s)

    for name, table in {"search": search, "control": control, "transfer": transfer, "compression": curves,
                        "removable": keep}.items():
        write_csv(table, out / "data" / f"{name}.csv")
    write_text(out / "tables" / "search.tex", search_table(search, control, s))
    write_text(out / "tables" / "transfer.tex", transfer_table(transfer, s))
    write_text(out / "tables" / "compression.tex", compress_table(keep))
    write_text(out / "tables" / "configs.tex", configs_table(all_search, s))
    write_text(out / "macros.tex", tex.macros_tex(build_macros(search, control, transfer, curves, keep, config, s)))
    with paper_style():
        gain_figure(search, control, raw_control, s, out / "figures" / "gain_dev_test.pdf")
        transfer_figure(transfer, s, out / "figures" / "transfer.pdf")
        compression_figure(curves, s, out / "figures" / "compression.pdf")
    metrics = build_metrics(search, control, keep, s)
    metrics["optimize/config"] = config
    write_json(metrics, out / "metrics.json")
    profiles = sorted(str(p.relative_to(results)) for p in (results / "optimize" / "profiles").rglob("*.json"))
    write_text(out / "data" / "profiles.json", json.dumps(profiles, indent=2) + "\n")
    return metrics
