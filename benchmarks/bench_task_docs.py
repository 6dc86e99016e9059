"""Task documents for every model of a job: built per model (the slow way) vs cached by tokenizer content.

Every trained model saves its own copy of the suite's tokenizer; a job that scores three models on
every task and split used to build lm-eval's requests once per model. Run after `dvc repro`:

    python benchmarks/bench_task_docs.py [--models scratch gen2 tuned]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hydra import compose, initialize_config_dir
from transformers import AutoTokenizer

from paramscope.evaluation import tasks
from paramscope.evaluation.requests import build_docs
from paramscope.models import zoo

CONF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "conf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["scratch", "gen2", "tuned"])
    args = ap.parse_args()
    with initialize_config_dir(config_dir=os.path.abspath(CONF), version_base="1.3"):
        cfg = compose(config_name="ablate", overrides=["profile=tiny"])
    tokenizers = [AutoTokenizer.from_pretrained(zoo.resolve(m, Path(cfg.paths.models))) for m in args.models]
    cells = [(t, s) for t in tasks.atlas_tasks(cfg) for s in ("dev", "test")]

    start = time.perf_counter()
    slow = [build_docs(*tasks.lm_eval_task(cfg, t)[:1], tok, s, int(cfg.seed), tasks.dev_fraction(cfg),
                       tasks.lm_eval_task(cfg, t)[1]) for tok in tokenizers for t, s in cells]
    t_slow = time.perf_counter() - start

    start = time.perf_counter()
    fast = [tasks.task_docs(cfg, t, s, tok) for tok in tokenizers for t, s in cells]
    t_fast = time.perf_counter() - start

    assert [d.docs for d in slow] == [d.docs for d in fast], "cached documents differ from freshly built ones"
    print(f"{len(args.models)} models x {len(cells)} task-splits, identical documents either way")
    print(f"built per model (slow way):      {t_slow:7.2f} s")
    print(f"cached by tokenizer content:     {t_fast:7.2f} s")
    print(f"ratio: {t_slow / t_fast:.1f}x")


if __name__ == "__main__":
    main()
