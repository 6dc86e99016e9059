"""Clean accuracy of every model and paired differences between models, from the ``eval`` rows."""

from __future__ import annotations

import numpy as np
import pandas as pd

from paramscope.errors import StudyError
from paramscope.report.atlas.keys import in_report_order
from paramscope.report.order import preferred_order
from paramscope.report.settings import Settings
from paramscope.stats import benjamini_hochberg, mcnemar_exact, paired_bootstrap_ci


def mean_ci(x: np.ndarray, s: Settings) -> tuple[float, float, float]:
    """Mean of 0/1 correctness with a percentile bootstrap CI over documents (a delta against 0)."""
    x = np.asarray(x, dtype=float)
    return paired_bootstrap_ci(np.zeros_like(x), x, n_resamples=s.n_resamples, level=s.level, seed=s.seed)


def clean_accuracy(ev: pd.DataFrame, s: Settings) -> pd.DataFrame:
    """Accuracy of every model on every task and split, with its bootstrap CI."""
    rows = []
    for r in in_report_order(ev, s).itertuples():
        correct = np.asarray(r.ex_correct, dtype=float)
        acc, low, high = mean_ci(correct, s)
        rows.append({"model": r.model, "task": r.task, "split": r.split, "n": len(correct),
                     "acc": acc, "ci_low": low, "ci_high": high})
    out = pd.DataFrame(rows)
    out["chance"] = 1.0 / s.n_choices if s.n_choices else np.nan
    return out


def _aligned(a: pd.Series, b: pd.Series, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Correctness of two rows on the same documents, in the same order (paired by doc id)."""
    ids_a, ids_b = list(a["ex_doc_ids"]), list(b["ex_doc_ids"])
    if len(set(ids_a)) != len(ids_a) or len(set(ids_b)) != len(ids_b):
        raise StudyError(f"{what}: repeated document ids in eval results; rerun 'evaluate'")
    if set(ids_a) != set(ids_b):
        raise StudyError(f"{what}: the two models were scored on different documents; rerun 'evaluate'")
    pos = pd.Index(ids_b).get_indexer(ids_a)
    return np.asarray(a["ex_correct"], dtype=float), np.asarray(b["ex_correct"], dtype=float)[pos]


def model_pairs(ev: pd.DataFrame, s: Settings) -> pd.DataFrame:
    """Paired accuracy difference (model - reference) per task on ``s.split``, with CI, McNemar p and q.

    q is BH across the tasks of one pair: each pair asks its own question ("where does gen2 differ?").
    """
    present = preferred_order(ev["model"], s.models)
    cols = ["model", "reference", "task", "split", "n", "acc_model", "acc_reference", "delta_acc",
            "ci_low", "ci_high", "p_mcnemar", "q", "significant"]
    rows = []
    test = ev[ev["split"] == s.split].set_index(["model", "task"])
    for model, ref in s.pairs:
        for m in (model, ref):
            if m not in present:
                raise StudyError(f"model pair {model}/{ref}: no eval results for '{m}'; models with results: "
                                 f"{', '.join(present)}")
        for task in preferred_order(ev["task"], s.tasks):
            if (model, task) not in test.index or (ref, task) not in test.index:
                raise StudyError(f"model pair {model}/{ref}: no {s.split} results on task '{task}' for both models")
            a, b = _aligned(test.loc[(model, task)], test.loc[(ref, task)], f"pair {model}/{ref} on {task}")
            delta, low, high = paired_bootstrap_ci(b, a, n_resamples=s.n_resamples, level=s.level, seed=s.seed)
            rows.append({"model": model, "reference": ref, "task": task, "split": s.split, "n": len(a),
                         "acc_model": a.mean(), "acc_reference": b.mean(), "delta_acc": delta,
                         "ci_low": low, "ci_high": high, "p_mcnemar": mcnemar_exact(b, a)})
    out = pd.DataFrame(rows, columns=cols)
    for idx in out.groupby(["model", "reference"], sort=False).indices.values():
        out.loc[idx, "q"] = benjamini_hochberg(out.loc[idx, "p_mcnemar"].to_numpy(dtype=float))
    out["significant"] = out["q"] < s.fdr
    return out
