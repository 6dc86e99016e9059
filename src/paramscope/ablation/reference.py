"""Reference activations from the task's dev documents: what `mean` and `resample` write, what `noise` matches.

Each dev document contributes one reference sequence, the text the scorer reads for its gold answer:
its context (for multiple-input tasks, the gold choice's context) followed by the input tokens of its
gold continuation (every token but the last, which is only predicted; none where the answer is one
token). Its activations are aligned from the end of the context (`alignment`), so that
- `mean` writes at each position the mean over dev documents at the same end-aligned position: the
  last context token gets the mean over every document's last context token, the token k before it
  the mean over the documents whose context reaches that far, and the j-th continuation input token
  the mean over the gold continuations that have one (positions beyond every dev document take the
  farthest position they reach: the last context token's mean where no gold answer is longer than
  one token);
- `resample` writes the donor document's own activation at the same position (`resample`);
- `noise` keeps one std per site dimension, across dev documents at the last context position, the
  position whose output the scorer reads.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from paramscope.ablation.alignment import AlignedActivations
from paramscope.ablation.interventions import GROUPS, Site, record
from paramscope.ablation.resample import ResamplePool, token_key
from paramscope.evaluation.documents import Doc, MultiContextDoc
from paramscope.evaluation.loglikelihood import max_length
from paramscope.models.adapters import Adapter

# Resample donors come from at most this many dev documents, drawn by the seed: the pool keeps every
# position of every donor at every layer, which a large dev split would not fit in memory.
POOL_DOCS = 512


def reference_sequence(doc: Doc, window: int) -> tuple[tuple[int, ...], int]:
    """(tokens, context length) of a dev document's reference sequence, its context cut from the left to
    fit the model's window as the scorer cuts it."""
    context = doc.contexts[doc.gold] if isinstance(doc, MultiContextDoc) else doc.context
    continuation = tuple(doc.choices[doc.gold][:-1])
    context = tuple(context[-max(1, window - len(continuation)):])
    return (context + continuation)[:window], min(len(context), window)


