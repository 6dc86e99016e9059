"""Resample ablation: a unit takes the activations it had on another example (STUDY.md section 3).

Each evaluated example gets one donor from a reference pool (the task's dev documents), chosen by a
seeded hash of the example's own context tokens. The choice therefore never depends on which examples
share a batch or in what order they come, so results are the same at any batch size. At every position
the unit takes the donor's activation at the same end-aligned position (`alignment`): the example's
last context token gets the donor's last context token, the one before it the donor's one before
it, and so on; a choice token fed as input gets the donor's activation at the same place in the
donor's gold continuation (its last one past the end of it; its last context token where the gold
answer is one token).

Donors are drawn among the pool documents whose context is at least as long as the example's, so that
every context position has a donor position of its own; an example longer than every pool context
draws among the longest ones, and its positions before the donor's first token take that first
token's activation. An example never draws itself: a donor with exactly the example's context is
skipped.

Donors are keyed on the context alone: for multi-token choices packed after their context
(`evaluation.packing`, which declares each row's context length) only the context tokens count, so
every choice of a document sees the same donor, packed or scored as a sequence of its own (a
multiple-input document, one context per choice, draws one donor per context). Where the
scorer runs the context once and the choices against its cache (GPT-Neo documents too long to pack),
the first forward holds the context without its last token, which keys the donor there; the cached
forward reuses that donor. It is still fixed by the document's tokens alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from paramscope.ablation.alignment import AlignedActivations, Layout


def token_key(tokens: Sequence[int] | Tensor) -> bytes:
    """A fixed-size fingerprint of a token sequence (the same for a list and a tensor of it)."""
    array = np.asarray(tokens.tolist() if isinstance(tokens, Tensor) else list(tokens), dtype=np.int64)
    return hashlib.blake2b(array.tobytes(), digest_size=16).digest()


@dataclass
class ResamplePool:
    """The donors: every pool document's site activations along its context and gold continuation
    (`sequences`, one sequence per document), and `keys[i]`, the `token_key` of document i's context."""

    sequences: AlignedActivations
    keys: list[bytes]
    seed: int = 0
    _lengths: np.ndarray = field(init=False, repr=False)
    # the same rows recur per unit
    _drawn: dict[tuple[bytes, int], int] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("a resample pool needs at least one reference example")
        if self.sequences.n_sequences != len(self.keys):
            raise ValueError(f"the pool has {self.sequences.n_sequences} sequences for {len(self.keys)} keys")
        self._lengths = self.sequences.context_lengths.cpu().numpy()

    def donor(self, key: bytes, context_length: int) -> int:
        """The pool document that the example with context fingerprint `key` and `context_length` tokens
        takes its activations from (see the module docstring)."""
        if (key, context_length) not in self._drawn:
            eligible = np.flatnonzero(self._lengths >= min(context_length, int(self._lengths.max())))
            salt = self.seed.to_bytes(8, "little", signed=True)
            draw = int.from_bytes(hashlib.blake2b(key, digest_size=8, key=salt).digest(), "little") % len(eligible)
            if self.keys[eligible[draw]] == key and len(eligible) > 1:
                draw = (draw + 1) % len(eligible)
            self._drawn[(key, context_length)] = int(eligible[draw])
        return self._drawn[(key, context_length)]

    def donors(self, layout: Layout) -> Tensor:
        """(B,): each row's donor document, from its context tokens and length."""
        if layout.contexts is None:
            raise ValueError("a forward that continues a cache has no context of its own to draw donors for")
        return torch.tensor([self.donor(token_key(ctx), int(n))
                             for ctx, n in zip(layout.contexts, layout.context_lengths.tolist())])
