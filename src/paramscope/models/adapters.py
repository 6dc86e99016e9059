"""One architecture adapter per model family: the only place that knows HF module names.

Ablation, transplant, VPS and structure code ask an adapter for a site (block, attention output
projection, MLP down projection, ...) instead of spelling `gpt_neox.layers.3.attention.dense`, so each
is written once for every family. Sites are dotted paths, so a family is a handful of strings, plus
what its block does (whether its residual is parallel).

The activations inside a block are named after TransformerLens's hook points (`blocks.{l}.hook_resid_pre`,
`blocks.{l}.attn.hook_z`, ...), and `Adapter.hook_point` says which module reads or writes each:

    resid_pre   [batch, pos, d_model]          the residual stream entering the block (its input)
    z           [batch, pos, n_heads, d_head]  per-head attention output before the output projection W_O;
                                               carried flat, [batch, pos, n_heads * d_head], as W_O's input
    attn_out    [batch, pos, d_model]          the attention sublayer's output (its first), W_O's output
    resid_mid   [batch, pos, d_model]          resid_pre + attn_out: the residual the MLP reads (through its
                                               norm) and adds to; sequential blocks only
    post        [batch, pos, d_ffn]            the MLP's hidden activations, input of its down projection
    mlp_out     [batch, pos, d_model]          the MLP sublayer's output
    resid_post  [batch, pos, d_model]          the block's output: resid_mid + mlp_out, or with a parallel
                                               residual resid_pre + attn_out + mlp_out
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D


def weight_in_out(module: nn.Module) -> torch.Tensor:
    """The weight of a projection as (d_out, d_in), whether `nn.Linear` or GPT-2's transposed `Conv1D`.

    It is a view of the parameter, so in-place edits (under `torch.no_grad()`) change the model.
    """
    if isinstance(module, nn.Linear):
        return module.weight
    if isinstance(module, Conv1D):
        return module.weight.T
    raise TypeError(f"expected nn.Linear or Conv1D, got {type(module).__name__}")


PIECES: tuple[str, ...] = ("resid_pre", "z", "attn_out", "resid_mid", "post", "mlp_out", "resid_post")


class HookPoint(NamedTuple):
    """Where a piece is: the input (`hidden_states`, the first argument) or the first output of `module`."""

    module: nn.Module
    is_input: bool


class Adapter:
    """Names the sites of one family; subclasses fill in the dotted paths below and override what their
    block does differently (`parallel_residual`).

    Sizes are read from the modules, not the config, so that they hold whatever the config calls them
    (and for Llama/Qwen2, whose `head_dim` need not be d_model / n_heads).
    """

    family: ClassVar[str]
    _blocks: ClassVar[str]  # from the model
    _embeddings: ClassVar[str]
    _final_norm: ClassVar[str]
    _attention: ClassVar[str]  # from a block
    _mlp: ClassVar[str]
    _mlp_norm: ClassVar[str]
    _attn_out_proj: ClassVar[str]  # from the attention module
    _mlp_down_proj: ClassVar[str]  # from the MLP module

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        self.n_layers = len(self.blocks())
        self.n_heads = model.config.num_attention_heads
        self.d_model = model.config.hidden_size
        d_attn = weight_in_out(self.attn_out_proj(0)).shape[1]
        if d_attn % self.n_heads:
            raise ValueError(f"attention output projection input {d_attn} is not divisible by {self.n_heads} heads")
        self.d_head = d_attn // self.n_heads
        self.d_ffn = weight_in_out(self.mlp_down_proj(0)).shape[1]

    def blocks(self) -> list[nn.Module]:
        return list(self.model.get_submodule(self._blocks))

    def block(self, layer: int) -> nn.Module:
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer {layer} out of range; {self.family} model has layers 0..{self.n_layers - 1}")
        return self.model.get_submodule(f"{self._blocks}.{layer}")

    def embeddings(self) -> nn.Module:
        """The token embedding (GPT-2/Neo also add a separate position embedding)."""
        return self.model.get_submodule(self._embeddings)

    def final_norm(self) -> nn.Module:
        return self.model.get_submodule(self._final_norm)

    def unembedding(self) -> nn.Module:
        return self.model.get_output_embeddings()

    def attention(self, layer: int) -> nn.Module:
        """The attention sublayer whose (first) output is added to the residual stream."""
        return self.block(layer).get_submodule(self._attention)

    def mlp(self, layer: int) -> nn.Module:
        return self.block(layer).get_submodule(self._mlp)

    def mlp_norm(self, layer: int) -> nn.Module:
        """The norm in front of the MLP; in a sequential block its input is resid_mid."""
        return self.block(layer).get_submodule(self._mlp_norm)

    def parallel_residual(self, layer: int) -> bool:
        """Whether attention and MLP both read the block input (resid_pre) and the block adds both outputs
        to it, rather than the MLP reading resid_mid."""
        return False

    def attn_out_proj(self, layer: int) -> nn.Module:
        """Heads are the d_head slices of this module's input (its output mixes all heads)."""
        return self.attention(layer).get_submodule(self._attn_out_proj)

    def mlp_down_proj(self, layer: int) -> nn.Module:
        """Neurons are the entries of this module's input."""
        return self.mlp(layer).get_submodule(self._mlp_down_proj)

    def fused_qkv_head(self, rows: np.ndarray) -> np.ndarray:
        """The head of each output row (an integer array) of a fused query/key/value projection with
        3 * n_heads * d_head outputs; the row order is the family's."""
        raise ValueError(f"the fused q/k/v layout of family '{self.family}' is unknown")

    def hook_point(self, piece: str, layer: int) -> HookPoint:
        """Where `piece` (one of `PIECES`, see the module docstring) of block `layer` is read."""
        if piece == "resid_mid" and self.parallel_residual(layer):
            raise ValueError(f"{self.family} block {layer} has a parallel residual: it has no resid_mid")
        where = {"resid_pre": (self.block, True), "z": (self.attn_out_proj, True), "attn_out": (self.attention, False),
                 "resid_mid": (self.mlp_norm, True), "post": (self.mlp_down_proj, True), "mlp_out": (self.mlp, False),
                 "resid_post": (self.block, False)}
        if piece not in where:
            raise ValueError(f"unknown piece '{piece}'; valid: {', '.join(PIECES)}")
        module_of, is_input = where[piece]
        return HookPoint(module_of(layer), is_input)

    def piece_shape(self, piece: str) -> tuple[int, ...]:
        """The dimensions of `piece` after [batch, pos] (z's per head; it is carried flat)."""
        shapes = {"z": (self.n_heads, self.d_head), "post": (self.d_ffn,)}
        if piece not in PIECES:
            raise ValueError(f"unknown piece '{piece}'; valid: {', '.join(PIECES)}")
        return shapes.get(piece, (self.d_model,))

    def linear_modules(self) -> dict[str, nn.Module]:
        """Every attention and MLP projection by full module name (no embeddings, norms or lm_head)."""
        found: dict[str, nn.Module] = {}
        for layer in range(self.n_layers):
            for sub_path, sub in ((self._attention, self.attention(layer)), (self._mlp, self.mlp(layer))):
                for name, module in sub.named_modules():
                    if isinstance(module, (nn.Linear, Conv1D)):
                        found[f"{self._blocks}.{layer}.{sub_path}.{name}"] = module
        return found


