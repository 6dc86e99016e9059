"""Transplant in memory: W <- (1 - alpha) W_target + alpha W_donor on chosen modules, then restore.

Only the chosen modules' parameters (weight and bias) are touched, in place under `torch.no_grad()`;
their original values are saved first and copied back on exit, also on exceptions, so the target is
bit-exactly itself again and neither stored model is ever modified. The blend is written exactly as
(1 - alpha) W_t + alpha W_d: at alpha = 0 it is W_t and at alpha = 1 it is W_d to the bit (a lerp,
W_t + alpha (W_d - W_t), would round at alpha = 1).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import PreTrainedModel

from paramscope.models.zoo import save_model


def _parameters(model: PreTrainedModel, name: str) -> dict[str, torch.nn.Parameter]:
    module = model.get_submodule(name)
    return {key: p for key, p in module.named_parameters(recurse=False)}


@contextmanager
def transplanted(target: PreTrainedModel, donor: PreTrainedModel, names: Sequence[str], alpha: float
                 ) -> Iterator[PreTrainedModel]:
    """``target`` with each named module blended towards ``donor``'s by ``alpha``, for the block only."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1] (0 = target, 1 = the paper's copy), got {alpha}")
    saved: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for name in names:
                donor_params = _parameters(donor, name)
                for key, param in _parameters(target, name).items():
                    source = donor_params[key].to(param.device, param.dtype)
                    if source.shape != param.shape:
                        raise ValueError(f"{name}.{key}: donor shape {list(source.shape)} "
                                         f"!= target {list(param.shape)}")
                    saved.append((param, param.detach().clone()))
                    param.copy_((1.0 - alpha) * param + alpha * source)
        yield target
    finally:
        with torch.no_grad():
            for param, original in reversed(saved):
                param.copy_(original)


def export_transplant(target: PreTrainedModel, tokenizer, donor: PreTrainedModel, names: Sequence[str],
                      alpha: float, path: Path, provenance: dict) -> None:
    """Save a transplanted model as a Hugging Face directory (the target itself is left unchanged)."""
    with transplanted(target, donor, names, alpha):
        save_model(target, tokenizer, Path(path), {"transplant": {**provenance, "modules": list(names),
                                                                  "alpha": alpha}})
