"""GPU check of the paper profile in one run (a few minutes on one H100; budget 8 minutes).

1. Training: a few hundred bf16 steps of the paper profile's 300M scratch model (Pythia-410M's shape,
   `conf/profile/paper.yaml`) through the train stage's own Lightning module, on synthetic tokens.
   Prints tokens/s and MFU, with
       FLOPs per token = 6 N + 12 L d T   (forward + backward; PaLM, Chowdhery et al. 2022, app. B)
   where N = parameters that take part in matrix products (all but the input embedding; the
   unembedding counts), L layers, d the model width, T the sequence length (attention counted in
   full, not halved for the causal mask), and MFU = tokens/s x FLOPs per token / peak bf16 FLOP/s
   (dense: H100 SXM 989 TFLOP/s; other devices: --peak-tflops).
2. Evaluation: clean scoring of synthetic requests (multiple choice with single-token choices, and
   loglikelihood continuations of 1-5 tokens) on a randomly initialised Pythia-410M-shaped model in
   fp32 with eager attention, as the evaluate stage loads models. Prints requests/s (one request =
   one (context, continuation) pair, as lm-eval counts them).
3. A full head map (every head of every layer, zero-ablated) with the fast exact engine: its time.
4. Engine against the one-model-per-ablation loop on this device: the largest |engine - loop|
   log-likelihood difference, on the Pythia-shaped model (the heads of its first and last layers)
   and on tiny random models of every family (every group, zero and scale); must stay below 1e-5.

    python benchmarks/gpu_check.py                       # one GPU
    python benchmarks/gpu_check.py --device cpu --quick  # tiny sizes: a CPU dry run (the tests use it)

Exit status 1 when the engine and the loop disagree beyond the tolerance.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning as L
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from transformers import GPTNeoXForCausalLM

from paramscope.ablation.engine import fast_map
from paramscope.ablation.interventions import apply
from paramscope.ablation.units import unit_specs
from paramscope.evaluation.documents import ContinuationDoc, Doc
from paramscope.evaluation.scorer import score
from paramscope.models.adapters import get_adapter
from paramscope.models.random_models import FAMILIES, tiny_random_model
from paramscope.models.train import CausalLM, scratch_config

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5
PYTHIA_VOCAB = 50277  # Pythia's tokenizer; the model pads its embedding to 50304
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16 tensor-core peaks


@dataclass(frozen=True)
class Sizes:
    overrides: tuple[str, ...]  # on top of profile=paper
    batch: int  # sequences per step
    steps: int
    warmup: int  # steps before timing starts
    eval_docs: int  # per request kind
    map_docs: int
    context: tuple[int, int]  # context lengths of the synthetic requests


FULL = Sizes((), batch=8, steps=300, warmup=20, eval_docs=512, map_docs=64, context=(32, 128))
QUICK = Sizes(
    ("architecture.vocab_size=512", "architecture.hidden_size=64", "architecture.num_hidden_layers=2",
     "architecture.num_attention_heads=4", "architecture.intermediate_size=256", "train.seq_len=64"),
    batch=2, steps=6, warmup=2, eval_docs=12, map_docs=6, context=(4, 16),
)


class _Tokenizer:
    """What scratch_config reads from the Pythia tokenizer."""

    pad_token_id = None
    eos_token_id = 0


def paper_config(sizes: Sizes):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", ["profile=paper", *sizes.overrides])


def build(config, device: str, attn: str) -> GPTNeoXForCausalLM:
    """HF's own random initialisation, materialised directly on the device (no 1.6 GB CPU detour)."""
    config._attn_implementation = attn
    with torch.device("meta"):
        model = GPTNeoXForCausalLM(config)
    model = model.to_empty(device=device)
    with torch.no_grad():
        model.init_weights()
    return model


def flops_per_token(model: GPTNeoXForCausalLM, seq_len: int) -> tuple[float, int]:
    """(6 N + 12 L d T, N): training FLOPs per token and the parameters N that enter matrix products."""
    c = model.config
    n = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    return 6.0 * n + 12.0 * c.num_hidden_layers * c.hidden_size * seq_len, n


