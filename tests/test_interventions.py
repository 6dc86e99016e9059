"""Hook interventions equal the weight edits they stand for, and leave no trace behind."""



from collections.abc import Callable
from copy import deepcopy

import pytest
import torch
from torch import nn

from paramscope.ablation.alignment import AlignedActivations
from paramscope.ablation.interventions import UnitSpec, apply, gated, record
from paramscope.models.adapters import Adapter, get_adapter, weight_in_out
from paramscope.models.random_models import FAMILIES, tiny_random_model

ATOL = 1e-5


@pytest.fixture(scope="module", params=FAMILIES)
def setup(request):
    adapter = get_adapter(tiny_random_model(request.param))
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        clean = adapter.model(ids).logits
    return adapter, ids, clean


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def edited(adapter: Adapter, edit: Callable[[Adapter], None]) -> nn.Module:
    """A deepcopy of the model with `edit` applied to its weights: the reference a hook must match."""
    copy = get_adapter(deepcopy(adapter.model))
    with torch.no_grad():
        edit(copy)
    return copy.model


def hooked(adapter: Adapter, ids: torch.Tensor, *specs: UnitSpec, **kwargs) -> torch.Tensor:
    with apply(adapter, specs, **kwargs):
        return logits(adapter.model, ids)


def assert_matches(hooked_logits, reference_logits, clean):
    assert torch.allclose(hooked_logits, reference_logits, atol=ATOL)
    assert (hooked_logits - clean).abs().max() > 1e-3, "the intervention changed nothing: the test proves nothing"


def scale_projection(proj: nn.Module, alpha: float) -> None:
    """Scaling weight and bias scales the sublayer's whole contribution (for GPT-NeoX's parallel residual too)."""
    weight_in_out(proj).mul_(alpha)
    if proj.bias is not None:
        proj.bias.mul_(alpha)


def test_head_zero_equals_zeroed_input_columns(setup):
    adapter, ids, clean = setup
    d, h = adapter.d_head, 2
    reference = edited(adapter, lambda a: weight_in_out(a.attn_out_proj(1))[:, h * d : (h + 1) * d].zero_())
    assert_matches(hooked(adapter, ids, UnitSpec("heads", 1, (h,))), logits(reference, ids), clean)


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_head_scale_equals_scaled_input_columns(setup, alpha):
    adapter, ids, clean = setup
    d = adapter.d_head
    reference = edited(adapter, lambda a: weight_in_out(a.attn_out_proj(0))[:, d : 3 * d].mul_(alpha))
    assert_matches(hooked(adapter, ids, UnitSpec("heads", 0, (1, 2), "scale", alpha)), logits(reference, ids), clean)


def test_head_cut_is_on_the_input_not_the_output(setup):
    adapter, ids, _ = setup
    d = adapter.d_head

    def zero_output_rows(a: Adapter) -> None:
        proj = a.attn_out_proj(1)
        weight_in_out(proj)[:d].zero_()
        if proj.bias is not None:
            proj.bias[:d].zero_()

    wrong = logits(edited(adapter, zero_output_rows), ids)
    assert (hooked(adapter, ids, UnitSpec("heads", 1, (0,))) - wrong).abs().max() > 1e-3


def test_neuron_zero_equals_zeroed_down_proj_columns(setup):
    adapter, ids, clean = setup
    units = (3, 17, 40)

    def zero_columns(a: Adapter) -> None:
        weight_in_out(a.mlp_down_proj(2))[:, list(units)] = 0  # index assignment: a fancy-index read would copy

    reference = edited(adapter, zero_columns)
    assert_matches(hooked(adapter, ids, UnitSpec("neurons", 2, units)), logits(reference, ids), clean)


