"""Structure vs initialisation: Weibull anchors, the null tests, annealing, components, the stage."""

import numpy as np
import pytest
import torch
from helpers import make_cfg
from torch import nn

from paramscope.ablation.interventions import UnitSpec, apply
from paramscope.errors import StudyError
from paramscope.evaluation.documents import Doc
from paramscope.evaluation.scorer import score
from paramscope.models.adapters import get_adapter, weight_in_out
from paramscope.models.random_models import tiny_random_model
from paramscope.structure.anneal import anneal, masked
from paramscope.structure.components import (
    NodeIndex,
    component_table,
    matrix_blocks,
    substructure_logits,
)
from paramscope.structure.null_test import (
    Weights,
    drift_null,
    edge_tests,
    entry_tests,
    matrix_table,
    value_null,
)
from paramscope.structure.run import Plan, projection_weights
from paramscope.structure.units import KINDS, MatrixRole, matrix_roles, n_units
from paramscope.structure.weibull import (
    GAUSSIAN_K,
    GAUSSIAN_LAMBDA_PER_SIGMA,
    TORCH_LINEAR_K,
    fit_weibull,
    quantile_fit,
)

VOCAB = 50


# --------------------------------------------------------------------------- Weibull


def test_weibull_of_gaussian_init_matches_the_anchor():
    sigma = 0.02
    w = np.random.default_rng(0).normal(0.0, sigma, size=(512, 512))
    fit = fit_weibull(w)
    assert fit.method == "fit" and fit.r2 > 0.99
    assert abs(fit.k - GAUSSIAN_K) < 0.02
    assert abs(fit.lam / sigma - GAUSSIAN_LAMBDA_PER_SIGMA) < 0.01


def test_weibull_of_torch_default_linear_init_is_about_1_37():
    torch.manual_seed(0)
    fit = fit_weibull(nn.Linear(512, 512).weight.detach().numpy())
    assert fit.method == "fit"
    assert abs(fit.k - TORCH_LINEAR_K) < 0.02


def test_weibull_recovers_a_true_weibull_and_falls_back_when_the_middle_is_not_weibull():
    rng = np.random.default_rng(1)
    true = rng.weibull(0.7, size=200_000) * 3.0
    fit = fit_weibull(true)
    assert fit.method == "fit" and abs(fit.k - 0.7) < 0.02 and abs(fit.lam / 3.0 - 1) < 0.02
    k, lam = quantile_fit(true)
    assert abs(k - 0.7) < 0.02 and abs(lam / 3.0 - 1) < 0.02
    # two well-separated magnitudes: the binned CDF is a staircase, far from a line
    bimodal = np.concatenate([rng.normal(1e-4, 1e-6, 50_000), rng.normal(1.0, 1e-2, 50_000)])
    fallback = fit_weibull(bimodal)
    assert fallback.method == "quantile" and not fallback.r2 >= 0.95
    assert np.isfinite(fallback.k) and np.isfinite(fallback.lam)
    assert fit_weibull(np.ones(10)).method == "quantile"  # too few entries for a fit


# --------------------------------------------------------------------------- null tests


@pytest.mark.parametrize("draw", ["normal", "uniform"])
def test_value_pvalues_are_valid_under_the_null_and_exact_at_the_extremes(draw):
    rng = np.random.default_rng(2)
    sample = (lambda: rng.normal(0, 1, size=(200, 200))) if draw == "normal" else (
        lambda: rng.uniform(-1, 1, size=(200, 200)))
    init, fresh = sample(), sample()  # an untrained matrix drawn from the same init
    null = value_null(init)
    p = null.pvalues(fresh)
    assert abs(p.mean() - 0.5) < 0.01 and abs(np.mean(p <= 0.05) - 0.05) < 0.005
    assert null.kind == draw.replace("uniform", "empirical")
    if draw == "normal":  # the normal tail: an outlying entry gets a p far below 1/(n0 + 1)
        assert null.pvalues(np.array([10.0]))[0] < 1e-20 < 1 / (init.size + 1)
    else:  # the empirical tail floors at 1/(n0 + 1)
        assert null.pvalues(np.array([100.0]))[0] == 1 / (init.size + 1) == null.smallest_p
    assert null.pvalues(np.array([0.0]))[0] == 1.0


