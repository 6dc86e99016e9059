"""End-aligned positions: where each position of a forward pass sits relative to the end of its context.

`mean` and `resample` write, at each position, a reference activation taken at the same *offset* from
the end of the context: offset 0 is the last context token (the position whose output predicts every
one-token choice and the first token of longer ones), 1 the token before it, and so on back to the
first context token; a choice (continuation) token fed as input has offset -j, j = 1, 2, ... its place
in the continuation. Offsets come from position ids and each row's context length, so they hold in
every layout the scorer and the engine run: right-padded contexts, packed rows whose choices restart
their positions after the context (`evaluation.packing`), a forward that continues a key/value cache.
Padding positions get offsets too; nothing real attends to them and nothing reads them.

`AlignedActivations` holds the reference side: site activations along reference sequences (a
context, then continuation input tokens), looked up by the same offsets.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import Tensor

from paramscope.evaluation.kv_cache import passed_cache
from paramscope.evaluation.packing import Batch
from paramscope.evaluation.positions import current_context_lengths

Site = tuple[str, int]  # (group, layer), as in `interventions`


def end_offsets(context_lengths: Tensor, position_ids: Tensor) -> Tensor:
    """(rows, positions): how far each position lies before its row's last context token (negative:
    after it, in a continuation). `position_ids` may be (1, T) for rows that share them."""
    return (context_lengths.to(position_ids.device) - 1).unsqueeze(1) - position_ids


_PICKED: ContextVar[tuple[Tensor, Tensor] | None] = ContextVar("paramscope_picked_positions", default=None)


@contextmanager
def picked_positions(rows: Tensor, positions: Tensor) -> Iterator[None]:
    """Inside, a site activation of (len(rows), 1) leading dims covers only (rows[i], positions[i]):
    the engine runs the last block's MLP at the read positions alone (`engine._mlp_at`)."""
    token = _PICKED.set((rows, positions))
    try:
        yield
    finally:
        _PICKED.reset(token)


def picked_rows(leading: tuple[int, ...]) -> Tensor | None:
    """The batch row of each site row where a site sees the picked read positions alone (leading dims
    (len(rows), 1)), so that a per-row gate can follow its row there; None elsewhere."""
    picked = _PICKED.get()
    if picked is not None and tuple(leading) == (len(picked[0]), 1):
        return picked[0]
    return None


@dataclass(frozen=True)
class Layout:
    """The rows of one forward pass: each position's end-aligned offset, each row's context length, and
    each row's context tokens, which key the resample donor (None where the forward continues the
    cached forward before it, whose rows it shares)."""

    offsets: Tensor  # (B, T)
    context_lengths: Tensor  # (B,)
    contexts: tuple[Tensor, ...] | None

    def view(self, shape: torch.Size) -> tuple[Tensor, Tensor]:
        """(the forward's row of each site row, their offsets) for a site activation whose leading dims
        are `shape`: the whole (B, T) grid, or the read positions alone (`picked_positions`)."""
        picked = _PICKED.get()
        if picked is not None and tuple(shape) == (len(picked[0]), 1):
            rows, positions = picked
            return rows, self.offsets[rows, positions].unsqueeze(1)
        if tuple(shape) != tuple(self.offsets.shape):
            raise RuntimeError(f"a site activation of {tuple(shape)} rows x positions in a forward of "
                               f"{tuple(self.offsets.shape)}: its positions cannot be aligned")
        return torch.arange(shape[0], device=self.offsets.device), self.offsets


def layout_of_batch(batch: Batch) -> Layout:
    """The layout of the engine's batch (its branches run blocks without the base model's forward)."""
    width = batch.ids.shape[1]
    positions = batch.position_ids if batch.packed else torch.arange(width, device=batch.ids.device).unsqueeze(0)
    lengths = batch.context_lengths
    contexts = tuple(ids[:n] for ids, n in zip(batch.context_ids, lengths.tolist()))
    return Layout(end_offsets(lengths, positions), lengths, contexts)


def layout_of_call(args: tuple, kwargs: dict) -> Layout:
    """The layout of a base model's forward, from its arguments. Context lengths are the scorer's
    declared ones (`evaluation.positions`) where it declared them, else every real token is context."""
    ids = kwargs.get("input_ids", args[0] if args else None)
    if ids is None:
        raise ValueError("mean and resample ablations need input_ids (inputs_embeds carry no token identity)")
    cache = passed_cache(kwargs)
    past = 0 if cache is None else int(cache.get_seq_length())
    positions = kwargs.get("position_ids")
    if positions is None:
        positions = torch.arange(past, past + ids.shape[1], device=ids.device).unsqueeze(0)
    mask = kwargs.get("attention_mask")
    declared = current_context_lengths()
    if declared is not None:
        lengths = declared.to(ids.device)
        contexts = tuple(row[:n] for row, n in zip(ids, lengths.tolist()))
    elif mask is None:
        lengths = torch.full((ids.shape[0],), past + ids.shape[1], device=ids.device)
        contexts = tuple(ids)
    elif mask.dim() == 2:
        lengths = mask.sum(1)
        contexts = tuple(row[m[-ids.shape[1]:].bool()] for row, m in zip(ids, mask))
    else:
        raise RuntimeError("a 4D attention mask without declared context lengths: positions cannot be aligned")
    return Layout(end_offsets(lengths, positions), lengths, None if past else contexts)


@dataclass(frozen=True)
class AlignedActivations:
    """Site activations along reference sequences, each a context then continuation input tokens.

    Sequence i is rows starts[i] .. starts[i] + lengths[i] - 1 of each site's (tokens, site width)
    tensor; its first context_lengths[i] tokens are its context. An offset beyond a sequence takes its
    nearest end: before the first token, the first token; after the last, the last.
    """

    acts: Mapping[Site, Tensor]
    context_lengths: Tensor  # (n sequences,)
    lengths: Tensor  # (n sequences,) context plus continuation tokens

    def __post_init__(self) -> None:
        if (self.lengths < self.context_lengths).any() or (self.context_lengths < 1).any():
            raise ValueError("every reference sequence needs a context of at least one token")
        for site, acts in self.acts.items():
            if acts.shape[0] != int(self.lengths.sum()):
                raise ValueError(f"activations for {site} have {acts.shape[0]} rows; the sequences have "
                                 f"{int(self.lengths.sum())} tokens")

    @property
    def n_sequences(self) -> int:
        return len(self.lengths)

    def at(self, site: Site, sequences: Tensor, offsets: Tensor, units: list[int], n_units: int) -> Tensor:
        """(B, T, len(units), unit width): sequence `sequences[b]`'s activation of `units` at each offset of row b."""
        acts = self.acts[site]
        device = acts.device
        sequences, offsets = sequences.to(device), offsets.to(device)
        starts = torch.cumsum(self.lengths.to(device), 0) - self.lengths.to(device)
        index = (self.context_lengths.to(device)[sequences] - 1).unsqueeze(1) - offsets
        index = torch.minimum(index.clamp(min=0), (self.lengths.to(device)[sequences] - 1).unsqueeze(1))
        per_unit = acts.unflatten(-1, (n_units, -1))
        return per_unit[(starts[sequences].unsqueeze(1) + index).unsqueeze(-1), torch.tensor(units, device=device)]
