"""The fast exact map engine gives, unit by unit, what the one-unit-at-a-time loop gives."""

from copy import deepcopy

import numpy as np
import pytest
from helpers import smoke_test_docs

from paramscope.ablation.engine import _branchable, fast_map
from paramscope.ablation.interventions import UnitSpec, apply
from paramscope.ablation.units import unit_specs
from paramscope.evaluation.documents import Doc
from paramscope.evaluation.packing import packing_limit
from paramscope.evaluation.scorer import score, score_shared_context
from paramscope.models.adapters import get_adapter
from paramscope.models.random_models import tiny_random_model

ATOL = 1e-5
BATCH = 4  # documents per batch, for the loop and the engine alike
FAMILIES = ["gpt_neox", "gpt2", "llama", "gpt_neo", "gpt_neox_sequential"]
MAPS = [(group, op, value) for group in ("heads", "neurons", "attn", "mlp", "layers")
        for op, value in (("zero", 0.0), ("scale", 0.5))]


@pytest.fixture(scope="module")
def docs(smoke_suite):
    found, vocab = smoke_test_docs(smoke_suite[1], limit=5)
    assert all(len(c) == 1 for d in found for c in d.choices)  # the synthetic tasks: single-token path
    return found, vocab


@pytest.fixture(scope="module", params=FAMILIES)
def setup(request, docs):
    """A tiny model of one family and the loop's scores for every unit of every map."""
    found, vocab = docs
    family, overrides = request.param.removesuffix("_sequential"), {}
    if request.param.endswith("_sequential"):  # GPT-NeoX's other block: the MLP reads the residual after attention
        overrides = dict(use_parallel_residual=False)
    adapter = get_adapter(tiny_random_model(family, seed=1, vocab_size=vocab, **overrides))
    clean = score(adapter.model, found, BATCH)
    loop = {}
    for group, op, value in MAPS:
        for spec in unit_specs(adapter, group, op, value, neuron_block=16):
            with apply(adapter, [spec]):
                loop[spec] = score(adapter.model, found, BATCH)
    return adapter, found, clean, loop


def assert_equals_loop(result, loop, clean):
    moved = 0.0
    for spec, scores in result:
        expected = loop[spec]
        np.testing.assert_array_equal(scores.doc_ids, expected.doc_ids)
        np.testing.assert_array_equal(scores.gold, expected.gold)
        np.testing.assert_allclose(np.stack(scores.lls), np.stack(expected.lls), rtol=0, atol=ATOL, err_msg=str(spec))
        moved = max(moved, np.abs(np.stack(expected.lls) - np.stack(clean.lls)).max())
    assert moved > 1e-2, "no ablation changed anything: the comparison proves nothing"


@pytest.mark.parametrize("group,op,value", MAPS)
def test_engine_equals_one_unit_at_a_time_loop(setup, group, op, value, caplog):
    adapter, found, clean, loop = setup
    result = fast_map(adapter, found, group, op, value, batch_size=BATCH, neuron_block=16)
    assert "not exact" not in caplog.text  # every block is rebuilt from the adapter's pieces, none re-run
    assert [spec for spec, _ in result] == list(unit_specs(adapter, group, op, value, neuron_block=16))
    assert_equals_loop(result, loop, clean)


@pytest.mark.parametrize("group,op,value", MAPS)
def test_chunking_and_block_rerun_give_the_same_numbers(setup, group, op, value):
    """A token budget below one layer's variants x documents splits them into several branched
    forwards; `rebuild=False` re-runs the ablated block whole (the fallback path) instead."""
    adapter, found, clean, loop = setup
    widest = max(len(d.context) for d in found)
    budget = adapter.n_layers * BATCH * widest  # the trunk keeps the loop's batches ...
    assert budget // (BATCH * widest) < adapter.n_heads  # ... and one layer's variants need several forwards
    for kwargs in (dict(max_batch_tokens=budget), dict(rebuild=False), dict(max_batch_tokens=budget, rebuild=False)):
        result = fast_map(adapter, found, group, op, value, batch_size=BATCH, neuron_block=16, **kwargs)
        assert_equals_loop(result, loop, clean)