def test_a_single_learned_entry_is_found_among_a_million_under_the_normal_null():
    """With the empirical null no entry of a 1000 x 1000 matrix could be rejected alone: its p floors
    at 1e-6 while BH at q = 0.05 over 1e6 tests needs 5e-8 for a single rejection."""
    rng = np.random.default_rng(4)
    init = rng.normal(0, 0.02, size=(1000, 1000))
    trained = init.copy()
    trained[3, 7] = 0.2  # ten init standard deviations
    tests = entry_tests(Weights({"w": trained}, {"w": init}, None), 0.05)
    assert tests.value.q["w"][3, 7] <= 0.05
    assert (tests.value.q["w"] <= 0.05).sum() == 1


def test_criterion_finds_a_planted_block_of_learned_entries_at_the_stated_fdr():
    rng = np.random.default_rng(3)
    fdr, sigma = 0.05, 0.02
    init = rng.normal(0, sigma, size=(256, 256))
    walk = 0.1 * sigma  # the diffuse drift of every entry, as far as the noise twin's
    twin = init + rng.normal(0, walk, size=init.shape)
    trained = init + rng.normal(0, walk, size=init.shape)
    block = np.zeros(init.shape, dtype=bool)
    block[40:72, 100:132] = True
    trained[block] += 8 * walk * rng.choice([-1.0, 1.0], size=block.sum())
    tests = entry_tests(Weights({"w": trained}, {"w": init}, {"w": twin}), fdr)
    found = ~tests.indistinguishable("w")
    recall = found[block].mean()
    false_discovery = (found & ~block).sum() / max(found.sum(), 1)
    assert recall > 0.99
    assert false_discovery <= fdr
    # the same matrix without the block: nothing is found
    clean = {"w": init + rng.normal(0, walk, size=init.shape)}
    assert entry_tests(Weights(clean, {"w": init}, {"w": twin}), fdr).indistinguishable("w").mean() > 0.999


def _noise_walk(rng, shape, scale, tails):
    """Drifts with no learning signal: normal, or heavy-tailed like a twin's output projections."""
    if tails == "normal":
        return rng.normal(0, scale, size=shape)
    return scale * rng.standard_t(3, size=shape)


@pytest.mark.parametrize("tails", ["normal", "heavy"])
def test_drift_pvalues_are_uniform_when_nothing_was_learned(tails):
    """Null calibration: a model whose entries only random-walked like its noise twin's, tested against
    that twin, gets uniform drift p-values and no rejection."""
    rng = np.random.default_rng(5)
    sigma, shape = 0.02, (300, 300)
    init = rng.normal(0, sigma, size=shape)
    twin = init + _noise_walk(rng, shape, 2 * sigma, tails)
    trained = init + _noise_walk(rng, shape, 2 * sigma, tails)  # as far as the twin: drift >> 0, yet no signal
    tests = entry_tests(Weights({"w": trained}, {"w": init}, {"w": twin}), 0.05)
    assert tests.drift.nulls["w"].kind == ("normal" if tails == "normal" else "empirical")
    p = tests.drift.p["w"]
    assert abs(p.mean() - 0.5) < 0.01 and abs(np.mean(p <= 0.05) - 0.05) < 0.005
    assert (tests.drift.q["w"] <= 0.05).sum() == 0
    # edges (here one entry each) against the twin's edges: none stands out either
    roles = {"w": MatrixRole("w", 0, "neurons", "mlp_in", True, np.arange(shape[0]))}
    edges = edge_tests(tests, Weights({"w": trained}, {"w": init}, {"w": twin}), roles, shape[1],
                       {(0, "neurons"): shape[0]})
    assert edges.frac_indist_drift.iloc[0] == 1.0


def test_drift_null_is_not_scaled_by_the_drifts_it_tests():
    """Every entry but a few moved far by a learned signal: a null scaled by the matrix's own drifts
    called that bulk null (the old test); against the noise twin only the few that merely walked are."""
    rng = np.random.default_rng(6)
    fdr, sigma, shape = 0.05, 0.02, (256, 256)
    init = rng.normal(0, sigma, size=shape)
    walk = 0.5 * sigma  # how far an entry moves without a learning signal
    twin = init + rng.normal(0, walk, size=shape)
    learned = rng.random(shape) > 0.05  # 95% of the entries received a consistent update
    trained = init + rng.normal(0, walk, size=shape)
    trained[learned] += 10 * walk * rng.choice([-1.0, 1.0], size=learned.sum())
    tests = entry_tests(Weights({"w": trained}, {"w": init}, {"w": twin}), fdr)
    found = tests.drift.q["w"] <= fdr
    assert found[learned].mean() > 0.99
    assert (found & ~learned).sum() / found.sum() <= fdr
    table = matrix_table(tests, Weights({"w": trained}, {"w": init}, {"w": twin}),
                         {"w": MatrixRole("w", 0, "neurons", "mlp_in", True, np.arange(shape[0]))})
    assert table.frac_indist_drift.iloc[0] < 0.06  # not the ~100% the self-scaled null gave
    assert table.drift_ref_scale.iloc[0] == pytest.approx(walk, rel=0.02)


