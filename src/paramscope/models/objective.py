"""What a training run optimises and how: shared by a variant's run and its noise twin (`noise_twin`),
so that the twin takes exactly the steps the run takes, only without anything to learn."""

from __future__ import annotations

from collections.abc import Iterable

import torch

GRADIENT_CLIP = 1.0  # largest global gradient norm of an optimizer step


def next_token_loss(model: torch.nn.Module, ids: torch.Tensor, pad_id: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token cross-entropy over real tokens of (B, T+1) ids, and how many tokens counted.

    Padding is masked (`pad_id`); packed blocks and random sequences have none (`pad_id` None).
    """
    inputs, targets = ids[:, :-1], ids[:, 1:].clone()
    if pad_id is None:  # every position is a real token: plain causal attention
        logits = model(input_ids=inputs).logits
    else:
        targets[targets == pad_id] = -100
        logits = model(input_ids=inputs, attention_mask=(inputs != pad_id).long()).logits
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    return loss, (targets != -100).sum()


def optimizer_and_schedule(
    params: Iterable[torch.nn.Parameter],
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    warmup_steps: int,
    max_steps: int,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with a linear warmup, then a cosine decay to 10% of `lr` at `max_steps` (stepped per optimizer step)."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas))

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * min(1.0, progress))).item())

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)
