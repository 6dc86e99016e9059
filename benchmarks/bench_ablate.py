"""Ablation maps three ways: lm-eval per unit, our scorer per unit, and the fast exact engine.

For one model and the synthetic suite it computes the full head map and the FFN-group (neuron block)
map (a) with `lm_eval.simple_evaluate` once per unit and task with one hook, (b) with our scorer once
per unit and task, (c) with `paramscope.ablation.engine.fast_map`; it prints wall times, the ratios
(a)/(c) and (b)/(c), peak memory, and the largest accuracy difference between them (must be 0).

    # after `dvc repro` of the tiny profile (models/ and data/tasks/ exist)
    python benchmarks/bench_ablate.py --model scratch --threads 1
    # dry run without the pipeline: the smoke suite and a tiny random GPT-NeoX
    python benchmarks/bench_ablate.py --smoke --limit 10
    # GPU check: a randomly initialised Pythia-410M-shaped GPT-NeoX on random single-token requests
    python benchmarks/bench_ablate.py --random-pythia --device cuda --limit 128
    # the real profile's model on BIG-bench tasks converted by its prepare stage (multi-token choices, packed)
    python benchmarks/bench_ablate.py --model smollm2-135m --bigbench-dir data/bigbench \
        --tasks unit_conversion similarities_abstraction --split dev --limit 16 --groups layers heads

Peak memory is the rise of resident memory above its level at the start of each method, sampled
every 2 ms (CPU), or `torch.cuda.max_memory_allocated` above the allocation at its start (CUDA).
The engine runs first, so that memory the allocator kept from the others cannot hide its peak.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch

from paramscope.ablation.engine import DEFAULT_MAX_BATCH_TOKENS, fast_map
from paramscope.ablation.interventions import apply
from paramscope.ablation.units import unit_specs
from paramscope.evaluation.documents import Doc, Scores
from paramscope.evaluation.scorer import score
from paramscope.models.adapters import get_adapter

TASK_NAMES = ("induction", "kv", "facts", "arith")


@dataclass
class Task:
    name: str  # lm-eval task name
    docs: tuple[Doc, ...]
    include_path: Path | None  # folder of the task's YAML (None: lm-eval's own, or random requests)
    data: str | None = None  # task_data: local documents in place of the hub dataset (BIG-bench)

    @property
    def lm_eval(self) -> bool:
        return self.include_path is not None or self.data is not None


class PeakMemory:
    """Peak memory above the level at entry: resident set size on CPU, allocated bytes on CUDA."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.peak = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self._rss()
            self.top = self.base
            self.done = threading.Event()
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.done.wait(0.002):
            self.top = max(self.top, self._rss())

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.done.set()
            self.thread.join()
            self.peak = max(self.top, self._rss()) - self.base


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def load_suite(args) -> tuple[torch.nn.Module, object, list[Task]]:
    """(model, tokenizer, tasks) for the chosen setup."""
    if args.random_pythia:
        return random_pythia(args)
    from transformers import AutoTokenizer

    from paramscope.data.lm_eval_tasks import lm_eval_name
    from paramscope.evaluation.requests import build_docs

    if args.smoke:
        import sys

        from hydra import compose, initialize_config_dir

        from paramscope.data.prepare import prepare
        from paramscope.models.random_models import tiny_random_model

        root = Path(__file__).resolve().parents[1]
        sys.path.insert(0, str(root / "tests"))
        data = Path(tempfile.mkdtemp()) / "data"
        with initialize_config_dir(config_dir=str(root / "conf"), version_base="1.3"):
            prepare(compose(config_name="prepare", overrides=["profile=smoke"]), data)
        tok = AutoTokenizer.from_pretrained(data / "tokenizer")
        model = tiny_random_model("gpt_neox", seed=0, vocab_size=len(tok)).to(args.device)
        tasks_dir = data / "tasks"
    else:
        from paramscope.models import zoo

        model, tok = zoo.load(args.model, Path(args.models_dir), device=args.device)
        tasks_dir = Path(args.tasks_dir)
    if args.bigbench_dir:
        return model, tok, bigbench_tasks(args, tok)
    tasks = []
    for name in args.tasks:
        td = build_docs(lm_eval_name(name), tok, args.split, seed=0, include_path=tasks_dir, limit=args.limit)
        tasks.append(Task(td.task, td.docs, tasks_dir))
    return model, tok, tasks


def bigbench_tasks(args, tok) -> list[Task]:
    """BIG-bench tasks as the prepare stage converted them, through lm-eval's own YAML (`task_data`)."""
    from paramscope.data.bigbench import lm_eval_name
    from paramscope.evaluation.local_data import data_spec
    from paramscope.evaluation.requests import build_docs

    tasks = []
    for name in args.tasks:
        data = data_spec(name, "json", {"default": str(Path(args.bigbench_dir) / f"{name}.jsonl")})
        td = build_docs(lm_eval_name(name), tok, args.split, seed=0, limit=args.limit, data=data)
        tasks.append(Task(td.task, td.docs, None, data))
    return tasks