def test_a_twin_that_never_moved_rejects_every_drift_and_no_stillness():
    init = np.random.default_rng(4).normal(size=(10, 10))
    moved = init.copy()
    moved[0, 0] += 1e-3
    null = drift_null(np.zeros_like(init))
    p = null.pvalues(moved - init)
    assert null.kind == "empirical" and p[0, 0] == null.smallest_p == 1 / 101
    assert np.all(np.delete(p.ravel(), 0) == 1.0)


def test_without_a_noise_twin_the_value_test_decides_alone_and_says_so():
    rng = np.random.default_rng(7)
    init = rng.normal(0, 0.02, size=(64, 64))
    trained = init + rng.normal(0, 0.02, size=init.shape)
    weights = Weights({"w": trained}, {"w": init}, None)
    tests = entry_tests(weights, 0.05)
    assert tests.drift is None
    assert np.array_equal(tests.indistinguishable("w"), tests.value.q["w"] > 0.05)
    assert np.array_equal(tests.combined("w"), tests.value.p["w"])
    row = matrix_table(tests, weights, {"w": MatrixRole("w", 0, "neurons", "mlp_in", True, np.arange(64))}).iloc[0]
    assert row.drift_null == "none" and np.isnan(row.frac_indist_drift)
    assert row.frac_indist == row.frac_indist_value


def test_mismatched_checkpoints_are_refused():
    w = {"a": np.zeros((2, 3))}
    with pytest.raises(ValueError, match="noise twin shape"):
        Weights(w, w, {"a": np.zeros((3, 2))})
    with pytest.raises(ValueError, match="trained and step-0 matrices differ"):
        Weights(w, {"b": np.zeros((2, 3))}, None)


# --------------------------------------------------------------------------- units and edges


def _model(family: str = "gpt_neox", seed: int = 0, dtype=torch.float32):
    return tiny_random_model(family, seed, VOCAB).to(dtype).eval()


def _head_inputs(adapter, layer, ids):
    seen = {}
    handle = adapter.attn_out_proj(layer).register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].clone()))
    with torch.no_grad():
        adapter.model(input_ids=ids)
    handle.remove()
    return seen["x"].unflatten(-1, (adapter.n_heads, adapter.d_head))


@pytest.mark.parametrize("family", ["gpt_neox", "gpt2", "gpt_neo", "llama"])
def test_reader_rows_of_an_attention_unit_feed_only_its_heads(family):
    model = _model(family)
    adapter = get_adapter(model)
    roles = matrix_roles(adapter)
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(0))
    layer, unit = 1, 1
    clean = _head_inputs(adapter, layer, ids)
    readers = [r for r in roles.values() if r.layer == layer and r.matrix_type == "attn_in"]
    with torch.no_grad():
        for role in readers:
            weight_in_out(adapter.linear_modules()[role.name])[torch.from_numpy(role.unit_of == unit)] *= 3.0
    changed = (_head_inputs(adapter, layer, ids) - clean).abs().amax(dim=(0, 1, 3)) > 1e-6
    n_attn = n_units(adapter, layer, "heads")
    expected = torch.arange(adapter.n_heads) * n_attn // adapter.n_heads == unit
    assert torch.equal(changed, expected)


def test_removing_every_edge_of_a_neuron_equals_ablating_it():
    model = _model()
    adapter = get_adapter(model)
    roles = matrix_roles(adapter)
    ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(1))
    removed = {}
    for name, role in roles.items():
        shape = tuple(weight_in_out(adapter.linear_modules()[name]).shape)
        _, unit = role.residual_and_unit(shape)
        removed[name] = (unit == 5) & (role.layer == 2) & (role.kind == "neurons")
    with torch.no_grad(), masked(adapter, removed):
        ours = model(input_ids=ids).logits
    with torch.no_grad(), apply(adapter, [UnitSpec("neurons", 2, (5,))]):
        theirs = model(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs)


