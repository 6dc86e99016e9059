"""Check the study's clean scores against lm-eval itself on a profile's real model and tasks.

For each task, the evaluate stage's per-document correctness (results/eval) is compared, document by
document, with `lm_eval.simple_evaluate` (HFLM on the same model folder, the same local task files, lm-eval's
own YAML). Prints one line per (task, split) and exits non-zero on any disagreement.

    python scripts/lm_eval_check.py profile=real tasks=[general_knowledge,strategyqa] splits=[test]
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from paramscope.evaluation.harness import lm_eval_per_doc
from paramscope.evaluation.tasks import lm_eval_task, task_data
from paramscope.models import zoo
from paramscope.store import load_results


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    ev = load_results("eval", Path(cfg.paths.results), with_examples=True)
    failures = 0
    for name in cfg.models:
        model, tok = zoo.load(name, Path(cfg.paths.models))
        for task in cfg.tasks:
            lm_name, include = lm_eval_task(cfg, task)
            for split in cfg.splits:
                row = ev[(ev.model == name) & (ev.task == task) & (ev.split == split)].iloc[0]
                ids = [int(i) for i in row.ex_doc_ids]
                ref = lm_eval_per_doc(model, tok, lm_name, ids, include, cfg.eval.batch_size, task_data(cfg, task))
                theirs = [int(ref[i]["acc"]) for i in ids]
                agree = sum(a == b for a, b in zip(row.ex_correct, theirs))
                failures += agree != len(ids)
                print(f"{name} {task}/{split}: {agree}/{len(ids)} documents agree; "
                      f"acc ours {sum(row.ex_correct) / len(ids):.4f}, lm-eval {sum(theirs) / len(ids):.4f}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
