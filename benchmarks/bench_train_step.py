"""One training step of the tiny scratch model, the ways it can be run: time per step, ratio, agreement.

The slow way is the one the train stage used first (eager attention, an explicit padding mask); the
others drop the mask (sound for right-padded sequences: a real token never attends to a later pad, and
pads carry no loss) and/or use PyTorch's fused scaled-dot-product attention. Each is run from the same
initial weights on the same batches, so the printed loss difference is what the choice changes.

    python benchmarks/bench_train_step.py [--steps 40] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from hydra import compose, initialize_config_dir
from transformers import GPTNeoXForCausalLM

from paramscope.data.tokenizer import word_level_tokenizer
from paramscope.models.train import scratch_config

CONF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "conf")


def batches(cfg, vocab: int, n: int, pad: int) -> list[torch.Tensor]:
    """Right-padded random sequences shaped like the training mixtures (lengths 60-100% of seq_len)."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(3, vocab, (cfg.train.batch_size, cfg.train.seq_len + 1), generator=gen)
        lengths = torch.randint(int(0.6 * cfg.train.seq_len), cfg.train.seq_len + 2, (cfg.train.batch_size,),
                                generator=gen)
        ids[torch.arange(ids.shape[1]) >= lengths[:, None]] = pad
        out.append(ids)
    return out


def run(model, data: list[torch.Tensor], pad: int, use_mask: bool, lr: float) -> tuple[float, float]:
    """Seconds per step (after two warm-up steps) and the final step's loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    loss = torch.tensor(0.0)
    for i, ids in enumerate(data):
        if i == 2:
            start = time.perf_counter()
        inputs, targets = ids[:, :-1], ids[:, 1:].clone()
        targets[targets == pad] = -100
        mask = (inputs != pad).long() if use_mask else None
        logits = model(input_ids=inputs, attention_mask=mask).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / (len(data) - 2), float(loss)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with initialize_config_dir(config_dir=os.path.abspath(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["profile=tiny"])
    tok = word_level_tokenizer(["<pad>", "<unk>", "<eos>"] + [f"w{i}" for i in range(300)])
    torch.manual_seed(0)
    reference = GPTNeoXForCausalLM(scratch_config(cfg, len(tok), tok))
    data = batches(cfg, len(tok), args.steps, tok.pad_token_id)
    results = {}
    for attn in ("eager", "sdpa"):
        for use_mask in (True, False):
            model = copy.deepcopy(reference)
            model.config._attn_implementation = attn
            results[(attn, use_mask)] = run(model, data, tok.pad_token_id, use_mask, float(cfg.train.lr))
    slow_s, slow_loss = results[("eager", True)]
    print(f"{args.steps} steps of batch {cfg.train.batch_size} x {cfg.train.seq_len}, {args.threads} threads")
    for (attn, use_mask), (sec, loss) in results.items():
        print(f"{attn:>6} attention, {'padding mask' if use_mask else 'no mask     '}: {1000 * sec:7.1f} ms/step  "
              f"ratio {slow_s / sec:4.2f}x  final loss {loss:.6f} (vs slow way {loss - slow_loss:+.2e})")


if __name__ == "__main__":
    main()