def test_edges_of_an_unchanged_model_are_all_indistinguishable():
    adapter = get_adapter(_model())
    roles = matrix_roles(adapter)
    w = projection_weights(adapter)
    units = {(layer, k): n_units(adapter, layer, k) for layer in range(adapter.n_layers) for k in KINDS}
    weights = Weights(w, w, w)
    table = edge_tests(entry_tests(weights, 0.05), weights, roles, adapter.d_model, units)
    assert set(table.unit_kind) == set(KINDS) and (table.frac_indist == 1.0).all()
    assert (table[table.unit_kind == "neurons"].params_per_edge == 2).all()  # W_in[j, i] and W_out[i, j]
    heads = table[table.unit_kind == "heads"].params_per_edge
    assert (heads == 4 * adapter.d_head).all()  # q, k, v rows and the output columns of one head


# --------------------------------------------------------------------------- annealing


def _docs(n: int = 24, seed: int = 0) -> list[Doc]:
    rng = np.random.default_rng(seed)
    return [Doc(i, tuple(int(t) for t in rng.integers(0, VOCAB, 6)),
                tuple((int(c),) for c in rng.choice(VOCAB, 4, replace=False)),
                (1, 1, 1, 1), int(rng.integers(0, 4))) for i in range(n)]


def test_annealing_at_tolerance_zero_leaves_the_logits_unchanged():
    model = _model()
    adapter = get_adapter(model)
    down = adapter.mlp_down_proj(0)
    with torch.no_grad():
        weight_in_out(down)[:, :16] = 0.0  # neurons 0..15 of layer 0 no longer reach the residual stream
    weights = projection_weights(adapter)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    roles = matrix_roles(adapter)
    # evidence: the irrelevant inputs of those neurons look unlearned, everything else learned
    pvalues = {n: np.full(w.shape, 1e-3) for n, w in weights.items()}
    reader = next(n for n, r in roles.items() if r.layer == 0 and r.matrix_type == "mlp_in")
    pvalues[reader][:16] = 1.0
    docs = _docs()

    def evaluate():
        return {"synthetic": score(model, docs, 8)}

    result = anneal(adapter, pvalues, weights, [0.5, 1e-4], evaluate, tolerance=0.0)
    chosen = result.accepted("anneal")
    assert chosen is not None and chosen.step == 0 and chosen.n_removed == 16 * adapter.d_model
    assert result.curve("anneal")[1].n_removed == sum(w.size for w in weights.values())
    assert [s.n_removed for s in result.curve("magnitude")] == [s.n_removed for s in result.curve("anneal")]
    ids = torch.tensor([d.context for d in docs])
    with torch.no_grad():
        dense = model(input_ids=ids).logits
        with masked(adapter, {n: p > chosen.threshold for n, p in pvalues.items()}):
            annealed = model(input_ids=ids).logits
    assert torch.equal(dense, annealed)
    for n, p in model.named_parameters():  # every step was undone bit-exactly
        assert torch.equal(p, before[n]), n


# --------------------------------------------------------------------------- components


def _parity_kept(adapter, roles):
    kept = {}
    for name, role in roles.items():
        shape = tuple(weight_in_out(adapter.linear_modules()[name]).shape)
        residual, unit = role.residual_and_unit(shape)
        kept[name] = residual % 2 == unit % 2
    return kept


def test_components_of_a_planted_two_part_structure():
    adapter = get_adapter(_model())
    roles = matrix_roles(adapter)
    units = {(layer, k): n_units(adapter, layer, k) for layer in range(adapter.n_layers) for k in KINDS}
    table = component_table(roles, _parity_kept(adapter, roles), NodeIndex.build(adapter.d_model, units),
                            adapter.n_layers)
    assert (table.n_components == 2).all() and (table.largest_frac == 0.5).all()
    assert (table.isolated_units == 0).all() and (table.edge_density == 0.5).all()
    kept = {n: np.zeros_like(k) for n, k in _parity_kept(adapter, roles).items()}
    empty = component_table(roles, kept, NodeIndex.build(adapter.d_model, units), adapter.n_layers)
    assert (empty.n_components == 0).all() and empty.isolated_units.iloc[-1] == sum(units.values())


def _nodes(adapter):
    return NodeIndex.build(adapter.d_model, {(layer, k): n_units(adapter, layer, k)
                                             for layer in range(adapter.n_layers) for k in KINDS})


