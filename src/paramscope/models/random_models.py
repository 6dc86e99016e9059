"""Tiny randomly initialised models of every supported family, built locally (no downloads).

They exist so that adapters, interventions and fast exact maps can be tested on each family's real
module layout in seconds on a CPU.
"""

from __future__ import annotations

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoConfig,
    GPTNeoForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

FAMILIES: tuple[str, ...] = ("gpt2", "gpt_neo", "gpt_neox", "llama", "qwen2")

_D_MODEL, _N_HEADS, _D_FFN, _N_LAYERS, _N_POS = 32, 4, 64, 3, 128
# HF's default init (std 0.02, zero biases, unit norms) gives near-uniform logits, so an ablation
# could pass an exactness test by changing nothing; these scales make every parameter matter.
_WEIGHT_STD, _VECTOR_STD = 0.3, 0.1


def _config(family: str, vocab_size: int) -> tuple[type[PreTrainedModel], PretrainedConfig]:
    # special token ids must lie inside the tiny vocabulary (GPT-2/Neo default to 50256)
    tokens = dict(vocab_size=vocab_size, bos_token_id=0, eos_token_id=0)
    common = dict(**tokens, hidden_size=_D_MODEL, intermediate_size=_D_FFN)
    if family == "gpt2":
        return GPT2LMHeadModel, GPT2Config(
            **tokens, n_embd=_D_MODEL, n_layer=_N_LAYERS, n_head=_N_HEADS,
            n_inner=_D_FFN, n_positions=_N_POS,
        )
    if family == "gpt_neo":
        return GPTNeoForCausalLM, GPTNeoConfig(
            **common, num_layers=_N_LAYERS, num_heads=_N_HEADS, max_position_embeddings=_N_POS,
            attention_types=[[["global", "local"], 1], [["global"], 1]], window_size=4,
        )
    if family == "gpt_neox":
        return GPTNeoXForCausalLM, GPTNeoXConfig(
            **common, num_hidden_layers=_N_LAYERS, num_attention_heads=_N_HEADS,
            max_position_embeddings=_N_POS, use_parallel_residual=True, attention_bias=True,
        )
    if family in ("llama", "qwen2"):
        cls, config_cls = (LlamaForCausalLM, LlamaConfig) if family == "llama" else (Qwen2ForCausalLM, Qwen2Config)
        # grouped-query attention (2 kv heads) so head slicing is tested where n_kv != n_heads
        return cls, config_cls(
            **common, num_hidden_layers=_N_LAYERS, num_attention_heads=_N_HEADS, num_key_value_heads=2,
            max_position_embeddings=_N_POS, tie_word_embeddings=False,
        )
    raise ValueError(f"unsupported model family '{family}'; supported: {', '.join(FAMILIES)}")


def tiny_random_model(family: str, seed: int = 0, vocab_size: int = 64, **overrides) -> PreTrainedModel:
    """A 3-layer, 4-head, d_model 32 model of `family` in eval mode with eager attention; `overrides` set
    config fields (e.g. `use_parallel_residual=False` for a sequential GPT-NeoX).

    The global RNG is left untouched so that building a model never shifts other random streams.
    """
    cls, config = _config(family, vocab_size)
    for name, value in overrides.items():
        if not hasattr(config, name):  # a misspelt field would be stored and silently ignored
            raise ValueError(f"{type(config).__name__} has no field '{name}'")
        setattr(config, name, value)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls._from_config(config, attn_implementation="eager", dtype=torch.float32)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.dim() >= 2:
                    param.normal_(0.0, _WEIGHT_STD)
                elif name.endswith("bias"):
                    param.normal_(0.0, _VECTOR_STD)
                else:
                    param.normal_(1.0, _VECTOR_STD)
    return model.eval()
