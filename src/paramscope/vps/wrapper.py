"""Reversible VPS hooks on the Linear layers an architecture adapter names.

For a frozen Linear W (d_out x d_in) with input x the hook returns

    y = x W^T + b + gamma (x A) B^T,   A = W^T V (d_in x r),   B = W U (d_out x r),

i.e. Delta W = gamma (W U)(V^T W), without forming Delta W and without a second product with W: since V
is the one-hot output selector E_O, x A = x W^T E_O is the base output (bias removed) read at the
selected output channels, so the extra work per token is one (r x d_out) product.

Each rank-1 component c, B[:, c] A[:, c]^T, is clipped to Frobenius norm tau:
s_c = 1 / max(1, ||B[:, c]|| ||A[:, c]|| / tau); for the sparse builder that is
||W[:, i_c]|| ||W[o_c, :]|| / tau, as specified. The optional ``clamp`` bounds the perturbation of every
token to a fraction of that token's base output norm (our reading of "optional clamp").

The attention mask of each forward pass is captured by a forward pre-hook on the model's backbone, so
selection and the adaptive gamma see only a sequence's own real tokens, and of those only its context
where the scorer declares one (`evaluation.positions`): a choice scored in one sequence with its
context must not choose the channels or the gamma that score it. The perturbation so built applies to
every position; the entropy policy reads the base model at the last context position. A call that continues a key/value
cache would see only its new tokens, so it is refused: the scorer runs VPS with ``share_context=False``.
Leaving the context removes every hook; with ``enabled=False`` or gamma = 0 no hook is registered at
all, so the logits are the base model's, bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from paramscope.evaluation.kv_cache import passed_cache
from paramscope.evaluation.positions import current_context_lengths
from paramscope.models.adapters import Adapter, get_adapter, weight_in_out
from paramscope.vps.policy import Policy
from paramscope.vps.selection import Selection, build_selection, gather_channels

LAYER_SETS: tuple[str, ...] = ("attn", "mlp", "all")


@dataclass(frozen=True)
class VPSConfig:
    gamma: float = 0.1
    rank: int = 4
    builder: str = "sparse"
    layer_set: str = "all"  # attn | mlp | all | a projection name, e.g. dense_4h_to_h
    policy: str = "fixed"
    tau: float | None = 0.8  # per-rank-1 clip; None = no clip
    clamp: float | None = None  # per-token bound on ||delta|| / ||x W^T||; None = no clamp
    ridge: float = 1.0  # a in the coupled builder's ridge regression
    lo_ratio: float = 0.0  # adaptive policy: gamma_lo = lo_ratio * gamma
    enabled: bool = True

    @property
    def policy_obj(self) -> Policy:
        return Policy(self.policy, self.gamma, self.lo_ratio)

    @property
    def active(self) -> bool:
        return self.enabled and not self.policy_obj.off

    def as_dict(self) -> dict:
        return asdict(self)


def projection_names(adapter: Adapter) -> list[str]:
    """Leaf names of the projections (e.g. query_key_value, dense, dense_h_to_4h, dense_4h_to_h)."""
    return sorted({name.rsplit(".", 1)[-1] for name in adapter.linear_modules()})


def vps_modules(adapter: Adapter, layer_set: str) -> dict[str, nn.Module]:
    """The Linears a layer set names: every attention projection, every MLP projection, all, or one kind."""
    attn = {id(m) for layer in range(adapter.n_layers) for m in adapter.attention(layer).modules()}
    everything = adapter.linear_modules()
    if layer_set == "all":
        return everything
    if layer_set == "attn":
        return {n: m for n, m in everything.items() if id(m) in attn}
    if layer_set == "mlp":
        return {n: m for n, m in everything.items() if id(m) not in attn}
    chosen = {n: m for n, m in everything.items() if n.rsplit(".", 1)[-1] == layer_set}
    if not chosen:
        valid = [*LAYER_SETS, *projection_names(adapter)]
        raise ValueError(f"unknown VPS layer set '{layer_set}'; valid: {', '.join(valid)}")
    return chosen


def rank1_clip(b_norms: Tensor, a_norms: Tensor, tau: float | None) -> Tensor:
    """s_c = 1 / max(1, ||B[:, c]|| ||A[:, c]|| / tau): no rank-1 component exceeds Frobenius norm tau."""
    if tau is None:
        return torch.ones_like(b_norms)
    return 1.0 / torch.clamp(b_norms * a_norms / tau, min=1.0)


def perturbation(weight: Tensor, selection: Selection, y_lin: Tensor, gamma: Tensor, tau: float | None,
                 clamp: float | None = None) -> tuple[Tensor, Tensor]:
    """gamma (x A) B^T (B, S, d_out) from the base output y_lin = x W^T, and the clip scales s (B, r)."""
    b_cols = selection.mix.transpose(1, 2) @ weight.T[selection.in_idx]  # (B, r, d_out): B[:, c] = W U[:, c]
    a_norms = weight[selection.out_idx].norm(dim=-1)  # ||A[:, c]|| = ||W[o_c, :]||
    scale = rank1_clip(b_cols.norm(dim=-1), a_norms, tau)
    xa = gather_channels(y_lin, selection.out_idx)  # x A = x W^T V: reused, not recomputed
    delta = gamma.view(-1, 1, 1) * ((xa * scale.unsqueeze(1)) @ b_cols)
    if clamp is not None:
        ratio = delta.norm(dim=-1, keepdim=True) / y_lin.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        delta = delta / torch.clamp(ratio / clamp, min=1.0)
    return delta, scale


def sharpened_output(module: nn.Module, x: Tensor, output: Tensor, mask: Tensor, config: VPSConfig,
                     entropy: Tensor | None = None) -> tuple[Tensor, Selection, Tensor, Tensor]:
    """The wrapped Linear's output from its input and base output; also (selection, clip scales, gamma)."""
    weight = weight_in_out(module).detach().float()
    bias = getattr(module, "bias", None)
    xf, out = x.float(), output.float()
    y_lin = out - bias.detach().float() if bias is not None else out
    selection = build_selection(config.builder, xf, y_lin, mask, config.rank, config.ridge)
    gamma = config.policy_obj.gammas(xf, mask, entropy)
    delta, scale = perturbation(weight, selection, y_lin, gamma, config.tau, config.clamp)
    return (out + delta).to(output.dtype), selection, scale, gamma


