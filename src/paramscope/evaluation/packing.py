"""Multi-token choices packed into one sequence per document, for batched exact scoring.

A document with multi-token choices is scored as lm-eval scores it, P(choice | context) for each
choice, but with the context encoded once: the packed row is the context followed by every choice
(each without its last token, which is only ever predicted), with

- position ids that restart after the context for each choice (choice k's tokens sit at context
  length, context length + 1, ... as if it were alone after the context), and
- a 4D attention mask in which a choice token sees the context and the earlier tokens of its own
  choice only, never another choice.

Every position then computes exactly what it computes in its own (context + choice) sequence, so
the log-likelihoods equal HFLM's up to float rounding; unlike a key/value cache shared per document,
rows of many documents batch together, and the ablation engine can branch them like any other rows.

`Readout` says where the choice tokens are read: for each scored token, which (row, position)
predicts it and into which (document, choice) its log-probability is summed. Single-token documents
read every choice at the last context position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from paramscope.evaluation.documents import Doc


@dataclass(frozen=True)
class Readout:
    """Where a batch's choice tokens are read, and where their log-probabilities go."""

    rows: Tensor  # (R,) row of each read position
    positions: Tensor  # (R,) position of each read
    target_read: Tensor  # (K,) the read that predicts each scored token
    target_token: Tensor  # (K,) the token's id
    target_slot: Tensor  # (K,) row * max_choices + choice: where its log-probability is summed
    n_choices: tuple[int, ...]  # per row

    @property
    def batch(self) -> int:
        return len(self.n_choices)

    def tiled(self, n: int) -> Readout:
        """The same reads for `n` stacked copies of the batch (row v*B + b is copy v of row b)."""
        if n == 1:
            return self
        b, r, width = self.batch, len(self.rows), max(self.n_choices)
        copies = torch.arange(n, device=self.rows.device)
        return Readout(
            rows=(self.rows + b * copies[:, None]).flatten(),
            positions=self.positions.repeat(n),
            target_read=(self.target_read + r * copies[:, None]).flatten(),
            target_token=self.target_token.repeat(n),
            target_slot=(self.target_slot + b * width * copies[:, None]).flatten(),
            n_choices=self.n_choices * n,
        )

    def choice_sums(self, read_log_probs: Tensor) -> Tensor:
        """(rows, max choices) summed choice log-likelihoods in float64 from the reads' log-probabilities
        (R, vocab), differentiable; slots past a row's last choice stay 0."""
        picked = read_log_probs[self.target_read, self.target_token].double()
        width = max(self.n_choices)
        sums = torch.zeros(self.batch * width, dtype=torch.float64, device=picked.device)
        return sums.index_add(0, self.target_slot, picked).reshape(self.batch, width)

    def log_likelihoods(self, read_log_probs: Tensor) -> np.ndarray:
        return self.choice_sums(read_log_probs).detach().cpu().numpy()

    def per_doc(self, lls: np.ndarray) -> list[np.ndarray]:
        return [lls[row, :n].copy() for row, n in enumerate(self.n_choices)]


def log_probs_at(final_norm, unembedding, hidden: Tensor, readout: Readout) -> Tensor:
    """Log-probabilities (R, vocab) at the read positions of the last block's output."""
    picked = hidden[readout.rows, readout.positions]
    return F.log_softmax(unembedding(final_norm(picked)).float(), dim=-1)


def is_multi_token(doc: Doc) -> bool:
    return any(len(c) != 1 for c in doc.choices)


def packed_length(doc: Doc) -> int:
    """Tokens of the document's row: its context alone when every choice is one token."""
    return len(doc.context) + sum(len(c) - 1 for c in doc.choices)


def packing_limit(model) -> int | None:
    """The longest packed row whose positions all compute what they would alone, or None for no limit.
    GPT-Neo's local attention layers cut their window by index in the row, not by position id, so a
    packed row must fit in that window; every other supported family attends by the mask alone."""
    config = model.config
    if config.model_type == "gpt_neo" and "local" in getattr(config, "attention_layers", ()):
        return int(config.window_size)
    return None


@dataclass(frozen=True)
class Batch:
    """Model inputs for a batch of documents, and where to read their choices.

    Single-token batches use the plain right-padded 2D mask (exactly what the scorer always ran);
    packed batches carry a 4D additive mask and explicit position ids."""

    ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor | None
    readout: Readout
    context_lengths: Tensor  # (B,) leading context positions of each row
    context_ids: Tensor  # (B, max context) right-padded contexts, for what keys on the context alone
    context_mask: Tensor

    @property
    def packed(self) -> bool:
        return self.position_ids is not None

    def model_inputs(self) -> dict[str, Tensor]:
        inputs = {"input_ids": self.ids, "attention_mask": self.attention_mask}
        if self.position_ids is not None:
            inputs["position_ids"] = self.position_ids
        return inputs


