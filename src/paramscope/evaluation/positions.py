"""Which positions of a scored sequence are its context, for hooks whose statistics must not see the answer.

When a choice is scored as one sequence with its context (HFLM's way, `share_context=False`), a hook
that averages over the sequence (VPS's channel selection and adaptive gamma) would read the very tokens
whose likelihood is being scored, and the score would no longer be P(choice | context). The scorer
therefore declares, for each forward pass of such sequences, how many leading positions of each row
are context; hooks read it with `current_context_lengths()` (None where every real position is context).
The count runs from the sequence's first position (position id 0): a forward that stops inside the
context, or continues it from a key/value cache, declares the whole context's length (mean and
resample ablations align positions from the context's end with it, `ablation.alignment`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from torch import Tensor

_CONTEXT_LENGTHS: ContextVar[Tensor | None] = ContextVar("paramscope_context_lengths", default=None)


@contextmanager
def context_lengths(lengths: Tensor) -> Iterator[None]:
    """Inside the block, row b of every forward pass has `lengths[b]` leading context positions."""
    token = _CONTEXT_LENGTHS.set(lengths)
    try:
        yield
    finally:
        _CONTEXT_LENGTHS.reset(token)


def current_context_lengths() -> Tensor | None:
    return _CONTEXT_LENGTHS.get()