def random_pythia(args) -> tuple[torch.nn.Module, None, list[Task]]:
    """Pythia-410M's shape (24 layers, d_model 1024, 16 heads, d_ffn 4096), random weights, and random
    single-token multiple-choice requests (contexts of 16..64 tokens, 4 choices)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        vocab_size=50304, hidden_size=1024, num_hidden_layers=args.layers or 24, num_attention_heads=16,
        intermediate_size=4096, max_position_embeddings=2048, rotary_pct=0.25, use_parallel_residual=True,
        attention_bias=True, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM._from_config(config, attn_implementation="eager", dtype=torch.float32)
    model = model.to(args.device).eval()
    rng = np.random.default_rng(0)
    docs = []
    for i in range(args.limit or 128):
        n = int(rng.integers(16, 65))
        choices = tuple((int(c),) for c in rng.choice(config.vocab_size, 4, replace=False))
        docs.append(Doc(i, tuple(int(t) for t in rng.integers(0, config.vocab_size, n)), choices, (1, 1, 1, 1),
                        int(rng.integers(0, 4))))
    return model, None, [Task("random", tuple(docs), None)]


def check_tiny(args) -> None:
    """The engine against the loop on tiny random models of every family, on `args.device`."""
    from paramscope.models.random_models import FAMILIES, tiny_random_model

    rng = np.random.default_rng(0)
    docs = []
    for i in range(12):
        ctx = tuple(int(t) for t in rng.integers(0, 64, int(rng.integers(3, 21))))
        docs.append(Doc(i, ctx, tuple((int(c),) for c in rng.choice(64, 4, replace=False)), (1, 1, 1, 1), 0))
    for family in FAMILIES:
        adapter = get_adapter(tiny_random_model(family, seed=0).to(args.device))
        worst = 0.0
        for group in ("heads", "neurons", "attn", "mlp", "layers"):
            for op, value in (("zero", 0.0), ("scale", 0.5)):
                for spec, fast in fast_map(adapter, docs, group, op, value, batch_size=4, neuron_block=16):
                    with apply(adapter, [spec]):
                        slow = score(adapter.model, docs, 4)
                    worst = max(worst, float(np.abs(np.stack(fast.lls) - np.stack(slow.lls)).max()))
        print(f"check-tiny {family:>9} on {args.device}: largest |engine - loop| log-likelihood {worst:.2e}")


def run_lm_eval(adapter, tok, tasks, specs, args) -> dict[str, list[np.ndarray]]:
    """(a) lm-eval's simple_evaluate once per unit and task, with that unit's hook on the model."""
    from paramscope.evaluation.harness import lm_eval_per_doc

    out: dict[str, list[np.ndarray]] = {t.name: [] for t in tasks}
    for spec in specs:
        with apply(adapter, [spec]):
            for t in tasks:
                ids = [d.doc_id for d in t.docs]
                per_doc = lm_eval_per_doc(adapter.model, tok, t.name, ids, t.include_path, args.batch_size, t.data)
                out[t.name].append(np.array([int(per_doc[i]["acc"]) for i in ids], dtype=np.int8))
    return out


def run_loop(adapter, tasks, specs, args) -> dict[str, list[Scores]]:
    """(b) our scorer once per unit and task."""
    out: dict[str, list[Scores]] = {t.name: [] for t in tasks}
    for spec in specs:
        with apply(adapter, [spec]):
            for t in tasks:
                out[t.name].append(score(adapter.model, t.docs, args.batch_size))
    return out


def run_engine(adapter, tasks, group, args) -> dict[str, list[Scores]]:
    """(c) the fast exact engine, one call per task."""
    return {
        t.name: [s for _, s in fast_map(adapter, t.docs, group, "zero", 0.0, batch_size=args.batch_size,
                                        max_batch_tokens=args.max_batch_tokens, neuron_block=args.neuron_block)]
        for t in tasks
    }


def timed(fn, device):
    _sync(device)
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        result = fn()
        _sync(device)
        seconds = time.perf_counter() - t0
    return result, seconds, mem.peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--model", default="scratch")
    ap.add_argument("--models-dir", default="models")
    ap.add_argument("--tasks", nargs="+", default=list(TASK_NAMES))
    ap.add_argument("--tasks-dir", default="data/tasks")
    ap.add_argument("--bigbench-dir", default=None, help="BIG-bench tasks from this folder of converted .jsonl")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=None, help="documents per task (random requests: in all; 128)")
    ap.add_argument("--groups", nargs="+", default=["heads", "neurons"])
    ap.add_argument("--neuron-block", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-batch-tokens", type=int, default=DEFAULT_MAX_BATCH_TOKENS)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--smoke", action="store_true", help="dry run: smoke suite and a tiny random GPT-NeoX")
    ap.add_argument("--random-pythia", action="store_true", help="random Pythia-410M shape, random requests")
    ap.add_argument("--layers", type=int, default=None, help="--random-pythia: fewer layers (CPU dry runs)")
    ap.add_argument("--check-tiny", action="store_true", help="first compare engine and loop on tiny models")
    ap.add_argument("--skip-lm-eval", action="store_true", help="leave out (a)")
    ap.add_argument("--lm-eval-units", type=int, default=None,
                    help="(a) on the first N units of each map only, its time extrapolated to all units")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")
    if args.check_tiny:
        check_tiny(args)

    model, tok, tasks = load_suite(args)
    adapter = get_adapter(model)
    with_lm_eval = not args.skip_lm_eval and tasks[0].lm_eval
    n_docs = sum(len(t.docs) for t in tasks)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu, {args.threads} thread(s)"
    label = "random Pythia-410M shape" if args.random_pythia else "tiny random (smoke)" if args.smoke else args.model
    print(f"model: {label} ({adapter.family}, "
          f"{adapter.n_layers} layers x {adapter.n_heads} heads, d_ffn {adapter.d_ffn}); {len(tasks)} task(s), "
          f"{n_docs} documents; device: {device_name}; max_batch_tokens {args.max_batch_tokens}")

    # warm-up: first-call costs (kernels, lazy imports) are nobody's
    warm = [tasks[0].docs[0]]
    score(model, warm)
    fast_map(adapter, warm, "layers")

    totals = {"a": 0.0, "b": 0.0, "c": 0.0}
    peaks = {"a": 0, "b": 0, "c": 0}
    worst = {"acc a-c": 0.0, "acc b-c": 0.0, "docs a!=c": 0, "docs b!=c": 0, "ll b-c": 0.0}
    rows = []
    for group in args.groups:
        specs = list(unit_specs(adapter, group, "zero", 0.0, args.neuron_block))
        engine, t_c, m_c = timed(lambda: run_engine(adapter, tasks, group, args), args.device)
        loop, t_b, m_b = timed(lambda: run_loop(adapter, tasks, specs, args), args.device)
        t_a = m_a = None
        if with_lm_eval:
            a_specs = specs[: args.lm_eval_units] if args.lm_eval_units else specs
            ref, t_a, m_a = timed(lambda: run_lm_eval(adapter, tok, tasks, a_specs, args), args.device)
            t_a *= len(specs) / len(a_specs)
            for t in tasks:
                for acc_a, sc in zip(ref[t.name], engine[t.name]):
                    worst["acc a-c"] = max(worst["acc a-c"], abs(acc_a.mean() - sc.correct.mean()))
                    worst["docs a!=c"] += int((acc_a != sc.correct).sum())
            totals["a"] += t_a
            peaks["a"] = max(peaks["a"], m_a)
        for t in tasks:
            for sb, sc in zip(loop[t.name], engine[t.name]):
                worst["acc b-c"] = max(worst["acc b-c"], abs(sb.correct.mean() - sc.correct.mean()))
                worst["docs b!=c"] += int((sb.correct != sc.correct).sum())
                diff = float(np.abs(np.concatenate(sb.lls) - np.concatenate(sc.lls)).max())
                worst["ll b-c"] = max(worst["ll b-c"], diff)
        totals["b"] += t_b
        totals["c"] += t_c
        peaks["b"], peaks["c"] = max(peaks["b"], m_b), max(peaks["c"], m_c)
        rows.append((group, len(specs), t_a, t_b, t_c))

    mib = 2**20
    print(f"\n{'map':>8} {'units':>6} {'(a) lm-eval':>12} {'(b) scorer':>11} {'(c) engine':>11} {'a/c':>7} {'b/c':>6}")
    for group, n, t_a, t_b, t_c in rows:
        a = f"{t_a:11.2f}s" if t_a is not None else f"{'n/a':>12}"
        ac = f"{t_a / t_c:6.1f}x" if t_a is not None else f"{'n/a':>7}"
        print(f"{group:>8} {n:>6} {a} {t_b:10.2f}s {t_c:10.2f}s {ac} {t_b / t_c:5.2f}x")
    a = f"{totals['a']:11.2f}s" if with_lm_eval else f"{'n/a':>12}"
    ac = f"{totals['a'] / totals['c']:6.1f}x" if with_lm_eval else f"{'n/a':>7}"
    print(f"{'total':>8} {sum(r[1] for r in rows):>6} {a} {totals['b']:10.2f}s {totals['c']:10.2f}s {ac} "
          f"{totals['b'] / totals['c']:5.2f}x")
    if with_lm_eval and args.lm_eval_units:
        print(f"(a) ran on the first {args.lm_eval_units} units of each map; its times are extrapolated")
    kind = "CUDA allocated" if args.device == "cuda" else "RSS rise"
    print(f"peak memory ({kind}): (a) {peaks['a'] / mib:.1f} MiB" if with_lm_eval else f"peak memory ({kind}): (a) n/a",
          f"  (b) {peaks['b'] / mib:.1f} MiB   (c) {peaks['c'] / mib:.1f} MiB")
    if with_lm_eval:
        print(f"largest accuracy difference (a) vs (c): {worst['acc a-c']:.6f} "
              f"({worst['docs a!=c']} per-document disagreements)")
    print(f"largest accuracy difference (b) vs (c): {worst['acc b-c']:.6f} ({worst['docs b!=c']} per-document "
          f"disagreements); largest log-likelihood difference: {worst['ll b-c']:.2e}")


if __name__ == "__main__":
    main()
