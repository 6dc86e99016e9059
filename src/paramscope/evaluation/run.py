"""Clean evaluation of every model on every task and split, one result cell per combination."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig
from tqdm import tqdm

from paramscope.evaluation.documents import Scores
from paramscope.evaluation.scorer import score
from paramscope.evaluation.tasks import split_definition, task_docs
from paramscope.models import zoo
from paramscope.row_schemas import EVAL as ROWS
from paramscope.store import CellGrid

log = logging.getLogger(__name__)



def example_columns(scores: Scores) -> dict[str, list]:
    """Per-document outcomes kept with each row, so later statistics can pair conditions."""
    return {
        "ex_doc_ids": [scores.doc_ids.tolist()],
        "ex_correct": [scores.correct.tolist()],  # under the task's metric
        "ex_correct_plain": [scores.correct_acc.tolist()],
        "ex_correct_norm": [scores.correct_norm.tolist()],
        "ex_gold_ll": [scores.gold_ll.tolist()],
    }


def evaluate_model(cfg: DictConfig, name: str, results: Path) -> int:
    """Score one model on every task and split; finished cells are skipped. Returns cells written."""
    model, tokenizer = zoo.load(name, Path(cfg.paths.models), device=cfg.device)
    digest = zoo.digest(model)
    cells = CellGrid("eval", ROWS, results)
    for task in cfg.tasks:
        for split in cfg.splits:
            cell = cells.plan(digest=digest, task=task, split=split, **split_definition(cfg))
            if cells.done(cell):
                continue
            docs = task_docs(cfg, task, split, tokenizer)
            scores = score(model, docs.docs, cfg.eval.batch_size)
            row = {"model": name, "digest": digest, "task": task, "split": split, "metric": scores.metric,
                   **scores.summary()}
            cells.write(cell, pd.DataFrame({**{k: [v] for k, v in row.items()}, **example_columns(scores)}))
            log.info("%s %s/%s %s=%.3f", name, task, split, scores.metric, row["acc"])
    return cells.counts["computed"]


def evaluate_all(cfg: DictConfig, results: Path) -> int:
    for name in cfg.models:  # every model must exist before any work starts
        zoo.resolve(name, Path(cfg.paths.models))
    return sum(evaluate_model(cfg, name, results) for name in tqdm(cfg.models, desc="evaluate"))
