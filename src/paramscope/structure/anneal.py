"""Structural annealing: remove the entries with the least evidence of learning, step by step.

A schedule of p-value thresholds p_1 > p_2 > ... (a rising evidence threshold -log10 p) removes, at step
s, every entry of the attention and MLP projections whose combined p-value (`null_test`) exceeds p_s, so
the removed sets are nested. After each step the model is scored on the dev documents of the tasks
(the study's scorer); the loss is the mean negative gold log-likelihood, averaged over tasks so that
each task weighs the same. Annealing stops at the first step whose loss differs from the dense model's
by more than the tolerance (in either direction: the point is to leave what the model computes
unchanged, not to improve it); the accepted state is the step before it. The whole schedule is still
evaluated so that the curve can be drawn past the stopping point.

The control is plain magnitude pruning: at each step's sparsity, the same number of entries with the
smallest |w| over all the same matrices (one global ranking, ties in a fixed order).

Entries are removed by zeroing them in place with `paramscope.ablation.weights.edited`, which saves only
the touched entries and writes them back on exit: the model is never copied and is bit-exactly itself
again after every step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from paramscope.ablation.weights import WeightUnit, edited
from paramscope.evaluation.documents import Scores
from paramscope.models.adapters import Adapter

Masks = dict[str, np.ndarray]  # matrix name -> boolean (d_out, d_in) array, True = removed
Evaluate = Callable[[], dict[str, Scores]]  # scores of the model as it is now, per task


def stored_indices(module: nn.Module, removed: np.ndarray) -> torch.Tensor:
    """Flat indices into `module.weight` as stored of a (d_out, d_in) mask (GPT-2's Conv1D is (d_in, d_out))."""
    stored = removed.T if isinstance(module, Conv1D) else removed
    return torch.from_numpy(np.flatnonzero(stored)).long()


@contextmanager
def masked(adapter: Adapter, removed: Masks):
    """The model with the `removed` entries zeroed, restored bit-exactly on exit."""
    modules = adapter.linear_modules()
    entries = {n: stored_indices(modules[n], m) for n, m in removed.items() if m.any()}
    with edited(adapter, WeightUnit("structure", -1, 0, "removed entries", entries), op="zero"):
        yield adapter


def loss_and_acc(scores: Mapping[str, Scores]) -> tuple[float, float]:
    """Task-averaged mean negative gold log-likelihood and accuracy."""
    return (float(np.mean([-s.gold_ll.mean() for s in scores.values()])),
            float(np.mean([s.correct.mean() for s in scores.values()])))


def threshold_masks(pvalues: Mapping[str, np.ndarray], threshold: float) -> Masks:
    """Every entry whose evidence of learning is weaker than the threshold (p > threshold)."""
    return {n: p > threshold for n, p in pvalues.items()}


def magnitude_masks(weights: Mapping[str, np.ndarray], n_remove: int) -> Masks:
    """The `n_remove` smallest |w| over all matrices together (stable order for ties)."""
    names = list(weights)
    magnitudes = np.concatenate([np.abs(weights[n]).ravel() for n in names])
    removed = np.zeros(magnitudes.size, dtype=bool)
    removed[np.argsort(magnitudes, kind="stable")[:n_remove]] = True
    out, start = {}, 0
    for n in names:
        out[n] = removed[start : start + weights[n].size].reshape(weights[n].shape)
        start += weights[n].size
    return out


def n_removed(masks: Masks) -> int:
    return int(sum(m.sum() for m in masks.values()))


@dataclass
class Step:
    method: str  # "anneal" or "magnitude"
    step: int
    threshold: float  # the p-value threshold of the annealing step (the magnitude control's is its twin's)
    n_removed: int
    sparsity: float  # fraction of all tested entries removed
    loss: float
    acc: float
    scores: dict[str, Scores]


@dataclass
class Annealing:
    dense: dict[str, Scores]
    steps: list[Step]  # anneal and magnitude steps, in schedule order
    tolerance: float

    def curve(self, method: str) -> list[Step]:
        return [s for s in self.steps if s.method == method]

    def accepted(self, method: str) -> Step | None:
        """The last step before the first one outside the tolerance (None: not even the first step)."""
        dense_loss, _ = loss_and_acc(self.dense)
        last = None
        for step in self.curve(method):
            if abs(step.loss - dense_loss) > self.tolerance:
                break
            last = step
        return last


def anneal(adapter: Adapter, pvalues: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray],
           thresholds: list[float], evaluate: Evaluate, tolerance: float) -> Annealing:
    """Run the schedule (thresholds strictly decreasing) and its magnitude control at equal sparsities."""
    if any(b >= a for a, b in pairwise(thresholds)):
        raise ValueError(f"thresholds must decrease strictly (a rising evidence threshold), got {thresholds}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    total = sum(p.size for p in pvalues.values())
    result = Annealing(evaluate(), [], tolerance)
    for index, threshold in enumerate(thresholds):
        removed = threshold_masks(pvalues, threshold)
        count = n_removed(removed)
        for method, masks in (("anneal", removed), ("magnitude", magnitude_masks(weights, count))):
            with masked(adapter, masks):
                scores = evaluate()
            loss, acc = loss_and_acc(scores)
            result.steps.append(Step(method, index, threshold, count, count / total, loss, acc, scores))
    return result