class _PassState:
    """What the hooks of one forward pass share: the real-token mask and the base model's entropy."""

    def __init__(self) -> None:
        self.mask: Tensor | None = None
        self.entropy: Tensor | None = None
        self.base_pass = False  # True while the entropy pass runs the unmodified model


def last_real_position(mask: Tensor) -> Tensor:
    """Index of each row's last real token (right or left padding)."""
    return mask.shape[1] - 1 - mask.flip(1).argmax(1)


def _capture(model: nn.Module, state: _PassState, policy: Policy, backbone: nn.Module, args: tuple,
             kwargs: dict) -> None:
    if state.base_pass:
        return
    ids = kwargs.get("input_ids", args[0] if args else None)
    shape = ids.shape if ids is not None else kwargs["inputs_embeds"].shape[:2]
    mask = kwargs.get("attention_mask")
    device = next(backbone.parameters()).device
    n_context = current_context_lengths()
    if mask is not None and mask.dim() == 4:  # packed rows (evaluation.packing): only the declared context counts
        if n_context is None:
            raise RuntimeError("a 4D attention mask without declared context lengths: VPS cannot tell which "
                               "positions are context")
        mask = None
    mask = torch.ones(shape, dtype=torch.long, device=device) if mask is None else mask[:, -shape[1]:]
    if n_context is not None:  # statistics from the context only, never from the scored continuation
        if n_context.shape != (shape[0],):
            raise RuntimeError(f"context lengths for {tuple(n_context.shape)} rows, but the batch has {shape[0]}")
        mask = mask * (torch.arange(shape[1], device=device) < n_context.to(device).unsqueeze(1))
    state.mask = mask
    cache = passed_cache(kwargs)
    if cache is not None and cache.get_seq_length() > 0:
        raise RuntimeError("VPS selects over whole sequences, and a key/value cache hides the cached tokens; "
                           "score with share_context=False")
    if policy.needs_entropy:
        state.base_pass = True
        try:
            hidden = backbone(*args, **kwargs).last_hidden_state
        finally:
            state.base_pass = False
        last = hidden[torch.arange(shape[0], device=device), last_real_position(mask)]
        logp = F.log_softmax(model.get_output_embeddings()(last).float(), dim=-1)
        state.entropy = -(logp.exp() * logp).sum(-1)


def _sharpen(config: VPSConfig, state: _PassState, module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
    if state.base_pass:
        return None
    x = args[0]
    mask = state.mask if state.mask is not None and state.mask.shape == x.shape[:2] else x.new_ones(x.shape[:2])
    return sharpened_output(module, x, output, mask, config, state.entropy)[0]


@contextmanager
def sharpen(model: nn.Module, config: VPSConfig, adapter: Adapter | None = None) -> Iterator[dict[str, nn.Module]]:
    """Apply VPS to ``model`` inside the block (yields the wrapped modules); all hooks go on exit."""
    if not config.active:
        yield {}
        return
    adapter = adapter or get_adapter(model)
    modules = vps_modules(adapter, config.layer_set)
    state = _PassState()
    backbone = model.base_model
    handles = [backbone.register_forward_pre_hook(partial(_capture, model, state, config.policy_obj),
                                                  with_kwargs=True)]
    try:
        for module in modules.values():
            handles.append(module.register_forward_hook(partial(_sharpen, config, state)))
        yield modules
    finally:
        for handle in handles:
            handle.remove()
