"""VPS overhead: base model vs VPS as implemented (base output reused, Delta W never formed) vs a naive
VPS that forms Delta W per sequence and recomputes x (W + Delta W)^T, in one run; prints the ratios and
the largest logit difference between the two VPS implementations.

    python benchmarks/bench_vps.py [--d-model 256] [--layers 4] [--batch 16] [--seq 64] [--rank 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from paramscope.models.adapters import get_adapter, weight_in_out
from paramscope.vps.selection import build_selection, dense_selectors
from paramscope.vps.wrapper import VPSConfig, perturbation, sharpen, vps_modules


@contextmanager
def naive_sharpen(model, config: VPSConfig):
    """The textbook route: per sequence, U and V as dense matrices, Delta W formed, the layer recomputed."""

    def hook(module, args, output):
        x = args[0]
        w, b = weight_in_out(module), module.bias
        y_lin = output - b
        mask = torch.ones(x.shape[:2])
        sel = build_selection(config.builder, x, y_lin, mask, config.rank, config.ridge)
        _, scale = perturbation(w, sel, y_lin, torch.full((x.shape[0],), config.gamma), config.tau)
        u, v = dense_selectors(sel, w.shape[1], w.shape[0], scale)
        delta_w = config.gamma * (w @ u) @ (v.transpose(1, 2) @ w)  # (B, d_out, d_in)
        return x @ (w + delta_w).transpose(1, 2) + b

    handles = [m.register_forward_hook(hook) for m in vps_modules(get_adapter(model), config.layer_set).values()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=512, hidden_size=args.d_model, num_hidden_layers=args.layers,
                           num_attention_heads=max(1, args.d_model // 64), intermediate_size=4 * args.d_model,
                           max_position_embeddings=args.seq)
    model = GPTNeoXForCausalLM(config).eval()
    ids = torch.randint(0, 512, (args.batch, args.seq))
    n_tokens = ids.numel()

    def forward():
        with torch.inference_mode():
            return model(input_ids=ids).logits

    base = timed(forward, args.repeats)
    print(f"d_model {args.d_model}, {args.layers} layers, batch {args.batch} x {args.seq} tokens, rank {args.rank}, "
          f"{args.threads} thread(s); base {1e6 * base / n_tokens:.1f} us/token")
    for builder in ("sparse", "coupled"):
        for policy in ("fixed", "adaptive"):
            vps = VPSConfig(gamma=0.3, rank=args.rank, builder=builder, policy=policy, layer_set="all")
            with sharpen(model, vps):
                ours = timed(forward, args.repeats)
                ours_logits = forward()
            line = f"{builder:>8} {policy:>8}: VPS / base {ours / base:5.2f}x"
            if policy == "fixed":  # the naive route has no entropy pass; compare like with like
                with naive_sharpen(model, vps):
                    naive = timed(forward, args.repeats)
                    diff = (forward() - ours_logits).abs().max().item()
                line += f"   naive / VPS {naive / ours:5.2f}x   max |logit diff| {diff:.2e}"
            print(line)


if __name__ == "__main__":
    main()
