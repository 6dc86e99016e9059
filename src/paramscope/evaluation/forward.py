"""The two halves of a causal LM's forward pass that the scorers use apart: the final hidden states
(after the final norm) and the unembedding at chosen positions only."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def final_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kw):
    """Final hidden states (after the final norm), without the unembedding."""
    out = model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kw)
    return out.last_hidden_state


def unembed_log_probs(model, hidden: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(model.get_output_embeddings()(hidden).float(), dim=-1)
