"""Validation table: our clean scores on each benchmark's full evaluation set against the published numbers.

The published zero-shot lm-eval numbers (STUDY.md section 2) are on each task's whole evaluation set,
so here dev and test documents are pooled again (they partition it; no selection is involved). Accuracy
carries lm-eval's standard error, the sample std / sqrt(n); lambada's perplexity, exp(-mean ll), carries
the delta-method error ppl x std(ll) / sqrt(n). A row "agrees" when |ours - published| is within two
standard errors plus the published number's rounding (0.05 points).

    python stages/report.py profile=paper topic=validation
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from paramscope import row_schemas
from paramscope.evaluation.tasks import task_metric
from paramscope.report import latex
from paramscope.report.output import write_json, write_text
from paramscope.store import load_results

TOPIC = "Validation"
ROUNDING = 0.05  # published numbers are given to one decimal
PPL = "ppl"
COLUMNS = {"acc": "ex_correct_plain", "acc_norm": "ex_correct_norm"}


def full_task(ev: pd.DataFrame, model: str, task: str) -> dict[str, np.ndarray] | None:
    """Per-document outcomes of one model on one task, every split pooled (each document once)."""
    rows = ev[(ev.model == model) & (ev.task == task)]
    if rows.empty:
        return None
    doc_ids = np.concatenate([np.asarray(r) for r in rows.ex_doc_ids])
    if len(np.unique(doc_ids)) != len(doc_ids):
        raise ValueError(f"{model}/{task}: splits overlap in documents; results/eval is inconsistent")
    return {col: np.concatenate([np.asarray(r, dtype=np.float64) for r in rows[col]])
            for col in (*COLUMNS.values(), "ex_gold_ll")}


def accuracy(outcomes: np.ndarray) -> tuple[float, float]:
    """Percent and its standard error as lm-eval computes it (sample std / sqrt(n))."""
    n = len(outcomes)
    return 100 * float(outcomes.mean()), 100 * float(outcomes.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan


def perplexity(gold_ll: np.ndarray) -> tuple[float, float]:
    """exp(-mean ll) and its delta-method standard error."""
    ppl = float(np.exp(-gold_ll.mean()))
    n = len(gold_ll)
    return ppl, ppl * float(gold_ll.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan


def comparison(cfg: DictConfig, ev: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, task, metric) with a published number: ours, stderr, published, difference."""
    val = cfg.get("validation")
    if val is None:
        return pd.DataFrame(columns=["model", "task", "metric", "n", "ours", "stderr", "published", "diff", "agrees"])
    overrides = OmegaConf.to_container(val.get("metric_overrides") or {}, resolve=True)
    rows = []
    for model in val.models:
        published = val.published.get(model) or {}
        for task in cfg.tasks:
            outcomes = full_task(ev, model, task)
            wanted = [(overrides.get(model, {}).get(task, task_metric(cfg, task)), task)]
            if f"{task}_{PPL}" in published:
                wanted.append((PPL, f"{task}_{PPL}"))
            for metric, key in wanted:
                if key not in published:
                    continue
                if outcomes is None:
                    ours = stderr = math.nan
                    n = 0
                elif metric == PPL:
                    ours, stderr = perplexity(outcomes["ex_gold_ll"])
                    n = len(outcomes["ex_gold_ll"])
                else:
                    ours, stderr = accuracy(outcomes[COLUMNS[metric]])
                    n = len(outcomes[COLUMNS[metric]])
                diff = ours - float(published[key])
                rows.append({"model": model, "task": task, "metric": metric, "n": n, "ours": ours, "stderr": stderr,
                             "published": float(published[key]), "diff": diff,
                             "agrees": bool(abs(diff) <= 2 * stderr + ROUNDING) if n else None})
    return pd.DataFrame(rows)


def table(df: pd.DataFrame) -> str:
    rows = []
    for model, block in df.groupby("model", sort=False):
        rows.append(None)
        for r in block.itertuples():
            metric = "perplexity" if r.metric == PPL else r.metric.replace("_", r"\_")
            rows.append([latex.escape(model), latex.escape(r.task), metric, latex.integer(r.n),
                         f"{latex.num(r.ours)} $\\pm$ {latex.num(r.stderr)}", latex.num(r.published),
                         latex.num(r.diff), "yes" if r.agrees else ("--" if r.agrees is None else "no")])
    if not rows:
        rows = [["--"] * 8]
    return latex.booktabs(["model", "task", "metric", "n", "ours $\\pm$ s.e.", "published", "difference", "agrees"],
                          rows, "lllrrrrl")


def report(cfg: DictConfig, results: Path, out: Path) -> dict:
    try:
        ev = load_results("eval", results, with_examples=True, schema=row_schemas.EVAL)
    except FileNotFoundError:
        ev = pd.DataFrame(columns=["model", "task"])
    df = comparison(cfg, ev)
    measured = df[df.n > 0] if len(df) else df
    macros: dict[str, str] = {
        latex.macro_name(TOPIC, "N", "Compared"): latex.integer(len(measured)),
        latex.macro_name(TOPIC, "N", "Agree"): latex.integer(int(measured.agrees.sum()) if len(measured) else 0),
    }
    metrics: dict[str, float | int | None] = {"n_compared": len(measured),
                                               "n_agree": int(measured.agrees.sum()) if len(measured) else 0}
    for r in df.itertuples():
        parts = (TOPIC, r.model, r.task, r.metric)
        macros[latex.macro_name(*parts, "Ours")] = latex.num(r.ours)
        macros[latex.macro_name(*parts, "Stderr")] = latex.num(r.stderr)
        macros[latex.macro_name(*parts, "Published")] = latex.num(r.published)
        macros[latex.macro_name(*parts, "Diff")] = latex.num(r.diff)
        key = f"{r.model}/{r.task}/{r.metric}"
        metrics.update({f"{key}/ours": r.ours, f"{key}/stderr": r.stderr, f"{key}/diff": r.diff})
    write_text(out / "macros.tex", latex.macros_tex(macros))
    write_text(out / "tables" / "validation.tex", table(df))
    write_json(metrics, out / "metrics.json")
    return metrics
