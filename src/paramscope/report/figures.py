"""The paper's figures, drawn from the aggregate stage's outputs (never from raw results).

Reading ``reports/`` rather than ``results/`` keeps one source for every q-value and CI: a figure
cannot disagree with the table beside it. Every figure is drawn under :func:`style.paper_style`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from paramscope.errors import StudyError
from paramscope.report.atlas.keys import GROUP_ORDER, SITE_GROUPS, UNIT_GROUPS
from paramscope.report.order import preferred_order
from paramscope.report.style import (
    CORRELATION,
    DIVERGING,
    TEXT_WIDTH,
    colors,
    new_figure,
    paper_style,
    save_pdf,
)
from paramscope.store import atomic_dir

log = logging.getLogger(__name__)

INPUTS = {
    "atlas": "atlas.parquet",
    "clean": "plots/clean_accuracy.csv",
    "pairs": "plots/model_pairs.csv",
    "spearman": "data/spearman.csv",
    "interactions": "data/interactions.csv",
}
DELTA_LABEL = r"$\Delta$ accuracy (pp)"


@dataclass(frozen=True)
class Inputs:
    atlas: pd.DataFrame
    clean: pd.DataFrame
    pairs: pd.DataFrame
    spearman: pd.DataFrame
    interactions: pd.DataFrame
    split: str
    models: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()

    def model_order(self, values: pd.Series) -> list[str]:
        return preferred_order(values, self.models)

    def task_order(self, values: pd.Series) -> list[str]:
        return preferred_order(values, self.tasks)


def load_inputs(reports: Path, split: str, models: Sequence[str] = (), tasks: Sequence[str] = ()) -> Inputs:
    frames = {}
    for key, rel in INPUTS.items():
        path = Path(reports) / rel
        if not path.is_file():
            raise StudyError(f"no {path}: run the 'aggregate' stage first (dvc repro)")
        frames[key] = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    return Inputs(**frames, split=split, models=tuple(models), tasks=tuple(tasks))


def _slug(group: str, op: str, value: float) -> str:
    """File name of a map type: 'heads' for zero ablation, 'heads_scale0p5' for scaling by 0.5."""
    return group if op == "zero" else f"{group}_{op}{value:g}".replace(".", "p").replace("-", "m")


def _map_types(atlas: pd.DataFrame, groups: Sequence[str]) -> list[tuple[str, str, float]]:
    sub = atlas[atlas["group"].isin(groups)][["group", "op", "value"]].drop_duplicates()
    order = {g: i for i, g in enumerate(GROUP_ORDER)}
    keys = sorted(sub.itertuples(index=False), key=lambda r: (order.get(r.group, 99), r.op != "zero", r.op, r.value))
    return [(r.group, r.op, float(r.value)) for r in keys]


def unit_heatmaps(inp: Inputs, group: str, op: str, value: float) -> Figure:
    """One panel per model (rows) and task (columns): layers x units, colour = delta accuracy.

    An asterisk marks units whose effect survives BH-FDR across the units of that map.
    """
    df = inp.atlas[(inp.atlas["split"] == inp.split) & (inp.atlas["group"] == group) & (inp.atlas["op"] == op)
                   & (inp.atlas["value"] == value)]
    models, tasks = inp.model_order(df["model"]), inp.task_order(df["task"])
    n_layers = df["layer"].nunique()
    row_h = float(np.clip(0.16 * n_layers + 0.5, 1.2, 3.0))
    fig = new_figure(TEXT_WIDTH, row_h * len(models) + 0.4)
    # no shared axes: each heatmap inverts its own y axis, and shared axes would undo that in pairs
    axes = fig.subplots(len(models), len(tasks), squeeze=False)
    vmax = float(np.nanmax(np.abs(df["delta_acc"].to_numpy()))) * 100 or 1.0
    norm = Normalize(vmin=-vmax, vmax=vmax)  # symmetric, so 0 sits at the white centre of the map
    unit_word = "head" if group == "heads" else "first neuron of block"
    for i, model in enumerate(models):
        for j, task in enumerate(tasks):
            ax = axes[i, j]
            m = df[(df["model"] == model) & (df["task"] == task)]
            if m.empty:
                ax.set_axis_off()
                continue
            grid = m.pivot(index="layer", columns="unit", values="delta_acc") * 100
            sig = m.assign(s=m["significant"].astype(float)).pivot(index="layer", columns="unit", values="s")
            sns.heatmap(grid, ax=ax, cmap=DIVERGING, vmin=-vmax, vmax=vmax, cbar=False, linewidths=0.3,
                        linecolor="white", xticklabels="auto", yticklabels=True)
            for y, x in zip(*np.nonzero(sig.fillna(0).to_numpy() > 0)):
                ax.text(x + 0.5, y + 0.5, "*", ha="center", va="center", fontsize=8, color="black")
            ax.set_title(task if i == 0 else "")
            ax.set_xlabel(unit_word if i == len(models) - 1 else "")
            ax.set_ylabel(f"{model}\nlayer" if j == 0 else "")
            ax.tick_params(length=0, labelsize=6)
    fig.colorbar(ScalarMappable(norm=norm, cmap=DIVERGING), ax=axes, label=DELTA_LABEL, shrink=0.8, aspect=30)
    return fig


def layer_profiles(inp: Inputs, op: str, value: float) -> Figure:
    """Delta accuracy per layer with its CI, one line per task; filled markers survive FDR.

    Rows are models, columns the site groups present (whole layer, attention, MLP).
    """
    df = inp.atlas[(inp.atlas["split"] == inp.split) & inp.atlas["group"].isin(SITE_GROUPS)
                   & (inp.atlas["op"] == op) & (inp.atlas["value"] == value)]
    models = inp.model_order(df["model"])
    groups = [g for g in GROUP_ORDER if g in set(df["group"])]
    tasks = inp.task_order(df["task"])
    palette = colors(tasks)
    fig = new_figure(TEXT_WIDTH, 1.6 * len(models) + 0.5)
    axes = fig.subplots(len(models), len(groups), squeeze=False, sharex=True, sharey=True)
    offsets = np.linspace(-0.2, 0.2, len(tasks)) if len(tasks) > 1 else np.zeros(1)
    titles = {"layers": "whole layer", "attn": "attention", "mlp": "MLP"}
    for i, model in enumerate(models):
        for j, group in enumerate(groups):
            ax = axes[i, j]
            ax.axhline(0, color="0.6", lw=0.6, zorder=0)
            for off, task in zip(offsets, tasks):
                m = df[(df["model"] == model) & (df["group"] == group) & (df["task"] == task)].sort_values("layer")
                if m.empty:
                    continue
                x = m["layer"].to_numpy() + off
                y = m["delta_acc"].to_numpy() * 100
                err = np.vstack([y - m["ci_low"].to_numpy() * 100, m["ci_high"].to_numpy() * 100 - y])
                c = palette[task]
                ax.errorbar(x, y, yerr=err, color=c, lw=0.9, capsize=1.5, marker="none", label=task)
                sig = m["significant"].to_numpy(dtype=bool)
                ax.scatter(x[sig], y[sig], color=c, s=14, zorder=3)
                ax.scatter(x[~sig], y[~sig], facecolor="white", edgecolor=c, s=14, lw=0.8, zorder=3)
            ax.set_title(titles.get(group, group) if i == 0 else "")
            ax.set_ylabel(f"{model}\n{DELTA_LABEL}" if j == 0 else "")
            ax.set_xlabel("layer" if i == len(models) - 1 else "")
            ax.set_xticks(sorted(df["layer"].unique()))
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncol=max(1, len(tasks)))
    return fig


def clean_accuracy(inp: Inputs) -> Figure:
    """Clean accuracy per task and model with bootstrap CIs; dashed line = chance."""
    df = inp.clean[inp.clean["split"] == inp.split]
    models, tasks = inp.model_order(df["model"]), inp.task_order(df["task"])
    palette = colors(models)
    fig = new_figure(TEXT_WIDTH, 2.4)
    ax = fig.subplots()
    width = 0.8 / len(models)
    for k, model in enumerate(models):
        m = df[df["model"] == model].set_index("task").reindex(tasks)
        x = np.arange(len(tasks)) - 0.4 + width * (k + 0.5)
        y = m["acc"].to_numpy() * 100
        err = np.vstack([y - m["ci_low"].to_numpy() * 100, m["ci_high"].to_numpy() * 100 - y])
        ax.bar(x, y, width=width * 0.92, color=palette[model], label=model)
        ax.errorbar(x, y, yerr=err, fmt="none", ecolor="black", lw=0.8, capsize=1.5)
    chance = df["chance"].dropna()
    if len(chance):
        ax.axhline(chance.iloc[0] * 100, color="0.3", ls="--", lw=0.8, label="chance")
    crowded = sum(len(t) for t in tasks) > 48  # e.g. the seven lm-eval benchmarks: tilt the names apart
    ax.set_xticks(np.arange(len(tasks)), tasks, rotation=25 if crowded else 0, ha="right" if crowded else "center")
    ax.set_ylim(0, 100)
    ax.set_ylabel(f"{inp.split} accuracy (%)")
    fig.legend(loc="outside right upper", fontsize=7)
    return fig


def model_pairs(inp: Inputs) -> Figure:
    """Paired accuracy difference (model - reference) per task with CIs; filled markers survive FDR."""
    df = inp.pairs.copy()
    df["pair"] = df["model"] + " - " + df["reference"]
    pairs = list(dict.fromkeys(df["pair"]))
    tasks = inp.task_order(df["task"])
    palette = colors(pairs)
    fig = new_figure(TEXT_WIDTH * 0.7, 2.2)
    ax = fig.subplots()
    ax.axhline(0, color="0.6", lw=0.6, zorder=0)
    offsets = np.linspace(-0.15, 0.15, len(pairs)) if len(pairs) > 1 else np.zeros(1)
    for off, pair in zip(offsets, pairs):
        m = df[df["pair"] == pair].set_index("task").reindex(tasks)
        x = np.arange(len(tasks)) + off
        y = m["delta_acc"].to_numpy() * 100
        err = np.vstack([y - m["ci_low"].to_numpy() * 100, m["ci_high"].to_numpy() * 100 - y])
        c = palette[pair]
        ax.errorbar(x, y, yerr=err, fmt="none", ecolor=c, lw=0.9, capsize=2, label=pair)
        sig = m["significant"].astype(float).fillna(0).to_numpy() > 0
        ax.scatter(x[sig], y[sig], color=c, s=18, zorder=3)
        ax.scatter(x[~sig], y[~sig], facecolor="white", edgecolor=c, s=18, lw=0.9, zorder=3)
    ax.set_xticks(np.arange(len(tasks)), tasks)
    ax.set_ylabel(f"{DELTA_LABEL}, {inp.split}")
    fig.legend(loc="outside right upper", fontsize=7)
    return fig


def correlation_matrices(inp: Inputs, group: str, kind: str) -> Figure:
    """Spearman rho between importance maps: across tasks within each model, or across models per task."""
    df = inp.spearman[(inp.spearman["group"] == group) & (inp.spearman["kind"] == kind)]
    scopes = inp.model_order(df["scope"]) if kind == "task" else inp.task_order(df["scope"])
    fig = new_figure(TEXT_WIDTH, TEXT_WIDTH / max(len(scopes), 2) + 0.6)
    axes = fig.subplots(1, len(scopes), squeeze=False)[0]
    for ax, scope in zip(axes, scopes):
        m = df[df["scope"] == scope]
        raw = list(m["a"]) + list(m["b"])
        names = inp.task_order(raw) if kind == "task" else inp.model_order(raw)
        mat = pd.DataFrame(np.eye(len(names)), index=names, columns=names)
        for r in m.itertuples():
            mat.loc[r.a, r.b] = mat.loc[r.b, r.a] = r.rho
        sns.heatmap(mat, ax=ax, cmap=CORRELATION, vmin=-1, vmax=1, center=0, annot=True, fmt=".2f",
                    annot_kws={"fontsize": 6}, cbar=False, square=True, linewidths=0.3, linecolor="white")
        ax.set_title(scope)
        ax.tick_params(length=0, labelsize=6)
    fig.colorbar(ScalarMappable(norm=Normalize(vmin=-1, vmax=1), cmap=CORRELATION), ax=axes,
                 label=r"Spearman $\rho$", shrink=0.8)
    return fig


_BIN = r"(?P<kind>\S+) bin (?P<bin>\d+) of (?P<bins>\d+)"  # kind: a projection's name within its block


def magnitude_curves(inp: Inputs) -> Figure:
    """Delta accuracy per |w| quantile bin (low to high), magnitude bins solid, size-matched random
    controls dashed; one line per task, rows = models, columns = projection kinds (each binned alone)."""
    df = inp.atlas[(inp.atlas["split"] == inp.split) & inp.atlas["group"].isin(["magnitude", "random"])
                   & (inp.atlas["op"] == "zero")].copy()
    df = df.join(df["unit_name"].str.extract(_BIN)).dropna(subset=["kind"])
    df["bin"] = df["bin"].astype(int)
    models, tasks = inp.model_order(df["model"]), inp.task_order(df["task"])
    kinds = list(dict.fromkeys(df.sort_values("unit")["kind"]))  # in the models' module order
    palette = colors(tasks)
    fig = new_figure(TEXT_WIDTH, 1.5 * len(models) + 0.5)
    axes = fig.subplots(len(models), len(kinds), squeeze=False, sharex=True, sharey=True)
    for i, model in enumerate(models):
        for j, kind in enumerate(kinds):
            ax = axes[i, j]
            ax.axhline(0, color="0.6", lw=0.6, zorder=0)
            for task in tasks:
                for group, style in (("magnitude", "-"), ("random", "--")):
                    m = df[(df["model"] == model) & (df["kind"] == kind) & (df["task"] == task)
                           & (df["group"] == group)].sort_values("bin")
                    if m.empty:
                        continue
                    y = m["delta_acc"].to_numpy() * 100
                    ax.plot(m["bin"], y, style, color=palette[task], lw=0.9, marker="o" if group == "magnitude" else "",
                            ms=2.5, label=task if group == "magnitude" else None)
                    ax.fill_between(m["bin"], m["ci_low"] * 100, m["ci_high"] * 100, color=palette[task],
                                    alpha=0.12, lw=0)
            ax.set_title(kind if i == 0 else "", fontsize="small")
            ax.set_ylabel(f"{model}\n{DELTA_LABEL}" if j == 0 else "")
    fig.supxlabel("|w| quantile bin, smallest to largest (dashed: random control of equal size)", fontsize="small")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncol=max(1, len(tasks)))
    return fig


def concentration_curves(inp: Inputs, group: str) -> Figure:
    """Cumulative share of a map's total damage carried by its most harmful units (sorted), against the
    fraction of units: the steeper, the more concentrated. One line per task, one panel per model."""
    df = inp.atlas[(inp.atlas["split"] == inp.split) & (inp.atlas["group"] == group) & (inp.atlas["op"] == "zero")]
    if "checked" in df:  # screened maps hold a chosen subset of units: no share of the whole to draw
        df = df[df["checked"].fillna("all") == "all"]
    models, tasks = inp.model_order(df["model"]), inp.task_order(df["task"])
    palette = colors(tasks)
    fig = new_figure(TEXT_WIDTH, 2.0)
    axes = fig.subplots(1, len(models), squeeze=False, sharey=True)[0]
    for ax, model in zip(axes, models):
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.6, ls=":")
        for task in tasks:
            damage = np.sort(np.clip(-df[(df["model"] == model) & (df["task"] == task)]["delta_acc"].to_numpy(),
                                     0, None))[::-1]
            if damage.size == 0 or damage.sum() <= 0:
                continue  # no harmful unit: no share to draw
            x = np.arange(damage.size + 1) / damage.size
            ax.step(x, np.concatenate([[0], np.cumsum(damage) / damage.sum()]), where="post", color=palette[task],
                    lw=0.9, label=task)
        ax.set_title(model)
    fig.supxlabel(f"fraction of {group}, most harmful first", fontsize="small")
    axes[0].set_ylabel("share of total damage")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncol=max(1, len(tasks)))
    return fig


def screen_vs_exact(inp: Inputs) -> Figure:
    """The first-order screen's estimated change in gold log-likelihood against the exact change, per unit."""
    df = inp.atlas[(inp.atlas["split"] == inp.split) & inp.atlas["screen_delta_gold_ll"].notna()] \
        if "screen_delta_gold_ll" in inp.atlas else inp.atlas.iloc[:0]
    groups = [g for g in UNIT_GROUPS if g in set(df["group"])]
    tasks = inp.task_order(df["task"])
    palette = colors(tasks)
    fig = new_figure(TEXT_WIDTH, 2.4)
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, group in zip(axes, groups):
        m = df[df["group"] == group]
        exact, screen = -m["delta_loss"].to_numpy(), m["screen_delta_gold_ll"].to_numpy()
        lo, hi = float(min(exact.min(), screen.min())), float(max(exact.max(), screen.max()))
        ax.plot([lo, hi], [lo, hi], color="0.7", lw=0.6, ls=":")
        for task in tasks:
            t = m["task"] == task
            ax.scatter(exact[t.to_numpy()], screen[t.to_numpy()], s=5, color=palette[task], alpha=0.7, lw=0, label=task)
        ax.set_title(group)
        ax.set_xlabel("exact change in gold log-lik.")
        ax.set_ylabel("screen estimate")
    if groups:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside upper center", ncol=max(1, len(tasks)))
    return fig


