"""How strongly to sharpen: a fixed gamma, or the adaptive policy of activation energy and entropy.

Adaptive (per sequence, per wrapped Linear): E = mean(h^2) over the Linear's input h on the sequence's
real tokens; sigma = 1 - exp(-E); sigma <- sigma ** min(1, H / 3) with H the token entropy in nats;
gamma = gamma_lo + (gamma_hi - gamma_lo) * sigma.

Our choices where the description is open:
- gamma_hi is the grid's ``gamma`` and gamma_lo = ``lo_ratio`` * gamma, so gamma = 0 turns the adaptive
  policy off as well (the reference's adaptive gamma ignored gamma = 0, so its baseline was not off).
- H is the entropy of the base model's next-token distribution at the sequence's last real token, the
  position whose prediction is scored. It is not known before the forward pass that uses it, so it
  comes from one extra forward pass of the unmodified model (counted in the measured overhead).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

MODES: tuple[str, ...] = ("fixed", "adaptive")


@dataclass(frozen=True)
class Policy:
    mode: str = "fixed"
    gamma: float = 0.1  # fixed gamma, or gamma_hi of the adaptive policy
    lo_ratio: float = 0.0  # adaptive: gamma_lo = lo_ratio * gamma
    entropy_scale: float = 3.0  # nats at which the entropy exponent reaches 1

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown VPS policy '{self.mode}'; valid: {', '.join(MODES)}")
        if self.gamma < 0 or not 0 <= self.lo_ratio <= 1:
            raise ValueError(f"VPS needs gamma >= 0 and 0 <= lo_ratio <= 1 (got {self.gamma}, {self.lo_ratio})")

    @property
    def off(self) -> bool:
        return self.gamma == 0.0

    @property
    def needs_entropy(self) -> bool:
        return self.mode == "adaptive" and not self.off

    def gammas(self, h: Tensor, mask: Tensor, entropy: Tensor | None) -> Tensor:
        """Per-sequence gamma (B,) for a Linear whose input is ``h`` (B, S, d_in)."""
        batch = h.shape[0]
        if self.mode == "fixed":
            return torch.full((batch,), self.gamma, dtype=h.dtype, device=h.device)
        m = mask.to(h.dtype)
        energy = (h.pow(2).mean(-1) * m).sum(1) / m.sum(1).clamp_min(1.0)
        sigma = 1.0 - torch.exp(-energy)
        if entropy is not None:
            sigma = sigma ** torch.clamp(entropy.to(h.dtype) / self.entropy_scale, max=1.0)
        lo = self.lo_ratio * self.gamma
        return lo + (self.gamma - lo) * sigma