class GPTNeoXAdapter(Adapter):
    family = "gpt_neox"
    _blocks = "gpt_neox.layers"
    _embeddings = "gpt_neox.embed_in"
    _final_norm = "gpt_neox.final_layer_norm"
    _attention = "attention"
    _mlp = "mlp"
    _mlp_norm = "post_attention_layernorm"
    _attn_out_proj = "dense"
    _mlp_down_proj = "dense_4h_to_h"

    def parallel_residual(self, layer: int) -> bool:
        # the flag the block's own forward branches on (`config.use_parallel_residual`, default True)
        return bool(self.block(layer).use_parallel_residual)

    def fused_qkv_head(self, rows: np.ndarray) -> np.ndarray:
        return rows // (3 * self.d_head)  # per head, [q | k | v]


class GPTNeoAdapter(Adapter):
    family = "gpt_neo"
    _blocks = "transformer.h"
    _embeddings = "transformer.wte"
    _final_norm = "transformer.ln_f"
    _attention = "attn"
    _mlp = "mlp"
    _mlp_norm = "ln_2"
    _attn_out_proj = "attention.out_proj"
    _mlp_down_proj = "c_proj"


class LlamaAdapter(Adapter):
    """Llama and Qwen2 share one layout."""

    family = "llama"
    _blocks = "model.layers"
    _embeddings = "model.embed_tokens"
    _final_norm = "model.norm"
    _attention = "self_attn"
    _mlp = "mlp"
    _mlp_norm = "post_attention_layernorm"
    _attn_out_proj = "o_proj"
    _mlp_down_proj = "down_proj"


class Qwen2Adapter(LlamaAdapter):
    family = "qwen2"


class GPT2Adapter(Adapter):
    """GPT-2's projections are `Conv1D` with weight (d_in, d_out); use `weight_in_out`."""

    family = "gpt2"
    _blocks = "transformer.h"
    _embeddings = "transformer.wte"
    _final_norm = "transformer.ln_f"
    _attention = "attn"
    _mlp = "mlp"
    _mlp_norm = "ln_2"
    _attn_out_proj = "c_proj"
    _mlp_down_proj = "c_proj"

    def fused_qkv_head(self, rows: np.ndarray) -> np.ndarray:
        return (rows % (self.n_heads * self.d_head)) // self.d_head  # [q | k | v], each all heads in order


ADAPTERS: dict[str, type[Adapter]] = {
    cls.family: cls for cls in (GPT2Adapter, GPTNeoAdapter, GPTNeoXAdapter, LlamaAdapter, Qwen2Adapter)
}


def get_adapter(model: PreTrainedModel) -> Adapter:
    """The adapter for `model`'s family, chosen by `config.model_type`."""
    family = model.config.model_type
    if family not in ADAPTERS:
        raise ValueError(f"unsupported model family '{family}'; supported: {', '.join(sorted(ADAPTERS))}")
    return ADAPTERS[family](model)