def test_tiny_budget_splits_documents_too(setup):
    """A budget below one batch's documents shrinks the trunk's document batches as well. Batch
    composition then differs from the loop's, and float32 results depend on it at the 1e-5 level on
    these deliberately ill-conditioned models (the loop alone shows it across batch sizes), so this
    compares in float64, where only GPT-Neo's float32 attention leaves a rounding trace."""
    adapter, found, _, _ = setup
    wide = get_adapter(deepcopy(adapter.model).double())
    result = fast_map(wide, found, "heads", "scale", 0.5, batch_size=BATCH, max_batch_tokens=8)
    loop, clean = {}, score(wide.model, found, BATCH)
    for spec, _ in result:
        with apply(wide, [spec]):
            loop[spec] = score(wide.model, found, BATCH)
    assert_equals_loop(result, loop, clean)


# Multi-token choices (and one-token choices among them): packed one row per document and branched.
MULTI = (
    Doc(doc_id=900, context=(5, 9, 14, 3), choices=((7, 8), (11,), (12, 13, 4)), choice_chars=(3, 1, 5), gold=2),
    Doc(doc_id=901, context=(6,), choices=((2, 3), (9, 9)), choice_chars=(2, 2), gold=0),
    Doc(doc_id=902, context=(4, 4, 8, 1, 2), choices=((1, 2, 3, 5), (6,)), choice_chars=(4, 1), gold=1),
)


def test_multi_token_documents_are_branched_like_the_loop(setup):
    """Packed documents go through the trunk and branch like any others (GPT-Neo's local attention
    packs only rows within its window; the rest take the loop), and equal both the loop and the
    key/value-cache scoring of each document."""
    adapter, found, _, _ = setup
    limit = packing_limit(adapter.model)
    assert adapter.family == "gpt_neo" or all(_branchable(d, limit) for d in MULTI)
    mixed = (found[0], MULTI[0], found[1], MULTI[1], MULTI[2])
    last = adapter.n_layers - 1
    specs = [UnitSpec("heads", 1, (2,)), UnitSpec("neurons", 0, tuple(range(8)), "scale", 0.5), UnitSpec("layers", 2),
             UnitSpec("attn", last), UnitSpec("mlp", last, (), "scale", 2.0),
             UnitSpec("neurons", last, tuple(range(8)), "scale", 0.5)]
    # rebuild=False re-runs each ablated block under gates: in the last block the MLP sees only the reads,
    # several per packed document, and each must take its own document's gate
    results = [fast_map(adapter, mixed, "heads", specs=specs, batch_size=BATCH, rebuild=r) for r in (True, False)]
    assert all([s for s, _ in result] == specs for result in results)
    moved = 0.0
    clean = [score_shared_context(adapter.model, d) for d in MULTI]
    for spec, scores in [pair for result in results for pair in result]:
        with apply(adapter, [spec]):
            expected = score(adapter.model, mixed, BATCH)
            cached = [score_shared_context(adapter.model, d) for d in MULTI]  # an independent reference
        np.testing.assert_array_equal(scores.doc_ids, [d.doc_id for d in mixed])
        for got, want in zip(scores.lls, expected.lls):
            np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
        for got, want, before in zip([scores.lls[k] for k in (1, 3, 4)], cached, clean):
            np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
            moved = max(moved, np.abs(want - before).max())
    assert moved > 1e-2, "no ablation changed a multi-token document: the comparison proves nothing"


def test_rejects_what_gates_cannot_express(setup):
    adapter, found, _, _ = setup
    with pytest.raises(ValueError, match="mean"):
        fast_map(adapter, found, "heads", "mean")
    adapter.model.train()
    try:
        with pytest.raises(ValueError, match="training"):
            fast_map(adapter, found, "heads")
    finally:
        adapter.model.eval()


def test_a_block_that_does_not_add_up_falls_back_to_re_running_it(docs, monkeypatch, caplog):
    """The engine checks its rebuilt block output bit for bit against the clean one; an adapter whose
    block is not what it says (here: the wrong norm named in front of the MLP) has it re-run whole."""
    found, vocab = docs
    adapter = get_adapter(tiny_random_model("gpt2", seed=1, vocab_size=vocab))
    monkeypatch.setattr(adapter, "mlp_norm", lambda layer: adapter.block(layer).ln_1)
    result = fast_map(adapter, found, "heads", batch_size=BATCH)
    assert "not exact" in caplog.text
    for spec, scores in result:
        with apply(adapter, [spec]):
            expected = score(adapter.model, found, BATCH)
        np.testing.assert_allclose(np.stack(scores.lls), np.stack(expected.lls), rtol=0, atol=ATOL)


