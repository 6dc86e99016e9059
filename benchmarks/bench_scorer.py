"""Our scorer vs lm-eval's HFLM on the same models, tasks and documents: wall time, ratio, agreement.

Run after `dvc repro` (it reads the trained models and the prepared tasks):

    python benchmarks/bench_scorer.py [--models scratch gen2 tuned] [--split test] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from paramscope.data.lm_eval_tasks import lm_eval_name
from paramscope.data.synthetic import TASKS
from paramscope.evaluation.harness import lm_eval_per_doc
from paramscope.evaluation.requests import build_docs
from paramscope.evaluation.scorer import score
from paramscope.models import zoo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["scratch", "gen2", "tuned"])
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    ap.add_argument("--split", default="test")
    ap.add_argument("--tasks-dir", default="data/tasks")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t_ref = t_ours = 0.0
    n_docs = 0
    max_diff = 0.0
    for name in args.models:
        model, tok = zoo.load(name)
        for task in args.tasks:
            docs = build_docs(lm_eval_name(task), tok, args.split, seed=0, include_path=args.tasks_dir)
            t0 = time.perf_counter()
            ref = lm_eval_per_doc(model, tok, lm_eval_name(task), docs.doc_ids, args.tasks_dir, args.batch_size)
            t1 = time.perf_counter()
            ours = score(model, docs.docs, args.batch_size)
            t2 = time.perf_counter()
            t_ref += t1 - t0
            t_ours += t2 - t1
            n_docs += len(docs.docs)
            ref_acc = np.mean([ref[i]["acc"] for i in docs.doc_ids])
            diff = abs(ref_acc - ours.correct.mean())
            max_diff = max(max_diff, diff)
            print(f"{name:>8} {task:>10}: lm-eval acc {ref_acc:.4f} ({t1 - t0:6.2f}s)   "
                  f"ours {ours.correct.mean():.4f} ({t2 - t1:6.2f}s)")
    print(f"\n{n_docs} documents, {args.threads} threads")
    print(f"lm-eval HFLM (simple_evaluate): {t_ref:8.2f} s")
    print(f"paramscope scorer:              {t_ours:8.2f} s")
    print(f"speed-up: {t_ref / t_ours:.1f}x    largest accuracy difference: {max_diff:.6f}")


if __name__ == "__main__":
    main()
