"""The reference: lm-eval's own HFLM + simple_evaluate on exactly the documents our scorer scores."""

from __future__ import annotations

import logging
from pathlib import Path

from paramscope.evaluation.local_data import task_source
from paramscope.evaluation.requests import task_manager


def lm_eval_per_doc(
    model, tokenizer, task_name: str, indices: list[int], include_path: str | Path | None = None, batch_size: int = 64,
    data: str | None = None,
) -> dict[int, dict[str, float]]:
    """Per-document metrics (``acc``, and ``acc_norm`` or ``perplexity`` where the task has them) from
    lm-eval, keyed by the task's original doc index; a loglikelihood task's ``perplexity`` is the document's
    log-likelihood, which lm-eval aggregates into a perplexity."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
    manager = task_manager(include_path)
    with task_source(manager, task_name, data) as spec:
        out = simple_evaluate(
            model=lm,
            tasks=[spec],
            task_manager=manager,
            samples={task_name: list(indices)},
            num_fewshot=0,
            log_samples=True,
            bootstrap_iters=0,
            verbosity="ERROR",
        )
    rows = out["samples"][task_name]  # doc_id here is already the original index
    return {r["doc_id"]: {k: r[k] for k in ("acc", "acc_norm", "perplexity") if k in r} for r in rows}