def interaction_plot(inp: Inputs) -> Figure:
    """Non-additivity of each pair of top heads (chosen on the selection split) with its CI."""
    df = inp.interactions[inp.interactions["split"] == inp.split]
    models, tasks = inp.model_order(df["model"]), inp.task_order(df["task"])
    palette = colors(tasks)
    fig = new_figure(TEXT_WIDTH, 2.0)
    axes = fig.subplots(1, len(models), squeeze=False, sharey=True)[0]
    for ax, model in zip(axes, models):
        ax.axhline(0, color="0.6", lw=0.6, zorder=0)
        m = df[df["model"] == model].reset_index(drop=True)
        for task in tasks:
            t = m[m["task"] == task]
            y = t["nonadd"].to_numpy() * 100
            err = np.vstack([y - t["nonadd_ci_low"].to_numpy() * 100, t["nonadd_ci_high"].to_numpy() * 100 - y])
            ax.errorbar(t.index.to_numpy(), y, yerr=err, fmt="o", ms=2.5, lw=0.8, capsize=1.2, color=palette[task],
                        label=task)
        ax.set_title(model)
        ax.set_xticks([])
    fig.supxlabel("pairs of top heads (chosen on the selection split)", fontsize="small")
    axes[0].set_ylabel("non-additivity (pp)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncol=max(1, len(tasks)))
    return fig


def all_figures(inp: Inputs) -> Iterator[tuple[str, Callable[[], Figure]]]:
    """(file stem, drawing function) for every figure the inputs support."""
    yield "clean_accuracy", lambda: clean_accuracy(inp)
    if len(inp.pairs):
        yield "model_pairs", lambda: model_pairs(inp)
    atlas = inp.atlas[inp.atlas["split"] == inp.split]
    for group, op, value in _map_types(atlas, UNIT_GROUPS):
        yield _slug(group, op, value), lambda g=group, o=op, v=value: unit_heatmaps(inp, g, o, v)
    for _, op, value in dict.fromkeys((None, o, v) for _, o, v in _map_types(atlas, SITE_GROUPS)):
        yield _slug("layers", op, value).replace("layers", "layer_profile", 1), \
            lambda o=op, v=value: layer_profiles(inp, o, v)
    if atlas["group"].isin(["magnitude"]).any():
        yield "magnitude_curves", lambda: magnitude_curves(inp)
    exact = atlas[atlas["checked"].fillna("all") == "all"] if "checked" in atlas else atlas
    for group in UNIT_GROUPS:
        if ((exact["group"] == group) & (exact["op"] == "zero")).any():
            yield f"concentration_{group}", lambda g=group: concentration_curves(inp, g)
    if "screen_delta_gold_ll" in atlas and atlas["screen_delta_gold_ll"].notna().any():
        yield "screen_vs_exact", lambda: screen_vs_exact(inp)
    if len(inp.interactions) and (inp.interactions["split"] == inp.split).any():
        yield "interactions", lambda: interaction_plot(inp)
    for group in preferred_order(inp.spearman["group"], GROUP_ORDER):
        for kind, suffix in (("task", ""), ("model", "_models")):
            if len(inp.spearman[(inp.spearman["group"] == group) & (inp.spearman["kind"] == kind)]):
                yield f"spearman_{group}{suffix}", lambda g=group, k=kind: correlation_matrices(inp, g, k)


def figures(reports: Path, split: str = "test", models: Sequence[str] = (), tasks: Sequence[str] = ()) -> list[str]:
    """Draw every figure into ``reports/figures`` (swapped in whole); returns the file names."""
    inp = load_inputs(Path(reports), split, models, tasks)
    logging.getLogger("fontTools").setLevel(logging.WARNING)  # font subsetting logs every glyph at INFO
    written = []
    with paper_style(), atomic_dir(Path(reports) / "figures") as out:
        for stem, draw in all_figures(inp):
            save_pdf(draw(), out / f"{stem}.pdf")
            written.append(f"{stem}.pdf")
            log.info("figure %s", stem)
    return written
