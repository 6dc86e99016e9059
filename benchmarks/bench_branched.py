"""Weight-edit and statistic-op maps two ways: the whole model per unit, and branched from a clean trunk.

For one trained model and the synthetic suite it scores every unit of weight groups (`matrix`,
`magnitude_matrix`, `magnitude`) and of `mean`/`resample` maps on heads (a) the plain way, the model
scored whole once per unit (`score` under `edited` / `apply`), (b) with `engine.branched_scores`,
where blocks before the unit's first changed block come from one clean forward per batch. It prints
wall times, the ratio (a)/(b), the largest log-likelihood difference and the number of documents
whose correctness differs (must be 0).

    # after `dvc repro` of the tiny profile (models/ and data/tasks/ exist)
    python benchmarks/bench_branched.py --model scratch
    # dry run without the pipeline: a tiny random GPT-NeoX on random single-token documents
    python benchmarks/bench_branched.py --random
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from paramscope.ablation.atlas import hook_variant, weight_variant
from paramscope.ablation.engine import branched_scores
from paramscope.ablation.interventions import apply
from paramscope.ablation.reference import resample_pool, site_stats
from paramscope.ablation.units import unit_specs
from paramscope.ablation.weights import edited, first_layer, weight_units
from paramscope.evaluation.documents import Doc
from paramscope.evaluation.scorer import score
from paramscope.models.adapters import get_adapter

TASK_NAMES = ("induction", "kv", "facts", "arith")


def load(args):
    if args.random:
        from paramscope.models.random_models import tiny_random_model

        rng = np.random.default_rng(0)
        docs = [Doc(i, tuple(int(t) for t in rng.integers(0, 64, int(rng.integers(4, 18)))),
                    tuple((int(c),) for c in rng.choice(64, 4, replace=False)), (1, 1, 1, 1), int(rng.integers(0, 4)))
                for i in range(150)]
        return get_adapter(tiny_random_model("gpt_neox", seed=0)), {"random": (tuple(docs), tuple(docs))}
    from paramscope.data.lm_eval_tasks import lm_eval_name
    from paramscope.evaluation.requests import build_docs
    from paramscope.models import zoo

    model, tok = zoo.load(args.model)
    tasks = {t: tuple(build_docs(lm_eval_name(t), tok, split, seed=0, include_path=args.tasks_dir).docs
                      for split in (args.split, "dev")) for t in TASK_NAMES}
    return get_adapter(model), tasks


def maps(adapter, dev_docs):
    """(name, [(first block, plain-way context, branched variant context)]) for every benchmarked map."""
    out = []
    for group, bins in (("matrix", 10), ("magnitude_matrix", 4), ("magnitude", 10)):
        units = list(weight_units(adapter, group, bins, 0))
        out.append((f"{group}/zero", [(first_layer(adapter, u), lambda u=u: edited(adapter, u, "zero"),
                                       weight_variant(adapter, u, "zero", 0.0)) for u in units]))
    means, _ = site_stats(adapter, dev_docs, "heads")
    specs = list(unit_specs(adapter, "heads", "mean", 0.0, 64))
    out.append(("heads/mean", [(s.layer, lambda s=s: apply(adapter, [s], means=means),
                                hook_variant(adapter, s, means=means))
                               for s in specs]))
    pool = resample_pool(adapter, dev_docs, "heads", seed=0)
    specs = list(unit_specs(adapter, "heads", "resample", 0.0, 64))
    out.append(("heads/resample", [(s.layer, lambda s=s: apply(adapter, [s], pool=pool),
                                    hook_variant(adapter, s, pool=pool))
                                   for s in specs]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="scratch")
    ap.add_argument("--tasks-dir", default="data/tasks")
    ap.add_argument("--split", default="test")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--random", action="store_true", help="a tiny random GPT-NeoX on random documents")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    adapter, tasks = load(args)
    adapter.model.eval()
    print(f"model: {'tiny random' if args.random else args.model} ({adapter.family}, {adapter.n_layers} layers); "
          f"{args.threads} thread(s); {sum(len(d) for d, _ in tasks.values())} documents")
    total = {"a": 0.0, "b": 0.0}
    for name, docs_pair in tasks.items():
        docs, dev = docs_pair
        score(adapter.model, docs[:1])  # warm-up
        for map_name, variants in maps(adapter, dev):
            t0 = time.perf_counter()
            plain = []
            for _, context, _ in variants:
                with context():
                    plain.append(score(adapter.model, docs, args.batch_size))
            t1 = time.perf_counter()
            branched = branched_scores(adapter, docs, [(first, enter) for first, _, enter in variants], args.batch_size)
            t2 = time.perf_counter()
            ll = max(float(np.abs(np.stack(p.lls) - np.stack(b.lls)).max()) for p, b in zip(plain, branched))
            flips = sum(int((p.correct != b.correct).sum()) for p, b in zip(plain, branched))
            total["a"] += t1 - t0
            total["b"] += t2 - t1
            print(f"{name:>10} {map_name:<24} {len(variants):4d} units: plain {t1 - t0:6.2f} s, "
                  f"branched {t2 - t1:6.2f} s ({(t1 - t0) / (t2 - t1):.2f}x); max |ll diff| {ll:.1e}, "
                  f"correctness differs on {flips} docs")
    print(f"\nall maps: plain {total['a']:.2f} s, branched {total['b']:.2f} s, ratio {total['a'] / total['b']:.2f}x")


if __name__ == "__main__":
    main()