def peak_flops(device: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if device == "cuda":
        name = torch.cuda.get_device_name()
        return next((v * 1e12 for k, v in PEAK_TFLOPS.items() if k in name), None)
    return None


class SyntheticTokens(torch.utils.data.IterableDataset):
    def __init__(self, vocab: int, seq_len: int):
        self.vocab, self.seq_len = vocab, seq_len

    def __iter__(self):
        g = torch.Generator().manual_seed(0)
        while True:
            yield (torch.randint(0, self.vocab, (self.seq_len + 1,), generator=g),)


class Timer(L.Callback):
    """Wall time from the end of step `warmup` to the end of training, with the device synchronised."""

    def __init__(self, warmup: int, device: str):
        self.warmup, self.device, self.t0, self.seconds = warmup, device, None, float("nan")

    def _now(self) -> float:
        if self.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.warmup and self.t0 is None:
            self.t0 = self._now()

    def on_train_end(self, trainer, *args) -> None:
        self.seconds = self._now() - self.t0


def check_training(cfg, sizes: Sizes, device: str, peak: float | None) -> None:
    config = scratch_config(cfg, PYTHIA_VOCAB, _Tokenizer())
    model = build(config, device, cfg.train.attn_implementation)
    n_params = sum(p.numel() for p in model.parameters())
    per_token, n_matmul = flops_per_token(model, cfg.train.seq_len)
    module = CausalLM(model, None, cfg.train.lr, cfg.train.weight_decay, cfg.train.warmup_steps, sizes.steps,
                      tuple(cfg.train.betas))
    vocab = min(PYTHIA_VOCAB, config.vocab_size)  # token ids the tokenizer can produce
    loader = torch.utils.data.DataLoader(SyntheticTokens(vocab, cfg.train.seq_len), batch_size=sizes.batch)
    timer = Timer(sizes.warmup, device)
    trainer = L.Trainer(max_steps=sizes.steps, accelerator=device, devices=1, precision="bf16-mixed",
                        logger=False, enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=False, gradient_clip_val=1.0, callbacks=[timer])
    trainer.fit(module, loader)
    tokens = (sizes.steps - sizes.warmup) * sizes.batch * cfg.train.seq_len
    tokens_per_s = tokens / timer.seconds
    achieved = tokens_per_s * per_token
    mfu = f"{100 * achieved / peak:.1f}% of {peak / 1e12:g} TFLOP/s" if peak else "n/a (peak unknown: --peak-tflops)"
    print(f"train: {n_params / 1e6:.1f}M parameters, {config.num_hidden_layers} layers x d {config.hidden_size}, "
          f"seq {cfg.train.seq_len}, batch {sizes.batch}, bf16-mixed, {cfg.train.attn_implementation} attention")
    print(f"train: {sizes.steps - sizes.warmup} timed steps in {timer.seconds:.1f}s: tokens/s {tokens_per_s:,.0f}; "
          f"FLOPs/token {per_token / 1e9:.3f} GFLOP (6N + 12 L d T, N = {n_matmul / 1e6:.1f}M); "
          f"achieved {achieved / 1e12:.2f} TFLOP/s; MFU {mfu}; "
          f"final loss {float(trainer.callback_metrics.get('train/loss', float('nan'))):.3f}")
    del trainer, module, model
    if device == "cuda":
        torch.cuda.empty_cache()


def synthetic_requests(n: int, vocab: int, context: tuple[int, int], seed: int) -> tuple[list[Doc], list[Doc]]:
    """n multiple-choice docs (4 single-token choices) and n loglikelihood docs (1-5 token continuations)."""
    rng = np.random.default_rng(seed)

    def ctx() -> tuple[int, ...]:
        return tuple(int(t) for t in rng.integers(0, vocab, int(rng.integers(context[0], context[1] + 1))))

    mc = [Doc(i, ctx(), tuple((int(c),) for c in rng.choice(vocab, 4, replace=False)), (1, 1, 1, 1),
              int(rng.integers(0, 4))) for i in range(n)]
    cont = [ContinuationDoc(i, ctx(), (tuple(int(t) for t in rng.integers(0, vocab, int(rng.integers(1, 6)))),),
                            (1,), 0) for i in range(n)]
    return mc, cont


def timed(fn, device: str):
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def largest_difference(adapter, docs, specs, batch_size: int) -> float:
    worst = 0.0
    for spec, fast in fast_map(adapter, docs, specs[0].group, batch_size=batch_size, specs=specs):
        with apply(adapter, [spec]):
            slow = score(adapter.model, docs, batch_size)
        worst = max(worst, float(np.abs(np.concatenate(fast.lls) - np.concatenate(slow.lls)).max()))
    return worst


def check_evaluation(cfg, sizes: Sizes, device: str, batch_size: int) -> float:
    config = scratch_config(cfg, PYTHIA_VOCAB, _Tokenizer())
    torch.manual_seed(0)
    model = build(config, device, "eager").eval()  # as zoo.load: fp32, eager attention
    adapter = get_adapter(model)
    mc, cont = synthetic_requests(sizes.eval_docs, min(PYTHIA_VOCAB, config.vocab_size), sizes.context, seed=0)
    score(model, mc[:2], batch_size)  # warm-up: first-call costs are nobody's
    score(model, cont[:2], batch_size)
    _, t_mc = timed(lambda: score(model, mc, batch_size), device)
    _, t_cont = timed(lambda: score(model, cont, batch_size), device)
    n_requests = 4 * len(mc) + len(cont)
    print(f"eval: {len(mc)} multiple-choice docs (4 choices) in {t_mc:.2f}s, {len(cont)} loglikelihood docs in "
          f"{t_cont:.2f}s: requests/s {n_requests / (t_mc + t_cont):,.0f} "
          f"(multiple choice {4 * len(mc) / t_mc:,.0f}, loglikelihood {len(cont) / t_cont:,.0f})")

    map_docs = mc[: sizes.map_docs]
    n_heads = adapter.n_layers * adapter.n_heads
    fast_map(adapter, map_docs[:1], "layers")  # warm-up
    heads, t_map = timed(lambda: fast_map(adapter, map_docs, "heads", batch_size=batch_size), device)
    assert len(heads) == n_heads
    print(f"head map: {n_heads} heads ({adapter.n_layers} layers x {adapter.n_heads}) on {len(map_docs)} docs: "
          f"head-map time {t_map:.1f}s ({n_heads * len(map_docs) / t_map:,.0f} head x doc scores/s)")

    edge_layers = {0, adapter.n_layers - 1}
    specs = [s for s in unit_specs(adapter, "heads", "zero", 0.0) if s.layer in edge_layers]
    worst = largest_difference(adapter, map_docs, specs, batch_size)
    print(f"engine vs loop, Pythia-shaped model: {len(specs)} heads of layers {sorted(edge_layers)}: "
          f"max |engine - loop| {worst:.2e}")
    return worst


def check_tiny_families(device: str) -> float:
    """Every family, every activation group, zero and scale: the engine against the loop."""
    rng = np.random.default_rng(0)
    docs = [Doc(i, tuple(int(t) for t in rng.integers(0, 64, int(rng.integers(3, 21)))),
                tuple((int(c),) for c in rng.choice(64, 4, replace=False)), (1, 1, 1, 1), 0) for i in range(12)]
    worst_all = 0.0
    for family in FAMILIES:
        adapter = get_adapter(tiny_random_model(family, seed=0).to(device))
        worst = 0.0
        for group in ("heads", "neurons", "attn", "mlp", "layers"):
            for op, value in (("zero", 0.0), ("scale", 0.5)):
                specs = list(unit_specs(adapter, group, op, value, neuron_block=16))
                worst = max(worst, largest_difference(adapter, docs, specs, batch_size=4))
        print(f"engine vs loop, tiny {family}: max |engine - loop| {worst:.2e}")
        worst_all = max(worst_all, worst)
    return worst_all


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a CPU dry run)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default 300; quick 6)")
    ap.add_argument("--batch-size", type=int, default=32, help="documents per scoring batch")
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak bf16 TFLOP/s for MFU (default: by device)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device (use --device cpu --quick for a dry run)")
    sizes = QUICK if args.quick else FULL
    if args.steps:
        sizes = Sizes(sizes.overrides, sizes.batch, args.steps, min(sizes.warmup, args.steps - 1), sizes.eval_docs,
                      sizes.map_docs, sizes.context)
    if args.device == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu, {torch.get_num_threads()} thread(s)"
    print(f"device: {where}; sizes: {'quick' if args.quick else 'paper profile'}")
    cfg = paper_config(sizes)
    start = time.perf_counter()
    check_training(cfg, sizes, args.device, peak_flops(args.device, args.peak_tflops))
    worst = max(check_evaluation(cfg, sizes, args.device, args.batch_size), check_tiny_families(args.device))
    verdict = "ok" if worst <= TOLERANCE else "FAILED"
    print(f"max |engine - loop| {worst:.2e} (tolerance {TOLERANCE:g}): {verdict}; "
          f"total {time.perf_counter() - start:.0f}s")
    if worst > TOLERANCE:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
