"""Adapters name the right sites with the right sizes for every family."""



import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from paramscope.models.adapters import PIECES, get_adapter, weight_in_out
from paramscope.models.random_models import FAMILIES, tiny_random_model


@pytest.fixture(scope="module", params=[*FAMILIES, "gpt_neox_sequential"])
def adapter(request):
    if request.param == "gpt_neox_sequential":
        return get_adapter(tiny_random_model("gpt_neox", use_parallel_residual=False))
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
    with pytest.raises(ValueError, match="GPTNeoXConfig has no field 'use_parallel_residuals'"):
        tiny_random_model("gpt_neox", use_parallel_residuals=False)


def test_tiny_random_model_is_seeded_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = (tiny_random_model("gpt2", seed=s) for s in (0, 0, 1))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not a.training
    pa, pb, pc = (dict(m.named_parameters()) for m in (a, b, c))
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert not all(torch.equal(pa[k], pc[k]) for k in pa)


# ------------------------------------------------------------------------- pieces of a block


def _pieces_of_one_forward(adapter, ids):
    """Every piece of every block that has it, read where `hook_point` says, on one forward of `ids`."""
    seen, handles = {}, []

    def keep(key, is_input):
        def on_input(module, args, kwargs):
            seen[key] = (args[0] if args else kwargs["hidden_states"]).detach()

        def on_output(module, args, output):
            seen[key] = (output[0] if isinstance(output, tuple) else output).detach()

        return on_input if is_input else on_output

    for layer in range(adapter.n_layers):
        for piece in PIECES:
            if piece == "resid_mid" and adapter.parallel_residual(layer):
                continue
            module, is_input = adapter.hook_point(piece, layer)
            if is_input:
                handles.append(module.register_forward_pre_hook(keep((piece, layer), True), with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(keep((piece, layer), False)))
    try:
        with torch.no_grad():
            adapter.model(input_ids=ids)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_parallel_residual_is_the_blocks_own():
    assert [get_adapter(tiny_random_model(f)).parallel_residual(0) for f in FAMILIES] == [
        f == "gpt_neox" for f in FAMILIES]  # the tiny GPT-NeoX is built with use_parallel_residual=True
    sequential = get_adapter(tiny_random_model("gpt_neox", use_parallel_residual=False))
    assert not any(sequential.parallel_residual(layer) for layer in range(sequential.n_layers))
    with pytest.raises(ValueError, match="parallel residual: it has no resid_mid"):
        get_adapter(tiny_random_model("gpt_neox")).hook_point("resid_mid", 0)


def test_every_piece_has_its_documented_shape_and_adds_up(adapter):
    """Each piece is [batch, pos, *piece_shape] (z carried flat), and the block's arithmetic is the one
    the module docstring states, so the pieces are where their names say."""
    batch, pos = 2, 7
    ids = torch.randint(0, 64, (batch, pos), generator=torch.Generator().manual_seed(0))
    seen = _pieces_of_one_forward(adapter, ids)
    assert [adapter.piece_shape(p) for p in PIECES] == [
        (adapter.d_model,), (adapter.n_heads, adapter.d_head), (adapter.d_model,), (adapter.d_model,),
        (adapter.d_ffn,), (adapter.d_model,), (adapter.d_model,)]
    for (piece, layer), x in seen.items():
        assert x.shape == (batch, pos, math.prod(adapter.piece_shape(piece))), (piece, layer)  # z is carried flat
    for layer in range(adapter.n_layers):
        def got(piece):
            return seen[(piece, layer)]

        # nothing follows the output projections inside their sublayers (dropout is off in eval mode)
        assert torch.equal(adapter.attn_out_proj(layer)(got("z")), got("attn_out"))
        assert torch.equal(adapter.mlp_down_proj(layer)(got("post")), got("mlp_out"))
        if layer + 1 < adapter.n_layers:
            assert torch.equal(got("resid_post"), seen[("resid_pre", layer + 1)])
        if adapter.parallel_residual(layer):
            expected = got("resid_pre") + got("attn_out") + got("mlp_out")
        else:
            torch.testing.assert_close(got("resid_mid"), got("resid_pre") + got("attn_out"), rtol=0, atol=1e-5)
            expected = got("resid_mid") + got("mlp_out")
        torch.testing.assert_close(got("resid_post"), expected, rtol=0, atol=1e-5)


def test_mlp_norm_feeds_the_mlp(adapter):
    seen = {}

    def norm_out(module, args, output):
        seen["norm"] = output

    def mlp_in(module, args, kwargs):
        seen["mlp_in"] = args[0] if args else kwargs["hidden_states"]

    layer = 1
    handles = [adapter.mlp_norm(layer).register_forward_hook(norm_out),
               adapter.mlp(layer).register_forward_pre_hook(mlp_in, with_kwargs=True)]
    try:
        with torch.no_grad():
            adapter.model(input_ids=torch.arange(1, 8)[None])
    finally:
        for handle in handles:
            handle.remove()
    assert torch.equal(seen["norm"], seen["mlp_in"])


def test_unknown_piece_is_named():
    adapter = get_adapter(tiny_random_model("gpt2"))
    for ask in (lambda: adapter.hook_point("hook_z", 0), lambda: adapter.piece_shape("hook_z")):
        with pytest.raises(ValueError, match="unknown piece 'hook_z'; valid: resid_pre, z, attn_out"):
            ask()


def test_fused_qkv_rows_map_to_heads_in_the_familys_order():
    neox, gpt2 = (get_adapter(tiny_random_model(f)) for f in ("gpt_neox", "gpt2"))
    rows = np.arange(3 * 4 * 8)  # 4 heads of 8
    per_head = np.repeat(np.arange(4), 3 * 8)  # GPT-NeoX: head 0's q, k, v, then head 1's ...
    np.testing.assert_array_equal(neox.fused_qkv_head(rows), per_head)
    np.testing.assert_array_equal(gpt2.fused_qkv_head(rows), np.tile(np.repeat(np.arange(4), 8), 3))  # q, k, v
    with pytest.raises(ValueError, match="fused q/k/v layout of family 'llama' is unknown"):
        get_adapter(tiny_random_model("llama")).fused_qkv_head(rows)
