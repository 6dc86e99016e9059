"""Task choice: the candidate tasks on which the model is above chance on `dev`, and the evidence.

Each candidate's dev accuracy (of a multiple-choice task; one with a single continuation per document has
no chance level and is not tested) is tested against uniform guessing by an exact one-sided test (the number of
documents right is Poisson-binomial under guessing, each document's chance being 1 / its number of choices);
the p-values are corrected across candidates by Benjamini-Hochberg, and a task is kept when its q-value is
at most `choice.fdr`. Only dev decides; test accuracy is shown beside it and is never used. Stages that
study "the chosen tasks" (`ablate.tasks: chosen`) read `kept.json` from here.

    python stages/report.py profile=real topic=tasks
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from paramscope import row_schemas
from paramscope.errors import StudyError
from paramscope.evaluation.chosen import KEPT
from paramscope.evaluation.tasks import task_docs
from paramscope.models import zoo
from paramscope.report import latex
from paramscope.report.output import write_csv, write_json, write_text
from paramscope.stats.chance import above_chance_pvalue
from paramscope.stats.paired import benjamini_hochberg
from paramscope.store import load_results

TOPIC = "Tasks"


def choice_model(cfg: DictConfig) -> str:
    """The model whose dev accuracy decides (`choice.model`, else the first model the atlas maps)."""
    return (cfg.get("choice") or {}).get("model") or list(cfg.ablate.models)[0]


def evidence(cfg: DictConfig, ev: pd.DataFrame, tokenizer) -> pd.DataFrame:
    """One row per candidate task: dev and test accuracy, chance, exact p-value, BH q-value, kept."""
    model, fdr = choice_model(cfg), float((cfg.get("choice") or {}).get("fdr", 0.05))
    rows = []
    for task in cfg.tasks:
        cells = {r.split: r for r in ev[(ev.model == model) & (ev.task == task)].itertuples()}
        if "dev" not in cells:
            raise StudyError(f"no dev evaluation of {model} on {task}; run the evaluate stage first")
        docs = task_docs(cfg, task, "dev", tokenizer)
        dev = cells["dev"]
        if list(dev.ex_doc_ids) != docs.doc_ids:
            raise StudyError(f"results/eval for {model}/{task} were made on other dev documents; rerun evaluate")
        n_choices = np.array([len(d.choices) for d in docs.docs])
        correct = np.asarray(dev.ex_correct, dtype=int)
        choosing = bool(np.all(n_choices >= 2))  # one continuation (lambada_openai) has no chance level
        rows.append({"task": task, "n_dev": len(correct), "mean_choices": float(n_choices.mean()),
                     "chance": float(np.mean(1.0 / n_choices)) if choosing else np.nan,
                     "dev_acc": float(correct.mean()),
                     "test_acc": float(np.mean(cells["test"].ex_correct)) if "test" in cells else np.nan,
                     "p": above_chance_pvalue(correct, n_choices) if choosing else np.nan})
    df = pd.DataFrame(rows)
    df["q"] = benjamini_hochberg(df.p.to_numpy())
    df["kept"] = df.q <= fdr  # an untested task (q NaN) is never kept
    return df


def table(df: pd.DataFrame) -> str:
    rows = [[latex.escape(r.task), latex.integer(r.n_dev), latex.num(r.mean_choices), latex.pct(r.chance),
             latex.pct(r.dev_acc), latex.pval(r.p), latex.pval(r.q), "yes" if r.kept else "no", latex.pct(r.test_acc)]
            for r in df.itertuples()]
    return latex.booktabs(["task", "dev docs", "choices", "chance", "dev acc.", "$p$", "$q$ (BH)", "kept",
                           "test acc."], rows, "lrrrrrrlr")


def report(cfg: DictConfig, results: Path, out: Path) -> dict:
    model = choice_model(cfg)
    ev = load_results("eval", results, with_examples=True, schema=row_schemas.EVAL)
    tokenizer = zoo.load_tokenizer(model, Path(cfg.paths.models))
    df = evidence(cfg, ev, tokenizer)
    kept = df[df.kept].task.tolist()  # may be empty (random stand-ins); only a stage that needs it refuses
    write_csv(df, out / "task_choice.csv")
    write_text(out / "tables" / "task_choice.tex", table(df))
    write_json({"model": model, "fdr": float((cfg.get("choice") or {}).get("fdr", 0.05)), "kept": kept},
               out / KEPT)
    macros = {latex.macro_name(TOPIC, "N", "Candidates"): latex.integer(len(df)),
              latex.macro_name(TOPIC, "N", "Kept"): latex.integer(len(kept))}
    write_text(out / "macros.tex", latex.macros_tex(macros))
    return {"n_candidates": len(df), "n_kept": len(kept)}