@pytest.mark.parametrize("family", ["gpt_neox", "gpt2"])
def test_one_component_holding_everything_recombines_to_the_model_itself(family):
    model = _model(family, dtype=torch.float64)
    adapter = get_adapter(model)
    roles = matrix_roles(adapter)
    kept = {n: np.ones(tuple(weight_in_out(adapter.linear_modules()[n]).shape), dtype=bool) for n in roles}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = [torch.randint(0, VOCAB, (1, 7), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    reference, apart, n_parts = substructure_logits(adapter, roles, kept, _nodes(adapter), ids)
    assert n_parts == 1
    for a, b in zip(reference, apart):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # embeddings and weights restored


def _planted_components_apart(model, seed):
    """The parity-planted two-component mask on `model`: (reference, recombined, number of components)
    from `substructure_logits` on one random context, and the masked model's own logits there."""
    adapter = get_adapter(model)
    roles = matrix_roles(adapter)
    kept = _parity_kept(adapter, roles)
    ids = [torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(seed))]
    with torch.no_grad(), masked(adapter, {n: ~k for n, k in kept.items()}):
        reference, apart, n_parts = substructure_logits(adapter, roles, kept, _nodes(adapter), ids)
        masked_logits = model(input_ids=ids[0]).logits[0]
    return reference, apart, n_parts, masked_logits


@pytest.mark.parametrize("family", ["gpt_neox", "gpt2"])
def test_components_run_apart_differ_from_the_masked_model_where_layer_norms_couple_them(family):
    """Two planted components (even and odd channels and units): splitting every matrix into its blocks
    reproduced the masked model to 1e-10 whatever the structure; running the components apart does
    not, because every layer norm mixes both components' channels, and the check says so."""
    model = _model(family, dtype=torch.float64)
    reference, apart, n_parts, masked_logits = _planted_components_apart(model, seed=2)
    assert n_parts == 2
    torch.testing.assert_close(reference[0], masked_logits.float())  # the reference is the masked model
    assert (reference[0] - apart[0]).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["gpt_neox", "gpt2"])
def test_without_layer_norms_the_components_run_apart_add_up_to_the_masked_model(family):
    """Attention units and neurons each read one component's channels, so only the layer norms couple
    components: with them replaced by identities, the recombination is exact (biases counted once)."""
    model = _model(family, dtype=torch.float64)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.LayerNorm):
                setattr(parent, name, nn.Identity())
    reference, apart, n_parts, _ = _planted_components_apart(model, seed=3)
    assert n_parts == 2
    torch.testing.assert_close(apart[0], reference[0], rtol=1e-6, atol=1e-6)


def test_matrix_blocks_are_the_block_diagonal_form():
    w = torch.zeros(5, 4)
    w[0, 1] = w[3, 1] = w[3, 2] = 1.0  # rows {0, 3} x cols {1, 2}
    w[4, 0] = 2.0  # rows {4} x cols {0}
    blocks = sorted(matrix_blocks(w), key=lambda b: b.rows.tolist())
    assert [b.rows.tolist() for b in blocks] == [[0, 3], [4]]
    assert [b.cols.tolist() for b in blocks] == [[1, 2], [0]]