@torch.inference_mode()
def _site_batches(adapter: Adapter, sequences: Sequence[tuple[int, ...]], group: str, batch_size: int
                  ) -> Iterator[tuple[list[int], dict[Site, Tensor]]]:
    """(indices, {site: (batch, positions, site width)}) of every layer's `group` site along `sequences`, in
    batches of similar length, right-padded (real positions never see the pads)."""
    if group not in GROUPS:
        raise ValueError(f"reference activations need an activation group ({', '.join(GROUPS)}); got '{group}'")
    if not sequences:
        raise ValueError("reference activations need at least one reference document")
    dev = next(adapter.model.parameters()).device
    sites = [(group, layer) for layer in range(adapter.n_layers)]
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start: start + batch_size]
        ids = torch.zeros(len(idx), max(len(sequences[i]) for i in idx), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(idx):
            ids[row, : len(sequences[i])] = torch.tensor(sequences[i])
            mask[row, : len(sequences[i])] = 1
        with record(adapter, sites) as seen:
            adapter.model.base_model(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=False)
        yield idx, {site: seen[site][0] for site in sites}


def _references(adapter: Adapter, docs: Sequence[Doc]) -> tuple[list[tuple[int, ...]], list[int]]:
    window = max_length(adapter.model)
    pairs = [reference_sequence(d, window) for d in docs]
    return [tokens for tokens, _ in pairs], [n for _, n in pairs]


def last_context_activations(adapter: Adapter, docs: Sequence[Doc], group: str, batch_size: int = 64
                             ) -> dict[Site, Tensor]:
    """Each layer's ``group`` site at the last context position of every doc: (n docs, site width), in doc
    order (what `neuron_groups` clusters neurons by)."""
    sequences, n_context = _references(adapter, docs)
    rows: dict[Site, list[Tensor]] = {}
    for idx, acts in _site_batches(adapter, sequences, group, batch_size):
        ends = torch.tensor([n_context[i] - 1 for i in idx])
        for site, a in acts.items():
            picked = a[torch.arange(len(idx), device=a.device), ends.to(a.device)].double()
            found = rows.setdefault(site, [None] * len(docs))  # type: ignore[list-item]
            for row, i in enumerate(idx):
                found[i] = picked[row]
    return {site: torch.stack(found) for site, found in rows.items()}


def site_stats(adapter: Adapter, docs: Sequence[Doc], group: str, batch_size: int = 64
               ) -> tuple[AlignedActivations, dict[Site, Tensor]]:
    """The end-aligned mean of each layer's ``group`` site over ``docs`` (one sequence, as long as the
    longest context plus the longest gold continuation input), and each site dimension's std across
    ``docs`` at the last context position, (site width,) keyed by (group, layer)."""
    sequences, n_context = _references(adapter, docs)
    longest = max(n_context)
    size = longest + max(len(s) - n for s, n in zip(sequences, n_context))
    sums: dict[Site, Tensor] = {}
    counts = torch.zeros(size, dtype=torch.float64)
    last: dict[Site, list[Tensor]] = {}
    for idx, acts in _site_batches(adapter, sequences, group, batch_size):
        # row b's token s sits at offset n_b - 1 - s from its context end: mean index longest - n_b + s
        rows = torch.tensor([b for b, i in enumerate(idx) for _ in sequences[i]])
        tokens = torch.tensor([s for i in idx for s in range(len(sequences[i]))])
        target = torch.tensor([longest - n_context[i] for i in idx])[rows] + tokens
        counts.index_add_(0, target, torch.ones(len(target), dtype=torch.float64))
        ends = torch.tensor([n_context[i] - 1 for i in idx])
        for site, a in acts.items():
            device = a.device
            total = sums.setdefault(site, torch.zeros(size, a.shape[-1], dtype=torch.float64, device=device))
            total.index_add_(0, target.to(device), a[rows.to(device), tokens.to(device)].double())
            last.setdefault(site, []).append(a[torch.arange(len(idx), device=device), ends.to(device)].double())
    device = next(iter(sums.values())).device
    means = {site: (total / counts.to(device).unsqueeze(1)).float() for site, total in sums.items()}
    stds = {site: torch.cat(rows).std(0, correction=0).float() for site, rows in last.items()}
    one = torch.tensor([longest], device=device)
    return AlignedActivations(means, one, torch.tensor([size], device=device)), stds


def resample_pool(adapter: Adapter, docs: Sequence[Doc], group: str, seed: int, batch_size: int = 64,
                  max_docs: int = POOL_DOCS) -> ResamplePool:
    """The donors of `resample`: every position of each reference document's sequence (at most
    ``max_docs`` documents, drawn by the seed and kept in order), keyed by its context tokens."""
    if len(docs) > max_docs:
        docs = [docs[i] for i in np.sort(np.random.default_rng(seed).permutation(len(docs))[:max_docs])]
    sequences, n_context = _references(adapter, docs)
    lengths = torch.tensor([len(s) for s in sequences])
    starts = (torch.cumsum(lengths, 0) - lengths).tolist()
    flat: dict[Site, Tensor] = {}
    for idx, acts in _site_batches(adapter, sequences, group, batch_size):
        for site, a in acts.items():
            into = flat.setdefault(site, a.new_zeros(int(lengths.sum()), a.shape[-1], dtype=torch.float32))
            for row, i in enumerate(idx):
                into[starts[i]: starts[i] + len(sequences[i])] = a[row, : len(sequences[i])]
    device = next(iter(flat.values())).device
    aligned = AlignedActivations(flat, torch.tensor(n_context, device=device), lengths.to(device))
    return ResamplePool(aligned, [token_key(s[:n]) for s, n in zip(sequences, n_context)], seed)
