"""Which modules to transplant: the paper's activation-based choice and the controls it lacked.

Selection (STUDY.md section 5): each module's *activity* is the mean |output| at the last context
token over a workload of prompts (the task's dev contexts), measured with forward hooks on every
module at once, so each model runs over the workload once. Modules are ranked by how differently the
donor and the target use them:

- ``abs``: |activity_donor - activity_target|, the paper's "activation change";
- ``signed``: activity_donor - activity_target, modules the donor drives harder first.

Controls: ``random`` takes the first K of a seeded random order of all modules (so random sets are
nested in K, like the top-K sets); ``layer_random`` draws, in every layer, as many modules as a
selected set has there, uniformly among that layer's modules.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from paramscope.evaluation.documents import Doc
from paramscope.evaluation.packing import single_token_batch
from paramscope.transplant.modules import Module

RANKINGS: tuple[str, ...] = ("abs", "signed")


@torch.inference_mode()
def module_activity(model, modules: Sequence[Module], docs: Sequence[Doc], batch_size: int = 64) -> np.ndarray:
    """Mean over ``docs`` of mean |output| of each module at the last context token, shape (len(modules),).

    Batches are right-padded, so a row's last real position never attends to padding.
    """
    if not docs:
        raise ValueError("module activity needs at least one workload document")
    dev = next(model.parameters()).device
    totals = torch.zeros(len(modules), dtype=torch.float64)
    batch: dict[str, torch.Tensor] = {}  # the current batch's last context position of each row

    def recorder(i: int):
        def hook(_module, _inputs, output):
            rows = torch.arange(output.shape[0], device=output.device)
            totals[i] += output[rows, batch["last"]].abs().double().mean(-1).sum().cpu()
        return hook

    handles = [model.get_submodule(m.name).register_forward_hook(recorder(i)) for i, m in enumerate(modules)]
    try:
        order = sorted(range(len(docs)), key=lambda i: len(docs[i].context))
        for start in range(0, len(order), batch_size):
            contexts = single_token_batch([docs[i] for i in order[start:start + batch_size]], dev)
            batch["last"] = contexts.readout.positions
            model.base_model(**contexts.model_inputs(), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return (totals / len(docs)).numpy()


def rank_modules(donor_activity: np.ndarray, target_activity: np.ndarray, ranking: str) -> np.ndarray:
    """Module indices, most different first (ties keep registry order, so ranks are deterministic)."""
    diff = np.asarray(donor_activity, dtype=float) - np.asarray(target_activity, dtype=float)
    if ranking == "abs":
        score = np.abs(diff)
    elif ranking == "signed":
        score = diff
    else:
        raise ValueError(f"unknown ranking '{ranking}'; valid: {', '.join(RANKINGS)}")
    return np.argsort(-score, kind="stable")


def random_order(n_modules: int, seed: int, replicate: int) -> np.ndarray:
    """A seeded random order of all modules; its first K are the random-K control."""
    return np.random.default_rng([int(seed), int(replicate)]).permutation(n_modules)


def layer_matched(modules: Sequence[Module], chosen: Sequence[int], seed: int, replicate: int) -> np.ndarray:
    """Per layer, as many random modules of that layer as ``chosen`` has there (sorted indices)."""
    rng = np.random.default_rng([int(seed), int(replicate), 1])  # a stream apart from random_order's
    layers = np.array([m.layer for m in modules])
    wanted = np.bincount(layers[list(chosen)], minlength=layers.max() + 1)
    picked = [rng.choice(np.flatnonzero(layers == layer), size=count, replace=False)
              for layer, count in enumerate(wanted) if count]
    return np.sort(np.concatenate(picked)) if picked else np.array([], dtype=int)
