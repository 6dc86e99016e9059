"""A variant's noise twin: how far training moves a weight when there is nothing to learn.

The structure stage's drift test (`paramscope.structure.null_test`) needs the drift a weight shows
without a task-specific learning signal, at the scale of the run. The twin starts where the variant
started (its step-0 checkpoint, or the noise twin of the variant it was trained further from) and takes
the same number of optimizer steps with the same AdamW settings, learning-rate schedule and gradient
clipping (`objective`), on token sequences drawn uniformly at random afresh at every step: no token
predicts the next and no sequence comes back, so no update carries a signal about any task.

AdamW divides every entry's update by the running RMS of its own gradient, so an entry whose gradient
is zero-mean noise still moves by about the learning rate at each step, whatever the noise level: the
walk is set by the optimiser, the schedule and the number of steps, not by the batch. The twin therefore
takes small batches (`train.noise_twin.batch_size` sequences of `seq_len` tokens, `train.seq_len` where
unset), at a small fraction of the run's cost, in full precision on one device.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

from paramscope.errors import StudyError
from paramscope.models.objective import (
    GRADIENT_CLIP,
    next_token_loss,
    optimizer_and_schedule,
)
from paramscope.models.zoo import save_model

log = logging.getLogger(__name__)

TWIN_SUFFIX = "-noise"


def twin_name(variant: str) -> str:
    return f"{variant}{TWIN_SUFFIX}"


def check_twin_start(cfg: DictConfig, name: str, models_dir: Path) -> Path:
    """Where the twin of `name` starts; refused before the variant trains when that cannot exist."""
    spec = cfg.train.variants[name]
    if spec.init is None:
        if not spec.get("save_step0", False):
            raise StudyError(f"the noise twin of '{name}' starts from its step-0 checkpoint; "
                             f"set train.variants.{name}.save_step0: true, or train.noise_twin: null")
        return models_dir / f"{name}-step0"
    start = models_dir / twin_name(spec.init)
    if not start.is_dir():
        raise StudyError(f"the noise twin of '{name}' starts from that of '{spec.init}', but {start} does not "
                         f"exist; train '{spec.init}' first, or set train.noise_twin: null")
    return start


@contextmanager
def _one_cpu_thread(device: str) -> Iterator[None]:
    """A batch of one is all per-operation overhead: a second CPU thread only waits on the first."""
    previous = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_noise_twin(cfg: DictConfig, name: str, models_dir: Path, steps: int) -> dict[str, float]:
    """Train and save `<name>-noise` for `steps` optimizer steps (the variant's own count)."""
    start = check_twin_start(cfg, name, models_dir)
    t = cfg.train
    batch_size, seq_len, device = (int(t.noise_twin.batch_size), int(t.noise_twin.get("seq_len") or t.seq_len),
                                   cfg.device)
    tokenizer = AutoTokenizer.from_pretrained(start)
    model = AutoModelForCausalLM.from_pretrained(start, attn_implementation=t.get("attn_implementation", "eager"))
    model.to(device).train()
    opt, sched = optimizer_and_schedule(model.parameters(), t.lr, t.weight_decay, tuple(t.get("betas", (0.9, 0.98))),
                                        t.warmup_steps, steps)
    tokens = torch.Generator().manual_seed(int(cfg.seed) + sum(map(ord, twin_name(name))))
    log.info("%s: noise twin from %s, %d steps of %d x %d random tokens", name, start.name, steps, batch_size, seq_len)
    began = time.perf_counter()
    with _one_cpu_thread(device):
        for step in range(steps):
            ids = torch.randint(0, len(tokenizer), (batch_size, seq_len + 1), generator=tokens).to(device)
            loss, _ = next_token_loss(model, ids, None)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRADIENT_CLIP)
            opt.step()
            sched.step()
            if (step + 1) % 1000 == 0:
                log.info("%s: noise twin step %d/%d loss %.4f", name, step + 1, steps, loss.item())
    seconds = time.perf_counter() - began
    provenance = {"noise_twin_of": name, "start": start.name, "steps": steps, "batch_size": batch_size,
                  "seq_len": seq_len, "seed": int(cfg.seed)}
    save_model(model.cpu().eval(), tokenizer, models_dir / twin_name(name), provenance)
    log.info("%s: noise twin done in %.1f s", name, seconds)
    return {f"{name}/noise_twin_s": seconds}
