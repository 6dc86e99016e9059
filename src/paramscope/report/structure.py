"""Report of the structure stage: indistinguishable fractions, annealing vs magnitude, components, Weibull.

Called by `python stages/report.py topic=structure`; writes macros.tex, tables/, figures/ and
metrics.json into `out`. Where annealing stops was chosen on dev by the stage; every difference with a
confidence interval is measured here on `report.split` (test), paired by document with the dense model
(pooled over the documents of all tasks).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from omegaconf import DictConfig

from paramscope import row_schemas
from paramscope.errors import StudyError
from paramscope.report import latex as tex
from paramscope.report.order import preferred_then_seen
from paramscope.report.output import write_json, write_text
from paramscope.report.style import (
    TEXT_WIDTH,
    colors,
    new_figure,
    paper_style,
    save_pdf,
)
from paramscope.stats import mcnemar_exact, paired_bootstrap_ci
from paramscope.store import load_results
from paramscope.structure import weibull as weibull_spec
from paramscope.structure.weibull import (
    GAUSSIAN_K,
    GAUSSIAN_LAMBDA_PER_SIGMA,
    TORCH_LINEAR_K,
)

MATRIX_TYPES = ("attn_in", "attn_out", "mlp_in", "mlp_out")
TYPE_LABELS = {"attn_in": "attention in (q/k/v)", "attn_out": "attention out", "mlp_in": "MLP in",
               "mlp_out": "MLP out", "embed": "embedding", "unembed": "unembedding"}
STATES = ("anneal", "magnitude", "indist", "indist-magnitude")
STATE_LABELS = {"anneal": "annealing", "magnitude": "magnitude (same sparsity)",
                "indist": "indistinguishable set", "indist-magnitude": "magnitude (same sparsity as the set)"}
METHOD_COLORS = {"anneal": 0, "magnitude": 1}


def _m(*parts: object) -> str:
    return tex.macro_name("Structure", *parts)


def crossing_sparsity(curve: pd.DataFrame, dense_loss: float, tolerance: float) -> float:
    """Sparsity where |loss - dense| first reaches the tolerance, linearly interpolated between steps."""
    sparsity = np.concatenate([[0.0], curve.sparsity.to_numpy()])
    change = np.concatenate([[0.0], np.abs(curve.loss.to_numpy() - dense_loss)])
    above = np.flatnonzero(change > tolerance)
    if not above.size:
        return float(sparsity[-1])
    i = above[0]
    frac = (tolerance - change[i - 1]) / (change[i] - change[i - 1])
    return float(sparsity[i - 1] + frac * (sparsity[i] - sparsity[i - 1]))


def _pooled(rows: pd.DataFrame) -> pd.DataFrame:
    """Per-document correctness and gold log-likelihood of one state, keyed by (task, doc id)."""
    parts = [pd.DataFrame({"task": r.task, "doc": list(r.ex_doc_ids), "correct": list(r.ex_correct),
                           "gold_ll": list(r.ex_gold_ll)}) for r in rows.itertuples()]
    return pd.concat(parts, ignore_index=True).set_index(["task", "doc"]).sort_index()


def paired_states(anneal: pd.DataFrame, split: str, n_resamples: int, level: float, seed: int) -> pd.DataFrame:
    """Every chosen state against the dense model on `split`, paired by document."""
    rows = []
    states = anneal[(anneal.row_type == "state") & (anneal.split == split)]
    for model, by_model in states.groupby("model", sort=False):
        dense = _pooled(by_model[by_model.method == "dense"])
        for method in STATES:
            sub = by_model[by_model.method == method]
            if sub.empty:
                continue
            state = _pooled(sub).reindex(dense.index)
            if state.isna().any().any():
                raise StudyError(f"structure results of {model}: {method} and dense were scored on different documents")
            acc = paired_bootstrap_ci(dense.correct.to_numpy(), state.correct.to_numpy(), n_resamples, level, seed)
            # loss = -gold log-likelihood, so its change is the negated change of the log-likelihood
            ll = paired_bootstrap_ci(dense.gold_ll.to_numpy(), state.gold_ll.to_numpy(), n_resamples, level, seed)
            rows.append({"model": model, "method": method, "sparsity": float(sub.sparsity.iloc[0]),
                         "acc": float(state.correct.mean()), "acc_dense": float(dense.correct.mean()),
                         "delta_acc": acc[0], "delta_acc_low": acc[1], "delta_acc_high": acc[2],
                         "delta_loss": -ll[0], "delta_loss_low": -ll[2], "delta_loss_high": -ll[1],
                         "p_mcnemar": mcnemar_exact(dense.correct.to_numpy(), state.correct.to_numpy()),
                         "n": len(dense)})
    return pd.DataFrame(rows)


def annealing_summary(anneal: pd.DataFrame) -> pd.DataFrame:
    """Per model: where annealing and magnitude pruning stop on dev (grid step and interpolated)."""
    rows = []
    curves = anneal[(anneal.row_type == "curve")].drop_duplicates(["model", "method", "step"])
    for model, c in curves.groupby("model", sort=False):
        dense_loss = float(c[c.method == "dense"].loss.iloc[0])
        tolerance = float(c.tolerance.iloc[0])
        row = {"model": model, "tolerance": tolerance, "dense_loss": dense_loss}
        for method in ("anneal", "magnitude"):
            curve = c[c.method == method].sort_values("step")
            accepted = curve[curve.accepted.astype(bool)]
            row[f"{method}_sparsity"] = float(accepted.sparsity.iloc[0]) if len(accepted) else 0.0
            row[f"{method}_crossing"] = crossing_sparsity(curve, dense_loss, tolerance)
        rows.append(row)
    return pd.DataFrame(rows)


def _figure_indistinguishable(tests: pd.DataFrame, models: list[str], path: Path) -> None:
    m = tests[tests.row_type == "matrix"]
    palette = colors(list(MATRIX_TYPES))
    with paper_style():
        fig = new_figure(TEXT_WIDTH, 2.3)
        axes = fig.subplots(1, len(models), sharey=True, squeeze=False)[0]
        for ax, model in zip(axes, models):
            sub = m[m.model == model].assign(pct=lambda d: 100 * d.frac_indist)
            sns.lineplot(sub, x="layer", y="pct", hue="matrix_type", hue_order=list(MATRIX_TYPES), palette=palette,
                         marker="o", ax=ax, legend=ax is axes[-1])
            ax.set(title=model, xlabel="layer", ylabel="indistinguishable (%)", ylim=(0, 100))
            ax.set_xticks(sorted(sub.layer.unique()))
        handles, labels = axes[-1].get_legend_handles_labels()
        axes[-1].legend(handles, [TYPE_LABELS[t] for t in labels], fontsize="small", loc="lower left")
        save_pdf(fig, path)


def _figure_annealing(anneal: pd.DataFrame, models: list[str], path: Path) -> None:
    curves = anneal[anneal.row_type == "curve"].drop_duplicates(["model", "method", "step"])
    palette = colors(["anneal", "magnitude"])
    with paper_style():
        fig = new_figure(TEXT_WIDTH, 3.6)
        axes = fig.subplots(2, len(models), sharex=True, squeeze=False)
        for j, model in enumerate(models):
            c = curves[curves.model == model]
            dense = c[c.method == "dense"].iloc[0]
            start = pd.concat([c[c.method == "dense"].assign(method=m) for m in ("anneal", "magnitude")])
            sub = pd.concat([start, c[c.method != "dense"]], ignore_index=True)
            sub = sub.assign(delta_loss=sub.loss - dense.loss, delta_acc=100 * (sub.acc - dense.acc),
                             pct=100 * sub.sparsity)
            for i, (col, label) in enumerate((("delta_loss", r"$\Delta$ dev loss (nats)"),
                                              ("delta_acc", r"$\Delta$ dev accuracy (pp)"))):
                ax = axes[i, j]
                sns.lineplot(sub, x="pct", y=col, hue="method", palette=palette, marker="o", markersize=3,
                             ax=ax, legend=False)
                if col == "delta_loss":
                    tol = float(c.tolerance.iloc[0])
                    for sign in (1, -1):
                        ax.axhline(sign * tol, color="0.5", ls="--", lw=0.8)
                    ax.set_yscale("symlog", linthresh=max(tol, 1e-3))
                    ax.set_title(model)
                ax.axhline(0, color="0.3", lw=0.5)
                ax.set(xlabel="entries removed (%)", ylabel=label if j == 0 else "")
        _method_legend(fig, palette)
        save_pdf(fig, path)


def _method_legend(fig: Figure, palette: dict) -> None:
    handles = [Line2D([], [], color=palette[m], marker="o", markersize=3) for m in palette]
    fig.legend(handles, ["structural annealing", "magnitude pruning"], loc="outside upper center", ncols=2)


def _figure_components(components: pd.DataFrame, models: list[str], path: Path) -> None:
    curve = components[components.row_type == "curve"]
    palette = colors(["anneal", "magnitude"])
    with paper_style():
        fig = new_figure(TEXT_WIDTH, 3.6)
        axes = fig.subplots(2, len(models), sharex=True, squeeze=False)
        for j, model in enumerate(models):
            sub = curve[curve.model == model]
            sub = sub.assign(pct=100 * sub.sparsity, largest_pct=100 * sub.largest_frac)
            for i, (col, label) in enumerate((("largest_pct", "largest comp. (% nodes)"),
                                              ("isolated_units", "isolated units"))):
                ax = axes[i, j]
                sns.lineplot(sub, x="pct", y=col, hue="method", palette=palette, marker="o", markersize=3,
                             ax=ax, legend=False)
                ax.set(xlabel="entries removed (%)", ylabel=label if j == 0 else "")
                if i == 0:
                    ax.set_title(model)
                else:
                    ax.set_yscale("symlog", linthresh=1)
                    ax.set_ylim(bottom=0)
        _method_legend(fig, palette)
        save_pdf(fig, path)


def _figure_weibull(weibull: pd.DataFrame, order: list[str], path: Path) -> None:
    classes = [c for c in (*MATRIX_TYPES, "embed", "unembed") if c in set(weibull.matrix_class)]
    with paper_style():
        fig = new_figure(TEXT_WIDTH, 2.4)
        ax = fig.subplots()
        sns.stripplot(weibull, x="matrix_class", y="k", hue="label", order=classes, hue_order=order,
                      palette=colors(order), dodge=True, size=3, jitter=0.15, ax=ax)
        for k, ls, text in ((GAUSSIAN_K, "--", "Gaussian init"), (TORCH_LINEAR_K, ":", "uniform init")):
            ax.axhline(k, color="0.4", ls=ls, lw=0.8)
            ax.annotate(text, (1.0, k), xycoords=("axes fraction", "data"), ha="right", va="bottom",
                        fontsize="x-small", color="0.4")
        ax.set_xticks(range(len(classes)), [TYPE_LABELS[c] for c in classes])
        ax.set(xlabel="", ylabel="Weibull shape $k$")
        ax.legend(fontsize="small", ncols=2)
        save_pdf(fig, path)


def _ci_cell(x: float, low: float, high: float, digits: int, scale: float = 1.0) -> str:
    return f"{tex.num(x * scale, digits)} [{tex.num(low * scale, digits)}, {tex.num(high * scale, digits)}]"


def _setting(cfg: DictConfig, name: str, values: pd.Series) -> float:
    """The FDR level or tolerance to report: the one in the results, or `+name=value` where there are several."""
    present = sorted(set(values.astype(float)))
    if cfg.get(name) is not None:
        wanted = float(cfg.get(name))
        if wanted not in present:
            raise StudyError(f"no structure results for {name}={wanted:g}; "
                             f"valid: {', '.join(f'{v:g}' for v in present)}")
        return wanted
    if len(present) != 1:
        raise StudyError(f"structure results hold several {name} values ({', '.join(f'{v:g}' for v in present)}); "
                         f"choose one with +{name}=<value>")
    return present[0]


def report(cfg: DictConfig, results: Path, out: Path) -> dict:
    """Tables, macros, figures and metrics of the structure stage's results."""
    df = load_results("structure", results, with_examples=True, schema=row_schemas.STRUCTURE)
    split, r = cfg.report.split, cfg.report
    by_kind = {k: g.reset_index(drop=True) for k, g in df.groupby("kind")}
    missing = {"tests", "anneal", "components", "weibull"} - set(by_kind)
    if missing:
        raise StudyError(f"structure results lack {', '.join(sorted(missing))} cells; rerun the structure stage")
    fdr = _setting(cfg, "fdr", by_kind["tests"].fdr)
    tests = by_kind["tests"][by_kind["tests"].fdr == fdr]
    runs = pd.concat([by_kind["anneal"], by_kind["components"]])
    tolerance = _setting(cfg, "tolerance", runs[runs.fdr == fdr].tolerance)
    anneal, components = ((g[(g.fdr == fdr) & (g.tolerance == tolerance)]).reset_index(drop=True)
                          for g in (by_kind["anneal"], by_kind["components"]))
    weibull = by_kind["weibull"]
    models = preferred_then_seen(tests.model, list(cfg.get("models", [])))
    paired = paired_states(anneal, split, int(r.n_resamples), float(r.level), int(cfg.seed))
    summary = annealing_summary(anneal)
    macros: dict[str, str] = {_m("Split"): tex.escape(split), _m("SelectSplit"): tex.escape(r.select_split)}
    metrics: dict[str, float | int | str | None] = {}

    # --- indistinguishable fractions
    matrices = tests[tests.row_type == "matrix"]
    edges = tests[tests.row_type == "edges"]
    rows_indist = []
    for model in models:
        m = matrices[matrices.model == model]
        null, reference = str(m.null_model.iloc[0]), str(m.drift_reference.iloc[0])
        macros[_m(model, "Null")] = tex.escape(null)
        macros[_m(model, "DriftReference")] = tex.escape(reference)
        # how far the trained entries moved, in units of the noise twin's walk (median over matrices)
        ratio = float(np.median(m.drift_rms / m.drift_ref_scale)) if reference != "none" else math.nan
        macros[_m(model, "DriftRatio")] = tex.num(ratio, 2)
        metrics[f"{model}/drift_rms_over_twin"] = ratio
        overall = {c: float(np.average(m[c], weights=m.n))
                   for c in ("frac_indist", "frac_indist_value", "frac_indist_drift")}
        macros[_m(model, "Indist")] = tex.pct(overall["frac_indist"])
        macros[_m(model, "IndistValue")] = tex.pct(overall["frac_indist_value"])
        macros[_m(model, "IndistDrift")] = tex.pct(overall["frac_indist_drift"])
        metrics[f"{model}/indist"] = overall["frac_indist"]
        metrics[f"{model}/indist_value"] = overall["frac_indist_value"]
        metrics[f"{model}/indist_drift"] = overall["frac_indist_drift"]
        cells = [tex.escape(model), tex.escape(null), tex.escape(reference)]
        for t in MATRIX_TYPES:
            sub = m[m.matrix_type == t]
            frac = float(np.average(sub.frac_indist, weights=sub.n)) if len(sub) else float("nan")
            lo, hi = (float(sub.frac_indist.min()), float(sub.frac_indist.max())) if len(sub) else (math.nan, math.nan)
            macros[_m(model, "Indist", t)] = tex.pct(frac)
            macros[_m(model, "Indist", t, "Min")] = tex.pct(lo)
            macros[_m(model, "Indist", t, "Max")] = tex.pct(hi)
            cells.append(tex.pct(frac))
        cells += [tex.pct(overall["frac_indist"]), tex.pct(overall["frac_indist_value"]),
                  tex.pct(overall["frac_indist_drift"])]
        e = edges[edges.model == model]
        for kind in ("heads", "neurons"):
            sub = e[e.unit_kind == kind]
            for test in ("", "_value", "_drift"):
                frac = float(np.average(sub[f"frac_indist{test}"], weights=sub.n_edges)) if len(sub) else math.nan
                macros[_m(model, "IndistEdges", test, kind)] = tex.pct(frac)
                if not test:
                    cells.append(tex.pct(frac))
        rows_indist.append(cells)
    ranking = tests[tests.row_type == "ranking"].set_index("model").spearman_magnitude
    for model in models:
        macros[_m(model, "RankRho")] = tex.num(ranking.get(model, math.nan), 3)
        metrics[f"{model}/spearman_evidence_magnitude"] = float(ranking.get(model, math.nan))
    overlaps = anneal[(anneal.row_type == "state") & anneal.method.isin(["anneal", "indist"])]
    for (model, method), g in overlaps.groupby(["model", "method"]):
        macros[_m(model, method, "Overlap")] = tex.pct(g.overlap_with_twin.iloc[0])
    first = matrices[matrices.model == models[0]]
    macros[_m("Fdr")] = tex.num(fdr, 2)
    macros[_m("ParamsPerHeadEdge")] = (tex.integer(edges[edges.unit_kind == "heads"].params_per_edge.iloc[0])
                                       if (edges.unit_kind == "heads").any() else tex.DASH)
    macros[_m("NMatrices")] = tex.integer(len(first))
    # the value test's null per matrix: normal where the step-0 entries fit one (the smallest p is then
    # the normal tail's), empirical otherwise (floored at 1/(n0 + 1))
    macros[_m("ValueNullNormal")] = tex.integer(int((matrices.value_null == "normal").sum()))
    macros[_m("ValueNullTotal")] = tex.integer(len(matrices))
    empirical = matrices[matrices.value_null == "empirical"]
    macros[_m("ValueEmpiricalFloor")] = (tex.pval(float(empirical.value_smallest_p.max())) if len(empirical)
                                         else tex.DASH)
    metrics["value_null_normal_fraction"] = float((matrices.value_null == "normal").mean())
    # the drift test's null per matrix, where a noise twin exists: normal or empirical, as for the value test
    twinned = matrices[matrices.drift_null != "none"]
    macros[_m("DriftNullNormal")] = tex.integer(int((twinned.drift_null == "normal").sum()))
    macros[_m("DriftNullTotal")] = tex.integer(len(twinned))
    empirical = twinned[twinned.drift_null == "empirical"]
    macros[_m("DriftEmpiricalFloor")] = (tex.pval(float(empirical.drift_smallest_p.max())) if len(empirical)
                                         else tex.DASH)
    write_text(out / "tables" / "indistinguishable.tex", tex.booktabs(
        ["model", "step 0", "noise twin", *[TYPE_LABELS[t] for t in MATRIX_TYPES], "all", "value", "drift",
         "head edges", "neuron edges"],
        rows_indist, "lll" + "r" * 9,
        header_rows=[["", r"\multicolumn{2}{c}{nulls}", r"\multicolumn{4}{c}{entries, both tests}",
                      r"\multicolumn{3}{c}{all entries}", r"\multicolumn{2}{c}{edges, both tests}"]]))

    # --- annealing
    rows_anneal = []
    for row in summary.itertuples():
        model = row.model
        macros[_m("Tolerance")] = tex.num(row.tolerance, 2)
        macros[_m(model, "DenseDevLoss")] = tex.num(row.dense_loss, 3)
        for method in ("anneal", "magnitude"):
            macros[_m(model, method, "Sparsity")] = tex.pct(getattr(row, f"{method}_sparsity"))
            macros[_m(model, method, "Crossing")] = tex.pct(getattr(row, f"{method}_crossing"))
            metrics[f"{model}/{method}_sparsity_dev"] = getattr(row, f"{method}_sparsity")
            metrics[f"{model}/{method}_crossing_dev"] = getattr(row, f"{method}_crossing")
        cells = [tex.escape(model), tex.pct(row.anneal_sparsity), tex.pct(row.magnitude_sparsity),
                 tex.pct(row.anneal_crossing), tex.pct(row.magnitude_crossing)]
        p = paired[paired.model == model].set_index("method")
        for method in ("anneal", "magnitude", "indist", "indist-magnitude"):
            if method not in p.index:
                continue
            x = p.loc[method]
            key = method.replace("-", " ")
            macros[_m(model, key, "TestDeltaAcc")] = tex.pct(x.delta_acc)
            macros[_m(model, key, "TestDeltaAcc", "Low")] = tex.pct(x.delta_acc_low)
            macros[_m(model, key, "TestDeltaAcc", "High")] = tex.pct(x.delta_acc_high)
            macros[_m(model, key, "TestDeltaLoss")] = tex.num(x.delta_loss, 3)
            macros[_m(model, key, "TestDeltaLoss", "Low")] = tex.num(x.delta_loss_low, 3)
            macros[_m(model, key, "TestDeltaLoss", "High")] = tex.num(x.delta_loss_high, 3)
            macros[_m(model, key, "TestP")] = tex.pval(x.p_mcnemar)
            macros[_m(model, key, "TestSparsity")] = tex.pct(x.sparsity)
            metrics[f"{model}/{method}_test_delta_acc"] = float(x.delta_acc)
            metrics[f"{model}/{method}_test_delta_loss"] = float(x.delta_loss)
        for method in ("anneal", "magnitude", "indist"):
            if method in p.index:
                x = p.loc[method]
                cells.append(_ci_cell(x.delta_acc, x.delta_acc_low, x.delta_acc_high, 1, 100.0))
            else:
                cells.append(tex.DASH)
        cells.append(tex.pct(p.loc["indist"].sparsity) if "indist" in p.index else tex.DASH)
        rows_anneal.append(cells)
    write_text(out / "tables" / "annealing.tex", tex.booktabs(
        ["model", "anneal", "magnitude", "anneal", "magnitude", "anneal", "magnitude", "indist. set",
         "indist. sparsity"],
        rows_anneal, "l" + "r" * 8,
        header_rows=[["", r"\multicolumn{2}{c}{sparsity at step (\%)}", r"\multicolumn{2}{c}{interpolated (\%)}",
                      r"\multicolumn{3}{c}{$\Delta$ " + tex.escape(split) + r" accuracy (pp)}", ""]]))

    # --- components
    graph = components[components.row_type == "graph"]
    curve = components[components.row_type == "curve"]
    rows_comp = []
    for model in models:
        for method in ("anneal", "indist"):
            net = graph[(graph.model == model) & (graph.method == method) & (graph.scope == "network")]
            blocks = graph[(graph.model == model) & (graph.method == method) & (graph.scope == "block")]
            if net.empty:
                continue
            n = net.iloc[0]
            key = (model, method)
            macros[_m(*key, "Components")] = tex.integer(n.n_components)
            macros[_m(*key, "LargestFrac")] = tex.pct(n.largest_frac)
            macros[_m(*key, "IsolatedUnits")] = tex.integer(n.isolated_units)
            macros[_m(*key, "EdgeDensity")] = tex.pct(n.edge_density)
            rows_comp.append([tex.escape(model), tex.escape(STATE_LABELS[method]), tex.pct(n.edge_density),
                              tex.integer(n.n_components), tex.pct(n.largest_frac), tex.integer(n.isolated_units),
                              tex.integer(blocks.n_components.max()),
                              tex.pval(float(n.logits_max_abs_diff)) if n.logits_max_abs_diff > 0 else "0"])
        c = curve[(curve.model == model) & (curve.method == "anneal")].sort_values("sparsity")
        split_at = c[(c.n_components > 1) | (c.isolated_units > 0)]
        macros[_m(model, "FirstSplitSparsity")] = tex.pct(split_at.sparsity.iloc[0]) if len(split_at) else tex.DASH
        metrics[f"{model}/first_split_sparsity"] = float(split_at.sparsity.iloc[0]) if len(split_at) else None
    write_text(out / "tables" / "components.tex", tex.booktabs(
        ["model", "mask", r"edge density (\%)", "components", r"largest (\%)", "isolated units", "per block (max)",
         r"apart: max $|\Delta$ logit$|$"], rows_comp, "llrrrrrr"))
    # the network's components run apart and recombined, against the masked model (worst over masks)
    gap = float(graph.logits_max_abs_diff.max())
    scale = float(graph.logits_max_abs.max())
    macros[_m("ApartMaxDiff")] = tex.pval(gap) if gap > 0 else "0"
    macros[_m("ApartMaxLogit")] = tex.num(scale, 1)
    macros[_m("ApartRelDiff")] = tex.pval(gap / scale) if gap > 0 else "0"
    macros[_m("ApartMinAgreement")] = tex.pct(float(graph.argmax_agreement.min()))
    macros[_m("ApartMaxParts")] = tex.integer(int(graph.n_substructures.max()))
    metrics["substructures_max_abs_logit_diff"] = gap
    metrics["substructures_min_argmax_agreement"] = float(graph.argmax_agreement.min())

    # --- Weibull
    null_names = sorted(set(weibull.loc[weibull.step == "step0", "model"]))
    weibull = weibull.assign(label=lambda d: np.where(d.step == "step0", d.model + " (step 0)", d.model))
    order = [f"{n} (step 0)" for n in null_names] + [m for m in models if m in set(weibull.model)]
    rows_w = []
    classes = [c for c in (*MATRIX_TYPES, "embed", "unembed") if c in set(weibull.matrix_class)]
    for label in order:
        w = weibull[weibull.label == label]
        cells = [tex.escape(label)]
        for c in classes:
            k = w[w.matrix_class == c].k
            cells.append(f"{tex.num(k.mean(), 3)}" if len(k) else tex.DASH)
        cells += [tex.num(w.r2.min(), 3), tex.integer((w.method == "quantile").sum())]
        rows_w.append(cells)
        proj = w[w.matrix_class.isin(MATRIX_TYPES)]
        key = str(w.model.iloc[0])  # a null model is only ever reported as step 0
        macros[_m("Weibull", key, "K")] = tex.num(proj.k.mean(), 3)
        macros[_m("Weibull", key, "KMin")] = tex.num(proj.k.min(), 3)
        macros[_m("Weibull", key, "KMax")] = tex.num(proj.k.max(), 3)
        macros[_m("Weibull", key, "MinRTwo")] = tex.num(w.r2.min(), 3)
        macros[_m("Weibull", key, "Fallbacks")] = tex.integer((w.method == "quantile").sum())
        metrics[f"weibull/{key}/k_mean"] = float(proj.k.mean())
    for null in null_names:
        w = weibull[(weibull.model == null) & weibull.matrix_class.isin(MATRIX_TYPES)]
        rms = matrices[matrices.null_model == null].drop_duplicates("matrix").set_index("matrix").init_rms
        rms.index = rms.index + ".weight"  # module names -> parameter names
        ratio = (w.set_index("matrix").lam / rms).dropna()  # lambda in units of the step-0 RMS (sigma)
        macros[_m("Weibull", null, "LamPerSigma")] = tex.num(ratio.mean(), 3) if len(ratio) else tex.DASH
        metrics[f"weibull/{null}/lambda_per_sigma"] = float(ratio.mean()) if len(ratio) else None
    macros[_m("WeibullBins")] = tex.integer(weibull_spec.N_BINS)
    macros[_m("WeibullLogLow")] = tex.integer(weibull_spec.LOG10_RANGE[0])
    macros[_m("WeibullLogHigh")] = tex.integer(weibull_spec.LOG10_RANGE[1])
    macros[_m("WeibullClipExp")] = tex.integer(round(math.log10(weibull_spec.CLIP)))
    macros[_m("WeibullFLow")] = tex.num(weibull_spec.F_RANGE[0], 1)
    macros[_m("WeibullFHigh")] = tex.num(weibull_spec.F_RANGE[1], 1)
    macros[_m("WeibullMinCounts")] = tex.integer(weibull_spec.MIN_COUNTS)
    macros[_m("WeibullMinBins")] = tex.integer(weibull_spec.MIN_BINS)
    macros[_m("WeibullFitMinRTwo")] = tex.num(weibull_spec.MIN_R2, 2)
    macros[_m("WeibullGaussianK")] = tex.num(GAUSSIAN_K, 3)
    macros[_m("WeibullGaussianLam")] = tex.num(GAUSSIAN_LAMBDA_PER_SIGMA, 4)
    macros[_m("WeibullTorchK")] = tex.num(TORCH_LINEAR_K, 2)
    write_text(out / "tables" / "weibull.tex", tex.booktabs(
        ["weights", *[TYPE_LABELS[c] for c in classes], r"min $R^2$", "fallbacks"], rows_w,
        "l" + "r" * (len(classes) + 2)))

    figures = out / "figures"
    _figure_indistinguishable(tests, models, figures / "indistinguishable.pdf")
    _figure_annealing(anneal, models, figures / "annealing.pdf")
    _figure_components(components, models, figures / "components.pdf")
    _figure_weibull(weibull, order, figures / "weibull.pdf")
    write_text(out / "macros.tex", tex.macros_tex(macros))
    write_json(metrics, out / "metrics.json")
    return metrics
