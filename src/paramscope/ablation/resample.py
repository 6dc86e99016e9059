"""Resample ablation: a unit takes the activation it had on another example (STUDY.md section 3).

Each evaluated example gets one donor from a reference pool (the task's dev documents), chosen by a
seeded hash of the example's own tokens. The choice therefore never depends on which examples share
a batch or in what order they come, so results are the same at any batch size. The donor's
activation is the one at its last context position (as for `mean`), put at every position of the
example. An example never draws itself: a donor with exactly the example's tokens is skipped.

Donors are keyed on the context alone: for multi-token choices packed after their context
(`evaluation.packing`, which declares each row's context length) only the context tokens count, and
where the scorer runs the context once and the choices against its cache, the cached forward reuses
the donor drawn for the context. Every choice of a document sees the same donor.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from paramscope.evaluation.kv_cache import passed_cache
from paramscope.evaluation.positions import current_context_lengths

Site = tuple[str, int]


def token_key(tokens: Sequence[int] | Tensor) -> bytes:
    """A fixed-size fingerprint of a token sequence (the same for a list and a tensor of it)."""
    array = np.asarray(tokens.tolist() if isinstance(tokens, Tensor) else list(tokens), dtype=np.int64)
    return hashlib.blake2b(array.tobytes(), digest_size=16).digest()


@dataclass
class ResamplePool:
    """Reference activations per site, one row per pool example, and the donor rows of the current forward.

    `acts[(group, layer)]` has shape (n_pool, site width); `keys[i]` is `token_key` of pool example i.
    """

    acts: dict[Site, Tensor]
    keys: list[bytes]
    seed: int = 0
    rows: Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("a resample pool needs at least one reference example")
        for site, acts in self.acts.items():
            if acts.shape[0] != len(self.keys):
                raise ValueError(f"pool activations for {site} have {acts.shape[0]} rows; expected {len(self.keys)}")

    def donor(self, key: bytes) -> int:
        """The pool row that the example with fingerprint `key` takes its activations from."""
        salted = hashlib.blake2b(key, digest_size=8, key=self.seed.to_bytes(8, "little", signed=True)).digest()
        index = int.from_bytes(salted, "little") % len(self.keys)
        if self.keys[index] == key and len(self.keys) > 1:
            index = (index + 1) % len(self.keys)
        return index

    def choose_rows(self, input_ids: Tensor, attention_mask: Tensor | None, cached: bool) -> None:
        """Set `rows` for a forward pass: one donor per batch row from its real (unmasked) tokens."""
        if cached:
            if self.rows is None:
                raise RuntimeError("a cached forward came before any context was seen")
            self.rows = self.rows[:1].expand(input_ids.shape[0])
            return
        declared = current_context_lengths()
        if declared is not None:  # packed rows: the context is each row's leading positions
            self.rows = torch.tensor([self.donor(token_key(ids[:n])) for ids, n in zip(input_ids.cpu(), declared.cpu())])
            return
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        self.rows = torch.tensor([self.donor(token_key(ids[m.bool()])) for ids, m in zip(input_ids.cpu(), mask.cpu())])

    def pre_hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook on the base model: draw the donors before any site is reached."""
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            raise ValueError("resample ablation needs input_ids (inputs_embeds carry no token identity)")
        self.choose_rows(input_ids, kwargs.get("attention_mask"), passed_cache(kwargs) is not None)

    def donor_acts(self, site: Site, device: torch.device) -> Tensor:
        """(batch, site width): each row's donor activation at `site` for the current forward."""
        if self.rows is None:
            raise RuntimeError("no forward pass has chosen donors yet")
        return self.acts[site].to(device)[self.rows.to(device)]