def test_neuron_mean_equals_folding_the_mean_into_the_bias(setup):
    """A mean that is the same at every position is a bias: the neurons' columns zeroed, W @ mean added."""
    adapter, ids, clean = setup
    units = [5, 9]
    with record(adapter, [("neurons", 1)]) as seen:
        logits(adapter.model, ids)
    mean = seen[("neurons", 1)][0].mean(dim=(0, 1))

    def fold(a: Adapter) -> None:
        proj, w = a.mlp_down_proj(1), weight_in_out(a.mlp_down_proj(1))
        if proj.bias is None:
            proj.bias = nn.Parameter(torch.zeros(w.shape[0]))
        proj.bias += w[:, units] @ mean[units]
        w[:, units] = 0

    spec = UnitSpec("neurons", 1, tuple(units), "mean")
    got = hooked(adapter, ids, spec, means=one_position(("neurons", 1), mean))
    assert_matches(got, logits(edited(adapter, fold), ids), clean)


def one_position(site, mean: torch.Tensor) -> AlignedActivations:
    """A mean reference of one context token: every position, at any offset, takes that one vector."""
    return AlignedActivations({site: mean.unsqueeze(0)}, torch.tensor([1]), torch.tensor([1]))


@pytest.mark.parametrize("group", ["attn", "mlp"])
@pytest.mark.parametrize(("op", "alpha"), [("zero", 0.0), ("scale", 0.5)])
def test_sublayer_equals_scaled_output_projection(setup, group, op, alpha):
    adapter, ids, clean = setup

    def scale_output(a: Adapter) -> None:
        proj = a.attn_out_proj(1) if group == "attn" else a.mlp_down_proj(1)
        scale_projection(proj, alpha)

    got = hooked(adapter, ids, UnitSpec(group, 1, op=op, value=alpha))
    assert_matches(got, logits(edited(adapter, scale_output), ids), clean)


def test_layer_zero_is_identity_block(setup):
    adapter, ids, clean = setup
    with apply(adapter.model, [UnitSpec("layers", 1)]), torch.no_grad():
        out = adapter.model(ids, output_hidden_states=True)
    assert torch.equal(out.hidden_states[2], out.hidden_states[1])

    def identity_block(a: Adapter) -> None:
        scale_projection(a.attn_out_proj(1), 0.0)
        scale_projection(a.mlp_down_proj(1), 0.0)

    assert_matches(out.logits, logits(edited(adapter, identity_block), ids), clean)


def test_layer_scale_scales_the_block_contribution(setup):
    adapter, ids, _ = setup
    with torch.no_grad():
        base = adapter.model(ids, output_hidden_states=True).hidden_states
        with apply(adapter, [UnitSpec("layers", 1, op="scale", value=0.5)]):
            half = adapter.model(ids, output_hidden_states=True).hidden_states
    assert torch.allclose(half[2] - half[1], 0.5 * (base[2] - base[1]), atol=ATOL)


def test_several_sites_at_once_equal_the_combined_edit(setup):
    adapter, ids, clean = setup
    d = adapter.d_head

    def both(a: Adapter) -> None:
        weight_in_out(a.attn_out_proj(0))[:, 3 * d :].zero_()
        weight_in_out(a.mlp_down_proj(2))[:, [0, 63]] = 0

    got = hooked(adapter, ids, UnitSpec("heads", 0, (3,)), UnitSpec("neurons", 2, (63, 0)))
    assert_matches(got, logits(edited(adapter, both), ids), clean)