def _padded_contexts(docs: Sequence[Doc]) -> tuple[Tensor, Tensor]:
    lengths = [len(d.context) for d in docs]
    ids = torch.zeros(len(docs), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, d in enumerate(docs):
        ids[row, : lengths[row]] = torch.tensor(d.context)
        mask[row, : lengths[row]] = 1
    return ids, mask


def single_token_batch(docs: Sequence[Doc], device: torch.device) -> Batch:
    """Contexts right-padded; the last context position predicts every (one-token) choice."""
    ids, mask = _padded_contexts(docs)
    last = mask.sum(1) - 1
    n_choices = tuple(len(d.choices) for d in docs)
    width = max(n_choices)
    target_read = torch.tensor([row for row, d in enumerate(docs) for _ in d.choices])
    target_token = torch.tensor([c[0] for d in docs for c in d.choices])
    target_slot = torch.tensor([row * width + k for row, d in enumerate(docs) for k in range(len(d.choices))])
    readout = Readout(torch.arange(len(docs)), last, target_read, target_token, target_slot, n_choices)
    return Batch(ids.to(device), mask.to(device), None, _to(readout, device), (last + 1).to(device),
                 ids.to(device), mask.to(device))


def packed_batch(docs: Sequence[Doc], device: torch.device, dtype: torch.dtype) -> Batch:
    """Each document as one packed row (module docstring), right-padded; padding rows attend to themselves."""
    width = max(packed_length(d) for d in docs)
    ids = torch.zeros(len(docs), width, dtype=torch.long)
    positions = torch.zeros(len(docs), width, dtype=torch.long)
    allowed = torch.zeros(len(docs), width, width, dtype=torch.bool)
    rows, read_pos, target_read, target_token, target_slot = [], [], [], [], []
    max_choices = max(len(d.choices) for d in docs)
    for row, d in enumerate(docs):
        c = len(d.context)
        ids[row, :c] = torch.tensor(d.context)
        positions[row, :c] = torch.arange(c)
        allowed[row, :c, :c] = torch.ones(c, c, dtype=torch.bool).tril()
        last_read = len(rows)  # the last context position predicts every choice's first token
        rows.append(row)
        read_pos.append(c - 1)
        start = c
        for k, choice in enumerate(d.choices):
            n = len(choice) - 1  # tokens of this choice that are inputs
            end = start + n
            if n:
                ids[row, start:end] = torch.tensor(choice[:-1])
                positions[row, start:end] = torch.arange(c, c + n)
                allowed[row, start:end, :c] = True
                allowed[row, start:end, start:end] = torch.ones(n, n, dtype=torch.bool).tril()
            reads = [last_read] + list(range(len(rows), len(rows) + n))
            rows.extend([row] * n)
            read_pos.extend(range(start, end))
            target_read.extend(reads)
            target_token.extend(choice)
            target_slot.extend([row * max_choices + k] * len(choice))
            start = end
        allowed[row, start:, :].fill_(False)
        allowed[row, range(start, width), range(start, width)] = True  # padding: itself only
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    readout = Readout(torch.tensor(rows), torch.tensor(read_pos), torch.tensor(target_read),
                      torch.tensor(target_token), torch.tensor(target_slot), tuple(len(d.choices) for d in docs))
    context_ids, context_mask = _padded_contexts(docs)
    return Batch(ids.to(device), mask.unsqueeze(1).to(device), positions.to(device), _to(readout, device),
                 torch.tensor([len(d.context) for d in docs], device=device), context_ids.to(device),
                 context_mask.to(device))


def batch_of(docs: Sequence[Doc], device: torch.device, dtype: torch.dtype) -> Batch:
    """The batch of documents of one kind: packed rows if they have multi-token choices, else contexts."""
    if is_multi_token(docs[0]):
        return packed_batch(docs, device, dtype)
    return single_token_batch(docs, device)


def _to(readout: Readout, device: torch.device) -> Readout:
    return Readout(readout.rows.to(device), readout.positions.to(device), readout.target_read.to(device),
                   readout.target_token.to(device), readout.target_slot.to(device), readout.n_choices)
