"""A fast, exact multiple-choice log-likelihood scorer.

Two savings over scoring every (context, choice) string separately, as lm-eval's HFLM does:
- each context is encoded once for all its choices (when every choice is one token, one forward
  pass of the context gives them all; otherwise the document is packed into one row, `packing`);
- only the positions that predict continuation tokens are unembedded, not the whole sequence.
The numbers equal HFLM's log-likelihoods; a test checks the accuracies are identical.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

from paramscope.evaluation.documents import ContinuationDoc, Doc, MultiContextDoc, Scores, docs_metric
from paramscope.evaluation.forward import final_hidden, model_device, unembed_log_probs
from paramscope.evaluation.kv_cache import cache_argument, output_cache
from paramscope.evaluation.loglikelihood import score_choice_sequences, score_continuations, score_multiple_input
from paramscope.evaluation.packing import batch_of, log_probs_at, packed_length, packing_limit
from paramscope.evaluation.positions import context_lengths


@torch.inference_mode()
def _score_batched(model, docs: list[Doc], batch_size: int) -> list[np.ndarray]:
    """Choice log-likelihoods of `docs` (all of one kind) in batches of similar length: one-token choices
    read at the last context position of right-padded contexts; multi-token choices packed one row per
    document (`packing`), the context encoded once for all its choices."""
    param = next(model.parameters())
    out: list[np.ndarray] = [None] * len(docs)  # type: ignore[list-item]
    order = sorted(range(len(docs)), key=lambda i: packed_length(docs[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = batch_of([docs[i] for i in idx], param.device, param.dtype)
        # Packed rows hold choice tokens after the context: hooks that must see the context alone are told where
        # it ends.
        with context_lengths(batch.context_lengths) if batch.packed else nullcontext():
            hidden = model.base_model(**batch.model_inputs(), use_cache=False).last_hidden_state
        logp = log_probs_at(nn.Identity(), model.get_output_embeddings(), hidden, batch.readout)
        for i, ll in zip(idx, batch.readout.per_doc(batch.readout.log_likelihoods(logp))):
            out[i] = ll
    return out


@torch.inference_mode()
def score_shared_context(model, doc: Doc) -> np.ndarray:
    """Multi-token choices of a document too long to pack (`packing.packing_limit`): encode the context
    once, then all choices against its cached keys/values."""
    dev = model_device(model)
    ctx = torch.tensor([doc.context], device=dev)
    # The last context token predicts the first choice token, so it goes with the choices.
    prefix, first = ctx[:, :-1], ctx[:, -1:]
    n = len(doc.choices)
    width = 1 + max(len(c) for c in doc.choices)
    ids = torch.zeros(n, width, dtype=torch.long, device=dev)
    cmask = torch.zeros(n, width, dtype=torch.long, device=dev)
    for row, choice in enumerate(doc.choices):
        ids[row, 0] = first[0, 0]
        ids[row, 1 : 1 + len(choice)] = torch.tensor(choice, device=dev)
        cmask[row, : 1 + len(choice)] = 1
    base = model.base_model
    # Both forwards declare the whole context's length (it ends inside the first, and the second's rows
    # start with its last token), so that hooks see where each position sits relative to it.
    if prefix.shape[1] > 0:
        with context_lengths(torch.tensor([len(doc.context)], device=dev)):
            cache = output_cache(base(input_ids=prefix, use_cache=True))
        cache.batch_repeat_interleave(n)
        mask = torch.cat([torch.ones(n, prefix.shape[1], dtype=torch.long, device=dev), cmask], dim=1)
        positions = torch.arange(prefix.shape[1], prefix.shape[1] + width, device=dev).expand(n, -1)
        with context_lengths(torch.full((n,), len(doc.context), device=dev)):
            hidden = base(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                          **{cache_argument(base): cache}).last_hidden_state
    else:
        with context_lengths(torch.ones(n, dtype=torch.long, device=dev)):
            hidden = final_hidden(model, ids, cmask)
    lls = np.empty(n)
    for row, choice in enumerate(doc.choices):
        # Unembed only the positions that predict this choice's tokens.
        logp = unembed_log_probs(model, hidden[row, : len(choice)])
        lls[row] = logp[torch.arange(len(choice)), torch.tensor(choice, device=dev)].double().sum().item()
    return lls


def score(model, docs: list[Doc] | tuple[Doc, ...], batch_size: int = 64, share_context: bool = True) -> Scores:
    """Log-likelihood of every choice of every doc under ``model`` (with any hooks it carries).

    Documents of a loglikelihood task (`documents.ContinuationDoc`) are scored as lm-eval scores
    them (log-likelihood and greedy match of the one continuation), in their own module.
    ``share_context=False`` scores each multi-token choice as a whole sequence of its own, for hooks
    whose statistics span the sequence (VPS), which a shared key/value cache would split in two.
    """
    docs = list(docs)
    for kind, scorer in ((ContinuationDoc, score_continuations), (MultiContextDoc, score_multiple_input)):
        n_kind = sum(isinstance(d, kind) for d in docs)
        if n_kind:
            if n_kind != len(docs):
                raise ValueError(f"{kind.__name__} documents cannot be scored together with other kinds")
            return scorer(model, docs, batch_size)
    single = [i for i, d in enumerate(docs) if all(len(c) == 1 for c in d.choices)]
    multi = sorted(set(range(len(docs))) - set(single))
    lls: list[np.ndarray] = [None] * len(docs)  # type: ignore[list-item]
    if single:
        for i, ll in zip(single, _score_batched(model, [docs[i] for i in single], batch_size)):
            lls[i] = ll
    if share_context:
        limit = packing_limit(model)
        packable = [i for i in multi if limit is None or packed_length(docs[i]) <= limit]
        if packable:
            for i, ll in zip(packable, _score_batched(model, [docs[i] for i in packable], batch_size)):
                lls[i] = ll
        for i in sorted(set(multi) - set(packable)):
            lls[i] = score_shared_context(model, docs[i])
    elif multi:
        pairs = [[(docs[i].context, choice) for choice in docs[i].choices] for i in multi]
        for i, ll in zip(multi, score_choice_sequences(model, pairs, batch_size)):
            lls[i] = ll
    return Scores(
        doc_ids=np.array([d.doc_id for d in docs]),
        lls=lls,
        gold=np.array([d.gold for d in docs]),
        choice_chars=[np.array(d.choice_chars, dtype=np.float64) for d in docs],
        metric=docs_metric(docs),
    )