def n_hooks(model: nn.Module) -> int:
    """Hooks on the model (transformers keeps its own `output_hidden_states` ones for good)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_are_removed_on_exit_and_on_error(setup):
    adapter, ids, clean = setup
    before = n_hooks(adapter.model)
    sites = [("heads", (0,)), ("neurons", (1,)), ("attn", ()), ("mlp", ()), ("layers", ())]
    specs = [UnitSpec(group, 1, units) for group, units in sites]
    with apply(adapter, specs):
        assert not torch.equal(logits(adapter.model, ids), clean)
    assert torch.equal(logits(adapter.model, ids), clean)
    with pytest.raises(RuntimeError, match="boom"), apply(adapter, specs):
        raise RuntimeError("boom")
    assert torch.equal(logits(adapter.model, ids), clean)
    assert n_hooks(adapter.model) == before


def test_noise_is_reproducible_and_zero_std_is_clean(setup):
    adapter, ids, clean = setup
    spec = UnitSpec("heads", 1, (0, 1), "noise", 0.5)
    first = hooked(adapter, ids, spec, generator=torch.Generator().manual_seed(3))
    again = hooked(adapter, ids, spec, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, again) and (first - clean).abs().max() > 1e-3
    assert torch.allclose(hooked(adapter, ids, UnitSpec("heads", 1, (0, 1), "noise", 0.0)), clean, atol=ATOL)


def test_gates_batch_variants_exactly(setup):
    adapter, ids, clean = setup
    one = ids[:1].expand(4, -1)
    heads = torch.ones(4, adapter.n_heads)
    heads[1, 2] = 0.0
    heads[2, [0, 3]] = 2.0
    layer = torch.tensor([1.0, 1.0, 1.0, 0.0])
    with gated(adapter, {("heads", 1): heads, ("layers", 2): layer}):
        batched = logits(adapter.model, one)
    singles = [
        clean[:1],
        hooked(adapter, ids[:1], UnitSpec("heads", 1, (2,))),
        hooked(adapter, ids[:1], UnitSpec("heads", 1, (0, 3), "scale", 2.0)),
        hooked(adapter, ids[:1], UnitSpec("layers", 2)),
    ]
    assert torch.allclose(batched, torch.cat(singles), atol=ATOL)


def test_gate_gradients_reach_every_unit(setup):
    adapter, ids, _ = setup
    gate = torch.ones(1, adapter.d_ffn, requires_grad=True)
    with gated(adapter.model, {("neurons", 0): gate}):
        adapter.model(ids).logits.logsumexp(-1).mean().backward()
    adapter.model.zero_grad(set_to_none=True)
    assert gate.grad.shape == (1, adapter.d_ffn) and gate.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: UnitSpec("blocks", 0), "unknown group 'blocks'; valid: heads, neurons, attn, mlp, layers"),
        (lambda: UnitSpec("heads", 0, (1,), "bogus"), "unknown op 'bogus'; valid: zero, scale, mean, noise, resample"),
        (lambda: UnitSpec("heads", 0), "needs at least one unit"),
        (lambda: UnitSpec("mlp", 0, (1,)), "units must be empty"),
        (lambda: UnitSpec("heads", 0, (1,), "noise", -1.0), "noise std must be >= 0"),
    ],
)
def test_bad_specs_name_the_problem(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_sites_are_refused_and_leave_no_hook(setup):
    adapter, _, _ = setup
    before = n_hooks(adapter.model)
    for specs, kwargs, message in [
        ([UnitSpec("heads", 0, (4,))], {}, r"heads units \[4\] out of range 0..3"),
        ([UnitSpec("mlp", 3)], {}, "layer 3 out of range"),
        ([UnitSpec("neurons", 0, (1,), "mean")], {}, "needs means"),
        ([UnitSpec("attn", 0, op="mean")], {"means": one_position(("attn", 0), torch.zeros(5))},
         "width 5; expected 32"),
        ([UnitSpec("attn", 0, op="resample")], {}, "needs a pool"),
    ]:
        with pytest.raises(ValueError, match=message), apply(adapter, [UnitSpec("mlp", 0), *specs], **kwargs):
            pass
    with pytest.raises(ValueError, match="expected 4"), gated(adapter, {("heads", 0): torch.ones(1, 3)}):
        pass
    assert n_hooks(adapter.model) == before


def test_unit_specs_are_normalised_and_hashable():
    assert UnitSpec("neurons", 1, (5, 2, 5)) == UnitSpec("neurons", 1, [2, 5])
    assert len({UnitSpec("neurons", 1, (5, 2)), UnitSpec("neurons", 1, (2, 5))}) == 1
    assert UnitSpec("attn", 3).site == ("attn", 3)
