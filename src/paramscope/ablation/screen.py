"""A first-order screen (attribution patching) beside the exact maps, never in place of them.

Every unit of a group gets a multiplicative gate, 1 on the clean model (`interventions.gated`, one
gate row broadcast over the batch). One forward and one backward pass over the documents give
d metric / d gate for every unit at once; ablating a unit moves its gates from 1 to g (0 for
`zero`, alpha for `scale`), so the first-order estimate of the change in the metric is

    sum over the unit's gates of (g - 1) * d metric / d gate        (zero: -sum of the gradients)

A neuron block's estimate is the sum over its neurons (the first-order terms add).

Metric (per document, averaged over documents; the screen estimates its change, ablated minus
clean, so negative means the ablation hurts):
- ``gold_ll`` (default): the gold choice's log-likelihood, the quantity behind the maps'
  ``delta_loss`` (= minus the change in mean gold_ll);
- ``gold_logprob``: the gold choice's log-probability among the choices,
  gold_ll - logsumexp(choice lls), closer to what accuracy responds to.

Documents with multi-token choices are packed one row each, as the scorer packs them; those with one
context per choice (winogrande), or too long to pack, are scored as full context+choice sequences, each
choice after its own context (the same sums of token log-probabilities the scorer computes, with
gradients).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from paramscope.ablation.engine import gate_value
from paramscope.ablation.interventions import GROUPS, Site, UnitSpec, gated, n_units
from paramscope.ablation.units import unit_specs
from paramscope.evaluation.documents import Doc
from paramscope.evaluation.packing import batch_of, packed_length, packing_limit
from paramscope.models.adapters import Adapter

METRICS = ("gold_ll", "gold_logprob")


def _log_probs(model, hidden: Tensor) -> Tensor:
    logits = model.get_output_embeddings()(hidden)
    return F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)


def _batch_lls(model, docs: Sequence[Doc]) -> list[Tensor]:
    """Choice log-likelihoods (with gradients) of documents of one kind in one forward, as the scorer
    batches them: one-token choices at the last context position, multi-token ones packed
    (`evaluation.packing`)."""
    param = next(model.parameters())
    batch = batch_of(docs, param.device, param.dtype)
    hidden = model.base_model(**batch.model_inputs(), use_cache=False).last_hidden_state
    sums = batch.readout.choice_sums(_log_probs(model, hidden[batch.readout.rows, batch.readout.positions]))
    return [sums[row, : len(d.choices)] for row, d in enumerate(docs)]


def _choice_contexts(doc: Doc) -> tuple[tuple[int, ...], ...]:
    """The context each choice follows: its own for a multiple-context document (lm-eval
    `multiple_input`, e.g. winogrande), else the one shared context."""
    return getattr(doc, "contexts", None) or (doc.context,) * len(doc.choices)


def _full_sequence_lls(model, doc: Doc) -> Tensor:
    """Choice log-likelihoods (with gradients) of one document, each choice appended to its context."""
    dev = next(model.parameters()).device
    contexts = _choice_contexts(doc)
    seqs = [ctx + c for ctx, c in zip(contexts, doc.choices)]
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.tensor(s)
        mask[row, : len(s)] = 1
    hidden = model.base_model(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=False).last_hidden_state
    lls = []
    for row, (ctx, choice) in enumerate(zip(contexts, doc.choices)):
        positions = torch.arange(len(ctx) - 1, len(ctx) - 1 + len(choice), device=dev)
        logp = _log_probs(model, hidden[row, positions])
        lls.append(logp[torch.arange(len(choice), device=dev), torch.tensor(choice, device=dev)].sum())
    return torch.stack(lls)


def _doc_metric(lls: Tensor, gold: int, metric: str) -> Tensor:
    if metric == "gold_ll":
        return lls[gold]
    return lls[gold] - torch.logsumexp(lls, dim=0)


def _metric_sums(model, docs: Sequence[Doc], metric: str, batch_size: int) -> Iterator[Tensor]:
    """The metric summed over each batch of documents: one-token choices batched at the last context
    position, multi-token choices packed one row per document and batched, the rest (one context per
    choice, or rows too long to pack) one by one."""
    limit = packing_limit(model)

    def shared(d: Doc) -> bool:  # every choice follows one context
        return len(set(_choice_contexts(d))) == 1

    def single(d: Doc) -> bool:
        return shared(d) and all(len(c) == 1 for c in d.choices)

    def packed(d: Doc) -> bool:
        return shared(d) and not single(d) and (limit is None or packed_length(d) <= limit)

    for kind in (single, packed):
        chosen = sorted((d for d in docs if kind(d)), key=packed_length)
        for start in range(0, len(chosen), batch_size):
            batch = chosen[start : start + batch_size]
            yield torch.stack([_doc_metric(ll, d.gold, metric) for ll, d in zip(_batch_lls(model, batch), batch)]).sum()
    for d in docs:
        if not single(d) and not packed(d):
            yield _doc_metric(_full_sequence_lls(model, d), d.gold, metric)


@contextmanager
def _frozen(model) -> Iterator[None]:
    """Parameters stop requiring grad (gradients flow to the gates only, saving memory), then restored."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def gated_metric(
    adapter: Adapter, docs: Sequence[Doc], gates: Mapping[Site, Tensor] | None = None, metric: str = "gold_ll",
    batch_size: int = 64,
) -> float:
    """The mean metric over `docs` with `gates` applied (`interventions.gated`, rows broadcast over the
    batch, so shape (1, n_units)): the function whose gradient the screen takes."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric '{metric}'; valid: {', '.join(METRICS)}")
    with torch.no_grad(), gated(adapter, gates or {}):
        total = sum(float(s) for s in _metric_sums(adapter.model, docs, metric, batch_size))
    return total / len(docs)


def gate_gradients(
    adapter: Adapter, docs: Sequence[Doc], group: str, metric: str = "gold_ll", batch_size: int = 64
) -> np.ndarray:
    """d (mean metric) / d gate at gates 1, shape (n_layers, n_units of the group): one forward and one
    backward pass per batch of documents."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric '{metric}'; valid: {', '.join(METRICS)}")
    if group not in GROUPS:
        raise ValueError(f"unknown group '{group}'; valid: {', '.join(GROUPS)}")
    if adapter.model.training:
        raise ValueError("the model is in training mode: call .eval() first")
    docs = list(docs)
    if not docs:
        raise ValueError("no documents to screen")
    dev = next(adapter.model.parameters()).device
    count = n_units(adapter, group)
    gates = {(group, layer): torch.ones(1, count, device=dev, requires_grad=True) for layer in range(adapter.n_layers)}
    leaves = list(gates.values())
    grads = [torch.zeros(1, count, device=dev, dtype=torch.float64) for _ in leaves]
    with torch.enable_grad(), _frozen(adapter.model), gated(adapter, gates):
        for batch_sum in _metric_sums(adapter.model, docs, metric, batch_size):
            for acc, g in zip(grads, torch.autograd.grad(batch_sum / len(docs), leaves)):
                acc += g.double()
    return torch.cat(grads).cpu().numpy()


def attribution_screen(
    adapter: Adapter,
    docs: Sequence[Doc],
    group: str,
    neuron_block: int = 64,
    op: str = "zero",
    value: float = 0.0,
    metric: str = "gold_ll",
    batch_size: int = 64,
    specs: Sequence[UnitSpec] | None = None,
) -> np.ndarray:
    """First-order estimate of each unit's ablation effect on the mean `metric` (ablated minus clean),
    in `atlas.unit_specs(adapter, group, op, value, neuron_block)` order (or that of `specs`, all of
    `group`). Compare with the exact map (e.g. Spearman, recall@k), never report it in its place."""
    if specs is None:
        specs = list(unit_specs(adapter, group, op, value, neuron_block))
    grads = gate_gradients(adapter, docs, group, metric, batch_size)
    out = np.empty(len(specs))
    for k, spec in enumerate(specs):
        if spec.group != group:
            raise ValueError(f"spec {spec} is not of group '{group}'")
        units = list(spec.units) or [0]
        out[k] = (gate_value(spec.op, spec.value) - 1.0) * grads[spec.layer, units].sum()
    return out