# --------------------------------------------------------------------------- stage input


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model=bogus"], "unknown model 'bogus'; valid: scratch, gen2, tuned"),
        (["fdr=1.5"], "fdr must lie in (0, 1)"),
        (["tolerance=-1"], "tolerance must be >= 0"),
        (["structure.thresholds=[0.1,0.5]"], "decrease strictly"),
        (["structure.models=[scratch-step0]"], "no step-0 null model for scratch-step0"),
        (["~structure.drift_references.gen2"], "no drift reference for gen2; set structure.drift_references.<model>"),
    ],
)
def test_bad_requests_are_refused_before_any_work(overrides, message):
    cfg = make_cfg("structure", overrides)
    with pytest.raises(StudyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Plan.from_cfg(cfg)


# --------------------------------------------------------------------------- the stage's grid and report


@pytest.fixture(scope="module")
def study(smoke_suite, tmp_path_factory):
    """Smoke data, a random `scratch-step0`, a `scratch` that drifted from it and a `scratch-noise` that
    walked as far, and a config for them."""
    from transformers import AutoTokenizer

    from paramscope.models.zoo import save_model

    _, data = smoke_suite
    tmp = tmp_path_factory.mktemp("structure")
    tokenizer = AutoTokenizer.from_pretrained(data / "tokenizer")
    step0 = tiny_random_model("gpt_neox", 0, len(tokenizer))
    save_model(step0, tokenizer, tmp / "models" / "scratch-step0", {})
    for seed, name in ((1, "scratch"), (2, "scratch-noise")):
        moved = tiny_random_model("gpt_neox", 0, len(tokenizer))
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in moved.parameters():
                if p.ndim == 2:
                    p.add_(0.1 * torch.randn(p.shape, generator=generator))
        save_model(moved, tokenizer, tmp / "models" / name, {})
    cfg = make_cfg("structure", ["profile=smoke", f"paths.data={data}", f"paths.tasks={data / 'tasks'}",
                                 f"paths.tokenizer={data / 'tokenizer'}", f"paths.models={tmp / 'models'}",
                                 "model=scratch", "structure.thresholds=[0.5,0.1,0.01]", "structure.decompose_docs=2"])
    return cfg, tmp


def test_the_plan_reads_the_config_once_into_plain_values(study):
    """Cell keys hash the plan's values: an OmegaConf container or a float where an int was would change them."""
    import dataclasses

    from omegaconf import Container

    cfg, tmp = study
    plan = Plan.from_cfg(cfg)
    assert plan.models == ("scratch",) and plan.tasks == tuple(cfg.tasks) and not plan.full_grid
    assert plan.thresholds == (0.5, 0.1, 0.01) and plan.decompose_docs == 2 and isinstance(plan.seed, int)
    assert plan.null_models == {"scratch": "scratch-step0"} and plan.drift_references == {"scratch": "scratch-noise"}
    assert plan.nulls == ["scratch-step0"] and plan.models_root == tmp / "models"
    values = [getattr(plan, f.name) for f in dataclasses.fields(plan)]
    assert not any(isinstance(v, Container) for v in [*values, *plan.spec.values()])
    assert Plan.from_cfg(make_cfg("structure", ["profile=smoke", f"paths.models={tmp / 'models'}",
                                                "structure.models=[scratch]"])).full_grid
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.fdr = 0.5


def test_the_grid_writes_every_cell_once_and_the_report_reads_them(study, tmp_path):
    from paramscope.report.structure import report
    from paramscope.store import load_results
    from paramscope.structure.run import run_grid

    cfg, tmp = study
    results = tmp / "results"
    first = run_grid(cfg, results)
    assert first["computed"] == 5 and first["skipped"] == 0  # Weibull x 2, tests, anneal, components
    assert run_grid(cfg, results)["skipped"] == 5  # a rerun finds every cell
    df = load_results("structure", results, with_examples=True)
    assert set(df.kind) == {"weibull", "tests", "anneal", "components"}
    assert set(df[df.kind == "weibull"].step) == {"step0", "trained"}
    states = df[(df.kind == "anneal") & (df.row_type == "state")]
    assert set(states.split) == {"dev", "test"} and (states.null_model == "scratch-step0").all()
    assert (states.drift_reference == "scratch-noise").all()
    matrices = df[(df.kind == "tests") & (df.row_type == "matrix")]
    assert (matrices.drift_null != "none").all() and matrices.frac_indist_drift.between(0.0, 1.0).all()
    graph = df[(df.kind == "components") & (df.row_type == "graph")]
    # the components run apart: measured, whatever it is (layer norms couple them)
    assert (graph[graph.method == "dense"].n_substructures >= 1).all()
    assert (graph.n_substructures >= 0).all() and np.isfinite(graph.logits_max_abs_diff).all()
    assert graph.argmax_agreement.between(0.0, 1.0).all()

    rcfg = make_cfg("report", ["profile=smoke", "topic=structure", "report.n_resamples=1000", "models=[scratch]"])
    metrics = report(rcfg, results, tmp_path)
    macros = (tmp_path / "macros.tex").read_text()
    for name in ("StructureScratchIndist", "StructureScratchIndistValue", "StructureScratchIndistDrift",
                 "StructureScratchDriftReference", "StructureScratchDriftRatio", "StructureDriftNullTotal",
                 "StructureScratchIndistEdgesDriftNeurons", "StructureScratchAnnealSparsity",
                 "StructureScratchAnnealTestDeltaAccLow",
                 "StructureWeibullScratchStepZeroK", "StructureApartMaxDiff",
                 "StructureApartMinAgreement"):
        assert f"\\newcommand{{\\{name}}}" in macros
    assert 0.0 <= metrics["scratch/indist"] <= metrics["scratch/indist_drift"] <= 1.0
    assert {p.name for p in (tmp_path / "figures").iterdir()} == {
        "indistinguishable.pdf", "annealing.pdf", "components.pdf", "weibull.pdf"}
    assert {p.name for p in (tmp_path / "tables").iterdir()} == {
        "indistinguishable.tex", "annealing.tex", "components.tex", "weibull.tex"}