# ------------------------------------------------------------------ branched scores (any intervention)

def _variants_and_loops(adapter, found, scored):
    """Weight edits and statistic-based hooks (statistics from `found` and the multi-token documents, so
    that choice tokens have gold-continuation positions to take), each as a branched variant and as the
    loop scores `scored` under it. Mean and resample sit where the engine runs the last block's MLP at
    the read positions only, too."""
    import torch

    from paramscope.ablation.atlas import hook_variant
    from paramscope.ablation.reference import resample_pool, site_stats
    from paramscope.ablation.weights import edited, first_layer, magnitude_units, matrix_units

    reference = (*found, *MULTI)
    last = adapter.n_layers - 1
    means, _ = site_stats(adapter, reference, "heads", BATCH)
    neuron_means, _ = site_stats(adapter, reference, "neurons", BATCH)
    pool = resample_pool(adapter, reference, "neurons", seed=0, batch_size=BATCH)
    mlp_pool = resample_pool(adapter, reference, "mlp", seed=3, batch_size=BATCH)
    matrices = list(matrix_units(adapter))
    weight_units = [matrices[len(matrices) // 2], matrices[-1], next(iter(magnitude_units(adapter, 4)))]
    hook_specs = [
        (UnitSpec("heads", 1, (0,), "mean"), {"means": means}),
        (UnitSpec("neurons", last, tuple(range(16)), "mean"), {"means": neuron_means}),
        (UnitSpec("heads", last, (1,), "noise", 0.5), {"seed": 7}),
        (UnitSpec("neurons", 0, tuple(range(16)), "resample"), {"pool": pool}),
        (UnitSpec("neurons", last, tuple(range(8, 24)), "resample"), {"pool": pool}),
        (UnitSpec("mlp", last, (), "resample"), {"pool": mlp_pool}),
    ]

    def generator(kw):  # one noise stream per spec, drawn on as the loop draws on it
        return torch.Generator().manual_seed(kw["seed"]) if "seed" in kw else None

    variants = [(first_layer(adapter, u), lambda batch, u=u: edited(adapter, u, "zero")) for u in weight_units]
    variants += [(spec.layer, hook_variant(adapter, spec, means=kw.get("means"), generator=generator(kw),
                                           pool=kw.get("pool"))) for spec, kw in hook_specs]
    loops = []
    for u in weight_units:
        with edited(adapter, u, "zero"):
            loops.append(score(adapter.model, scored, BATCH))
    for spec, kw in hook_specs:
        with apply(adapter, [spec], generator=generator(kw), means=kw.get("means"), pool=kw.get("pool")):
            loops.append(score(adapter.model, scored, BATCH))
    return variants, loops


def test_branched_scores_equal_the_loop_for_weight_edits_and_statistic_hooks(setup):
    from paramscope.ablation.engine import branched_scores

    adapter, found, _, _ = setup
    scored = (*found, *MULTI)  # multi-token documents packed, and (GPT-Neo) some through the loop
    clean = score(adapter.model, scored, BATCH)
    variants, loops = _variants_and_loops(adapter, found, scored)
    result = branched_scores(adapter, scored, variants, batch_size=BATCH)
    assert len(result) == len(loops)
    moved = 0.0
    for got, want in zip(result, loops):
        np.testing.assert_array_equal(got.doc_ids, want.doc_ids)
        for a, b, c in zip(got.lls, want.lls, clean.lls):
            np.testing.assert_allclose(a, b, rtol=0, atol=ATOL)
            moved = max(moved, np.abs(b - c).max())
        np.testing.assert_array_equal(got.correct, want.correct)
    assert moved > 1e-2, "no variant changed anything: the comparison proves nothing"
    # every edit was undone: the model scores as the clean model again
    for a, b in zip(score(adapter.model, scored, BATCH).lls, clean.lls):
        np.testing.assert_array_equal(a, b)


def test_branched_scores_reject_a_first_block_outside_the_model(setup):
    from contextlib import nullcontext

    from paramscope.ablation.engine import branched_scores

    adapter, found, _, _ = setup
    with pytest.raises(ValueError, match="first block"):
        branched_scores(adapter, found, [(adapter.n_layers, lambda batch: nullcontext())])
