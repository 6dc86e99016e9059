"""Adapters name the right sites with the right sizes for every family."""



from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from paramscope.models.adapters import get_adapter, weight_in_out
from paramscope.models.random_models import FAMILIES, tiny_random_model


@pytest.fixture(scope="module", params=FAMILIES)
def adapter(request):
    return get_adapter(tiny_random_model(request.param))


def test_sizes(adapter):
    assert adapter.family == adapter.model.config.model_type
    assert (adapter.n_layers, adapter.n_heads, adapter.d_head, adapter.d_model, adapter.d_ffn) == (3, 4, 8, 32, 64)
    assert len(adapter.blocks()) == 3


def test_sites_have_expected_shapes(adapter):
    for layer in range(adapter.n_layers):
        assert weight_in_out(adapter.attn_out_proj(layer)).shape == (adapter.d_model, adapter.n_heads * adapter.d_head)
        assert weight_in_out(adapter.mlp_down_proj(layer)).shape == (adapter.d_model, adapter.d_ffn)
        assert adapter.attn_out_proj(layer) in list(adapter.attention(layer).modules())
        assert adapter.mlp_down_proj(layer) in list(adapter.mlp(layer).modules())
    assert adapter.embeddings() is adapter.model.get_input_embeddings()
    assert adapter.unembedding() is adapter.model.get_output_embeddings()
    assert adapter.final_norm().weight.shape == (adapter.d_model,)


def test_linear_modules_are_only_attention_and_mlp_projections(adapter):
    linears = adapter.linear_modules()
    named = dict(adapter.model.named_modules())
    assert all(named[name] is module for name, module in linears.items())
    assert all(isinstance(m, (nn.Linear, Conv1D)) for m in linears.values())
    excluded = {id(adapter.embeddings()), id(adapter.unembedding()), id(adapter.final_norm())}
    assert not excluded & {id(m) for m in linears.values()}
    every_projection = [m for m in adapter.model.modules() if isinstance(m, (nn.Linear, Conv1D))]
    assert len(linears) == len(every_projection) - 1  # all but lm_head
    for layer in range(adapter.n_layers):
        assert any(m is adapter.attn_out_proj(layer) for m in linears.values())
        assert any(m is adapter.mlp_down_proj(layer) for m in linears.values())


@pytest.mark.parametrize("module", [nn.Linear(3, 5), Conv1D(5, 3)], ids=["linear", "conv1d"])
def test_weight_in_out_is_a_writable_out_by_in_view(module):
    w = weight_in_out(module)
    assert w.shape == (5, 3)
    x = torch.randn(2, 3)
    assert torch.allclose(module(x), x @ w.T + module.bias, atol=1e-6)
    with torch.no_grad():
        w[:, 1] = 0
    assert torch.allclose(module(torch.tensor([[0.0, 1.0, 0.0]])), module.bias)


def test_weight_in_out_rejects_other_modules():
    with pytest.raises(TypeError, match="nn.Linear or Conv1D"):
        weight_in_out(nn.LayerNorm(3))


def test_unknown_family():
    model = SimpleNamespace(config=SimpleNamespace(model_type="bert"))
    with pytest.raises(ValueError) as err:
        get_adapter(model)
    assert str(err.value) == "unsupported model family 'bert'; supported: gpt2, gpt_neo, gpt_neox, llama, qwen2"
    with pytest.raises(ValueError, match="unsupported model family 'bert'"):
        tiny_random_model("bert")


def test_tiny_random_model_is_seeded_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = (tiny_random_model("gpt2", seed=s) for s in (0, 0, 1))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not a.training
    pa, pb, pc = (dict(m.named_parameters()) for m in (a, b, c))
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert not all(torch.equal(pa[k], pc[k]) for k in pa)
