"""Loglikelihood tasks (lm-eval `output_type: loglikelihood`, e.g. lambada_openai): one continuation
per document, scored as lm-eval's HFLM scores it. Also the multiple-choice tasks whose choices sit in
the context (lm-eval `multiple_input`, e.g. winogrande): one (context, continuation) request per choice.

Per document lm-eval returns ``(ll, is_greedy)``: ``ll`` the summed log-probability of the
continuation's tokens given the context, ``is_greedy`` whether every continuation token is the argmax of
the model's distribution at its position. The task's metrics are ``acc`` = mean is_greedy and
``perplexity`` = exp(-mean ll). Here, as in the multiple-choice scorer, only the positions that predict
continuation tokens are unembedded, and contexts longer than the model's window are cut from the left
exactly as HFLM cuts them.
"""

from __future__ import annotations

import numpy as np
import torch

from paramscope.evaluation.documents import ContinuationDoc, ContinuationScores, MultiContextDoc, Scores, docs_metric
from paramscope.evaluation.forward import final_hidden, model_device, unembed_log_probs
from paramscope.evaluation.positions import context_lengths

# HFLM's fallback when the model's config names no window
DEFAULT_MAX_LENGTH = 2048


def score_multiple_input(model, docs: list[MultiContextDoc] | tuple[MultiContextDoc, ...],
                         batch_size: int = 64) -> Scores:
    """Every choice's (context, continuation) log-likelihood, as lm-eval's `multiple_input` scoring."""
    return Scores(
        doc_ids=np.array([d.doc_id for d in docs]),
        lls=score_choice_sequences(model, [list(zip(d.contexts, d.choices)) for d in docs], batch_size),
        gold=np.array([d.gold for d in docs]),
        choice_chars=[np.array(d.choice_chars, dtype=np.float64) for d in docs],
        metric=docs_metric(docs),
    )


def score_choice_sequences(model, pairs_per_doc: list[list[tuple[tuple[int, ...], tuple[int, ...]]]],
                           batch_size: int = 64) -> list[np.ndarray]:
    """Each document's (context, choice) pairs, every pair scored as a sequence of its own (HFLM's way)."""
    requests = [ContinuationDoc(k, ctx, (choice,), (1,), 0)
                for k, (ctx, choice) in enumerate(pair for pairs in pairs_per_doc for pair in pairs)]
    flat = score_continuations(model, requests, batch_size).gold_ll
    return np.split(flat, np.cumsum([len(pairs) for pairs in pairs_per_doc])[:-1])


def max_length(model) -> int:
    """The model's window as HFLM reads it from the config."""
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(model.config, attr, None)
        if value:
            return int(value)
    return DEFAULT_MAX_LENGTH


@torch.inference_mode()
def score_continuations(model, docs: list[ContinuationDoc] | tuple[ContinuationDoc, ...],
                        batch_size: int = 64) -> ContinuationScores:
    """(ll, is_greedy) of every document's continuation under ``model`` (with any hooks it carries)."""
    docs = list(docs)
    dev = model_device(model)
    window = max_length(model)
    lls = np.empty(len(docs))
    greedy = np.zeros(len(docs), dtype=bool)
    # HFLM's input: (context + continuation)[-(window + 1):][:-1]; the continuation is predicted by the
    # last len(continuation) positions of it.
    inputs = [(d.context + d.choices[0])[-(window + 1):][:-1] for d in docs]
    order = sorted(range(len(docs)), key=lambda i: -len(inputs[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(inputs[i]) for i in idx)
        ids = torch.zeros(len(idx), width, dtype=torch.long)
        mask = torch.zeros(len(idx), width, dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, : len(inputs[i])] = torch.tensor(inputs[i])
            mask[row, : len(inputs[i])] = 1
        # the input is context + continuation[:-1]: its first len - len(continuation) + 1 positions are context
        n_context = torch.tensor([len(inputs[i]) - len(docs[i].choices[0]) + 1 for i in idx], device=dev)
        with context_lengths(n_context):
            hidden = final_hidden(model, ids.to(dev), mask.to(dev))
        for row, i in enumerate(idx):
            cont = torch.tensor(docs[i].choices[0], device=dev)
            end = len(inputs[i])
            logp = unembed_log_probs(model, hidden[row, end - len(cont) : end])
            lls[i] = logp[torch.arange(len(cont), device=dev), cont].double().sum().item()
            greedy[i] = bool((logp.argmax(dim=-1) == cont).all())
    return ContinuationScores(
        doc_ids=np.array([d.doc_id for d in docs]),
        lls=[np.array([ll]) for ll in lls],
        gold=np.zeros(len(docs), dtype=np.int64),
        choice_chars=[np.array(d.choice_chars, dtype=np.float64) for d in docs],
        greedy=greedy,
    )
