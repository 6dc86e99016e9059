"""Atlas units beyond zero/scale hooks: mean and noise ops, and reversible weight-edit units."""

import itertools
from copy import deepcopy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import make_cfg
from transformers import AutoTokenizer

from paramscope.ablation.atlas import MAP_GROUPS, MAP_OPS, resample_pool, site_stats
from paramscope.ablation.interventions import UnitSpec, apply
from paramscope.ablation.resample import token_key
from paramscope.ablation.weights import (
    edited,
    magnitude_units,
    matrix_magnitude_units,
    matrix_units,
    projection_kind,
    random_units,
)
from paramscope.evaluation.documents import Doc
from paramscope.evaluation.scorer import score
from paramscope.models.adapters import get_adapter
from paramscope.models.random_models import tiny_random_model

ATOL = 1e-5
FAMILIES = ["gpt_neox", "gpt2"]


@pytest.fixture(scope="module", params=FAMILIES)
def setup(request):
    adapter = get_adapter(tiny_random_model(request.param, seed=3))
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    return adapter, ids


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bit_exact(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), k


def test_matrix_zero_equals_zeroed_copy_and_restores_exactly(setup):
    adapter, ids = setup
    clean = logits(adapter.model, ids)
    before = snapshot(adapter.model)
    units = list(matrix_units(adapter))
    assert [u.name for u in units] == list(adapter.linear_modules())
    for unit in units:
        copy = deepcopy(adapter.model)
        with torch.no_grad():
            copy.get_submodule(unit.name).weight.zero_()
        with edited(adapter, unit):
            assert (adapter.model.get_submodule(unit.name).weight == 0).all()
            hooked = logits(adapter.model, ids)
        assert torch.allclose(hooked, logits(copy, ids), atol=ATOL), unit.name
        assert unit.n_weights == adapter.model.get_submodule(unit.name).weight.numel()
        assert unit.layer == int(unit.name.split(".")[2])  # gpt_neox.layers.L... / transformer.h.L...
    assert (hooked - clean).abs().max() > 1e-3
    assert_bit_exact(adapter.model, before)
    assert torch.equal(logits(adapter.model, ids), clean)


def test_weight_edits_restore_on_exception(setup):
    adapter, _ = setup
    before = snapshot(adapter.model)
    unit = next(magnitude_units(adapter, 4))
    with pytest.raises(RuntimeError, match="boom"), edited(adapter, unit, "scale", 3.0):
        assert any(not torch.equal(adapter.model.state_dict()[k], v) for k, v in before.items())
        raise RuntimeError("boom")
    assert_bit_exact(adapter.model, before)
    for unit in [*magnitude_units(adapter, 4), *random_units(adapter, 4, seed=1)]:
        with edited(adapter, unit):
            pass
    assert_bit_exact(adapter.model, before)


@pytest.mark.parametrize("n_bins", [3, 10])
def test_magnitude_bins_partition_each_projection_kind(setup, n_bins):
    adapter, _ = setup
    modules = adapter.linear_modules()
    kinds = list(dict.fromkeys(projection_kind(adapter, name) for name in modules))
    assert len(kinds) == 4  # q/k/v (fused), output, MLP in, MLP out: never pooled with each other
    bins = list(magnitude_units(adapter, n_bins))
    assert len(bins) == len(kinds) * n_bins and [b.unit for b in bins] == list(range(len(kinds) * n_bins))
    counts = {name: torch.zeros(m.weight.numel(), dtype=torch.long) for name, m in modules.items()}
    for b in bins:
        assert {projection_kind(adapter, name) for name in b.entries} == {kinds[b.unit // n_bins]}
        assert b.layer == -1 and b.name == f"{kinds[b.unit // n_bins]} bin {b.unit % n_bins} of {n_bins}"
        for name, idx in b.entries.items():
            counts[name][idx] += 1
    assert all((c == 1).all() for c in counts.values())  # every entry in exactly one bin
    for t in range(len(kinds)):  # bins are ordered by |w| within a kind and have (nearly) equal sizes
        typed = bins[t * n_bins:(t + 1) * n_bins]
        sizes = [b.n_weights for b in typed]
        assert max(sizes) - min(sizes) <= 1
        mags = [torch.cat([modules[n].weight.detach().reshape(-1)[i].abs() for n, i in b.entries.items()])
                for b in typed]
        for lo, hi in itertools.pairwise(mags):
            assert lo.max() <= hi.min()


def test_matrix_magnitude_bins_partition_each_matrix_in_order(setup):
    adapter, _ = setup
    modules = adapter.linear_modules()
    bins = list(matrix_magnitude_units(adapter, 3))
    layers = [m.layer for m in matrix_units(adapter)]
    assert len(bins) == 3 * len(modules) and [b.unit for b in bins] == list(range(3 * len(modules)))
    for i, (name, module) in enumerate(modules.items()):
        mine = bins[3 * i:3 * (i + 1)]
        assert all(list(b.entries) == [name] for b in mine)
        assert all(b.layer == layers[i] for b in mine)
        flat = module.weight.detach().reshape(-1).abs()
        together = torch.cat([b.entries[name] for b in mine])
        assert torch.equal(together.sort().values, torch.arange(flat.numel()))  # a partition of the matrix
        for lo, hi in itertools.pairwise(mine):
            assert flat[lo.entries[name]].max() <= flat[hi.entries[name]].min()


def test_random_controls_match_bin_sizes_and_are_seeded(setup):
    adapter, _ = setup
    bins = list(magnitude_units(adapter, 5))
    controls = list(random_units(adapter, 5, seed=7))
    again = list(random_units(adapter, 5, seed=7))
    other = list(random_units(adapter, 5, seed=8))
    assert [c.unit for c in controls] == [b.unit for b in bins]
    for b, c, a, o in zip(bins, controls, again, other):
        assert c.n_weights == b.n_weights
        # the bin's composition: as many entries from each matrix as the bin holds in it
        assert {n: i.numel() for n, i in c.entries.items()} == {n: i.numel() for n, i in b.entries.items()}
        assert c.entries.keys() == a.entries.keys()
        assert all(torch.equal(c.entries[n], a.entries[n]) for n in c.entries)
        for idx in c.entries.values():
            assert idx.unique().numel() == idx.numel()
        assert any(n not in o.entries or not torch.equal(c.entries[n], o.entries[n]) for n in c.entries)


def site_inputs(adapter, layer: int, run) -> list[torch.Tensor]:
    """Every input the attention output projection of `layer` gets while `run()` runs: the head site,
    after any intervention's hook (those are prepended, so they run first)."""
    seen = []
    handle = adapter.attn_out_proj(layer).register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    try:
        run()
    finally:
        handle.remove()
    return seen


def alone(adapter, layer: int, tokens) -> torch.Tensor:
    """(len(tokens), site width): the head site of one sequence run alone, unpadded."""
    [acts] = site_inputs(adapter, layer, lambda: logits(adapter.model, torch.tensor([list(tokens)])))
    return acts[0]


def docs_of_lengths(lengths, seed: int) -> tuple[Doc, ...]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(Doc(i, tuple(torch.randint(0, 64, (n,), generator=gen).tolist()), ((1,), (2,)), (1, 1), 0)
                 for i, n in enumerate(lengths))


def written(adapter, layer: int, docs, context) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The head site under `context()`: each doc's context run alone, and all of them in one right-padded batch."""
    ids = torch.zeros(len(docs), max(len(d.context) for d in docs), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, d in enumerate(docs):
        ids[row, : len(d.context)], mask[row, : len(d.context)] = torch.tensor(d.context), 1
    with context():
        singles = [site_inputs(adapter, layer, lambda d=d: logits(adapter.model, torch.tensor([d.context])))[0][0]
                   for d in docs]
        with torch.no_grad():
            [batched] = site_inputs(adapter, layer, lambda: adapter.model(input_ids=ids, attention_mask=mask))
    return singles, batched


def test_mean_writes_the_dev_mean_at_each_end_aligned_position(setup):
    """Position k before the last context token takes the mean over dev documents at k before their last
    context token (over those whose context reaches back that far), not the last position's mean; a
    position beyond every dev context takes the farthest one. The same alone and in a padded batch, and
    the other heads keep their own activations."""
    adapter, _ = setup
    layer, head, d = 1, 2, adapter.d_head
    dev = docs_of_lengths([3, 5, 6, 8, 4, 7, 3, 8], seed=1)
    means, stds = site_stats(adapter, dev, "heads", batch_size=3)
    clean = [alone(adapter, layer, doc.context) for doc in dev]
    longest = max(len(doc.context) for doc in dev)
    by_offset = torch.stack([torch.stack([a[-1 - k] for a in clean if len(a) > k]).mean(0) for k in range(longest)])
    assert (by_offset[1:] - by_offset[0]).abs().max() > 1e-2  # earlier positions differ from the last one
    # noise still matches each dimension's spread at the last context position
    assert torch.allclose(stds[("heads", layer)], torch.stack([a[-1] for a in clean]).std(0, correction=0), atol=ATOL)
    recipients = docs_of_lengths([2, 6, 11], seed=2)  # 11 tokens: longer than every dev context
    cut = slice(head * d, (head + 1) * d)
    singles, batched = written(adapter, layer, recipients,
                               lambda: apply(adapter, [UnitSpec("heads", layer, (head,), "mean")], means=means))
    for row, (doc, single) in enumerate(zip(recipients, singles)):
        n = len(doc.context)
        expected = by_offset[torch.arange(n - 1, -1, -1).clamp(max=longest - 1)]  # position t: offset n - 1 - t
        assert torch.allclose(single[:, cut], expected[:, cut], atol=ATOL)
        assert torch.allclose(batched[row, :n, cut], expected[:, cut], atol=ATOL)
        own = alone(adapter, layer, doc.context)
        assert torch.allclose(single[:, : head * d], own[:, : head * d], atol=ATOL)
        assert torch.allclose(single[:, (head + 1) * d:], own[:, (head + 1) * d:], atol=ATOL)


def test_resample_writes_the_donors_own_activation_at_each_end_aligned_position(setup):
    """With one donor longer than every example, each example's last n positions take the donor's last n
    activations, position by position, alone and in a padded batch."""
    adapter, _ = setup
    layer, head, d = 1, 2, adapter.d_head
    [donor] = docs_of_lengths([9], seed=3)
    pool = resample_pool(adapter, (donor,), "heads", seed=0)
    own = alone(adapter, layer, donor.context)
    recipients = docs_of_lengths([2, 5, 9], seed=4)
    cut = slice(head * d, (head + 1) * d)
    singles, batched = written(adapter, layer, recipients,
                               lambda: apply(adapter, [UnitSpec("heads", layer, (head,), "resample")], pool=pool))
    for row, (doc, single) in enumerate(zip(recipients, singles)):
        n = len(doc.context)
        assert torch.allclose(single[:, cut], own[-n:, cut], atol=ATOL)
        assert torch.allclose(batched[row, :n, cut], own[-n:, cut], atol=ATOL)


def test_map_lists():
    assert MAP_GROUPS == ("heads", "neurons", "attn", "mlp", "layers", "single_neurons", "neuron_clusters", "matrix",
                          "magnitude", "magnitude_matrix", "random")
    assert MAP_OPS == ("zero", "scale", "mean", "noise", "resample")


def random_docs(n: int, seed: int) -> tuple[Doc, ...]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(Doc(i, tuple(torch.randint(0, 64, (int(k),), generator=gen).tolist()), ((1,), (2,), (3,)),
                     (1, 1, 1), 0)
                 for i, k in enumerate(torch.randint(3, 10, (n,), generator=gen)))


def test_with_one_reference_doc_resample_and_mean_write_the_same(setup):
    """One reference doc is both the only donor and its own mean, position by position."""
    adapter, ids = setup
    [reference] = random_docs(1, seed=3)
    pool = resample_pool(adapter, (reference,), "heads", seed=0)
    means, _ = site_stats(adapter, (reference,), "heads")
    spec = UnitSpec("heads", 1, (2,), "resample")
    with apply(adapter, [spec], pool=pool):
        resampled = logits(adapter.model, ids)
    with apply(adapter, [UnitSpec("heads", 1, (2,), "mean")], means=means):
        assert torch.allclose(resampled, logits(adapter.model, ids), atol=ATOL)
    assert (resampled - logits(adapter.model, ids)).abs().max() > 1e-3


def test_resample_donors_reach_back_as_far_as_the_example_and_skip_the_example_itself(setup):
    """Each example's donor has a context at least as long (the longest ones for an example longer than
    all), is never the example itself, and is what the example's positions get, in any batch."""
    adapter, _ = setup
    layer, head, d = 1, 1, adapter.d_head
    dev = docs_of_lengths([3, 4, 5, 6, 7, 8, 9, 3, 4, 5, 6, 7, 4, 5], seed=5)
    pool = resample_pool(adapter, dev, "heads", seed=0)
    longest = max(len(doc.context) for doc in dev)
    recipients = (*dev[:4], *docs_of_lengths([2, 6, 12], seed=6))
    donors = [pool.donor(token_key(doc.context), len(doc.context)) for doc in recipients]
    for doc, donor in zip(recipients, donors):
        assert len(dev[donor].context) >= min(len(doc.context), longest)
        assert dev[donor].context != doc.context
    assert len(set(donors)) > 3  # spread over the pool, not one fixed donor
    cut = slice(head * d, (head + 1) * d)
    singles, batched = written(adapter, layer, recipients,
                               lambda: apply(adapter, [UnitSpec("heads", layer, (head,), "resample")], pool=pool))
    for row, (doc, donor, single) in enumerate(zip(recipients, donors, singles)):
        own = alone(adapter, layer, dev[donor].context)
        n, m = len(doc.context), len(own)
        expected = own[(m - n + torch.arange(n)).clamp(min=0)]  # before the donor's first token: its first
        assert torch.allclose(single[:, cut], expected[:, cut], atol=ATOL)
        assert torch.allclose(batched[row, :n, cut], expected[:, cut], atol=ATOL)


def test_resample_results_do_not_depend_on_batching_or_the_seed_alone(setup):
    adapter, _ = setup
    docs = random_docs(12, seed=4)
    pool = resample_pool(adapter, docs, "neurons", seed=7)
    spec = UnitSpec("neurons", 0, tuple(range(adapter.d_ffn)), "resample")
    with apply(adapter, [spec], pool=pool):
        one_by_one = score(adapter.model, docs, batch_size=1)
        batched = score(adapter.model, docs, batch_size=5)
    clean = score(adapter.model, docs, batch_size=5)
    for a, b in zip(one_by_one.lls, batched.lls):
        assert np.allclose(a, b, atol=1e-5)
    assert max(np.abs(a - c).max() for a, c in zip(batched.lls, clean.lls)) > 1e-3
    other = resample_pool(adapter, docs, "neurons", seed=8)  # the seed changes the draw
    keys = [(token_key(d.context), len(d.context)) for d in docs]
    assert [other.donor(*k) for k in keys] != [pool.donor(*k) for k in keys]


# Multi-token choices: a reference whose gold answer is three tokens (two of them inputs), and an example
# whose packed row holds a three-token and a one-token choice after its context.
GOLD_LONG = Doc(0, (5, 9, 14, 3, 8, 2), ((7, 8, 10), (11,)), (3, 1), 0)
PACKED = Doc(1, (4, 4, 8, 1), ((1, 2, 3, 5), (6, 6), (12,)), (4, 2, 1), 1)


def test_choice_tokens_take_the_gold_continuation_at_the_same_place(setup):
    """In a packed row, the j-th input token of every choice takes the reference's j-th gold continuation
    input token (its last one beyond it), and the context positions the reference's context, end-aligned."""
    adapter, _ = setup
    layer, head, d = 1, 3, adapter.d_head
    own = alone(adapter, layer, GOLD_LONG.context + (7, 8))  # 6 context tokens, then 2 continuation inputs
    # packed row: context at 0..3 (offsets 3..0), choice 0's inputs (1, 2, 3), choice 1's (6,), choice 2 none
    expected = own[[2, 3, 4, 5, 6, 7, 7, 6]]
    cut = slice(head * d, (head + 1) * d)
    pool = resample_pool(adapter, (GOLD_LONG,), "heads", seed=0)
    means, _ = site_stats(adapter, (GOLD_LONG,), "heads")
    for spec, kw in ((UnitSpec("heads", layer, (head,), "resample"), {"pool": pool}),
                     (UnitSpec("heads", layer, (head,), "mean"), {"means": means})):
        with apply(adapter, [spec], **kw):
            [packed] = site_inputs(adapter, layer, lambda: score(adapter.model, [PACKED], 1))
        assert packed.shape[1] == len(expected)
        assert torch.allclose(packed[0, :, cut], expected[:, cut], atol=ATOL)


def test_mean_and_resample_do_not_depend_on_how_choices_are_laid_out(setup):
    """A packed row, one sequence per choice, and (mean) the context cached once: every position sits at
    the same end-aligned place in each, so the log-likelihoods agree."""
    from paramscope.evaluation.scorer import score_shared_context

    adapter, _ = setup
    reference = (GOLD_LONG, *random_docs(6, seed=9))
    means, _ = site_stats(adapter, reference, "mlp")
    pool = resample_pool(adapter, reference, "mlp", seed=1)
    clean = score(adapter.model, [PACKED], 1).lls[0]
    for spec, kw in ((UnitSpec("mlp", 0, (), "mean"), {"means": means}),
                     (UnitSpec("mlp", 0, (), "resample"), {"pool": pool})):
        with apply(adapter, [spec], **kw):
            packed = score(adapter.model, [PACKED], 1).lls[0]
            separate = score(adapter.model, [PACKED], 1, share_context=False).lls[0]
            cached = score_shared_context(adapter.model, PACKED)
        assert np.abs(packed - clean).max() > 1e-3
        np.testing.assert_allclose(separate, packed, rtol=0, atol=1e-5)
        if spec.op == "mean":  # the cached path keys a donor on the context it runs first, without its last token
            np.testing.assert_allclose(cached, packed, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def grid(smoke_suite, tmp_path_factory):
    """A models folder with a tiny random GPT-NeoX as `scratch`, and a cfg maker for the ablate stage."""
    from paramscope.models.zoo import save_model

    _, data = smoke_suite
    tmp = tmp_path_factory.mktemp("atlas")
    tok = AutoTokenizer.from_pretrained(data / "tokenizer")
    model = tiny_random_model("gpt_neox", seed=2, vocab_size=len(tok))
    save_model(model, tok, tmp / "models" / "scratch", {"variant": "scratch", "test": True})

    def cfg(*overrides):
        return make_cfg("ablate", [
            "profile=smoke", f"paths.data={data}", f"paths.tasks={data / 'tasks'}",
            f"paths.tokenizer={data / 'tokenizer'}", f"paths.train={data / 'train'}",
            f"paths.models={tmp / 'models'}", f"paths.results={tmp / 'results'}", "model=scratch",
            "task=induction", "device=cpu", *overrides,
        ])

    return cfg, tmp / "results"


BASE_COLUMNS = ["model", "digest", "task", "split", "cell", "group", "layer", "unit", "n_units", "op", "value",
                "n", "delta_acc", "loss", "loss_clean", "delta_loss", "ex_correct", "ex_gold_ll", "unit_name"]


def read_cells(results, prefix):
    files = sorted((results / "ablate").glob(f"{prefix}*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True), len(files)


@pytest.mark.parametrize("group, op, value, n_rows", [("heads", "mean", 0.0, 12), ("heads", "resample", 0.0, 12),
                                                      ("magnitude", "zero", 0.0, 12),
                                                      ("random", "zero", 0.0, 12), ("heads", "noise", 1.0, 12)])
def test_grid_writes_rows_in_the_atlas_schema(grid, group, op, value, n_rows):
    from paramscope.ablation.run import run_grid

    make, results = grid
    cfg = make(f"group={group}", f"op={op}", f"value={value}", "ablate.magnitude_bins=3")
    counts = run_grid(cfg, results)
    assert counts["computed"] == 2  # dev and test
    df, n_files = read_cells(results, f"{group}-{op}-{value:g}-")
    assert n_files == 2
    assert set(BASE_COLUMNS) <= set(df.columns)
    assert len(df) == 2 * n_rows and set(df.split) == {"dev", "test"}
    assert (df.group == group).all() and (df.op == op).all() and (df.value == value).all()
    assert not df.duplicated(["split", "layer", "unit"]).any()
    assert df.unit_name.map(lambda s: isinstance(s, str) and len(s) > 0).all()
    if group == "heads":
        assert (df.n_units == 1).all() and set(df.layer) == {0, 1, 2} and set(df.unit) == {0, 1, 2, 3}
    else:
        assert (df.layer == -1).all() and sorted(set(df.unit)) == list(range(12))  # 4 kinds x 3 bins
        per_kind = df[df.split == "test"].sort_values("unit").n_units.to_numpy().reshape(4, 3).sum(axis=1)
        adapter = get_adapter(tiny_random_model("gpt_neox", vocab_size=8))
        sizes: dict[str, int] = {}
        for name, m in adapter.linear_modules().items():
            kind = projection_kind(adapter, name)
            sizes[kind] = sizes.get(kind, 0) + m.weight.numel()
        assert per_kind.tolist() == list(sizes.values())  # each kind's bins hold exactly that kind's weights
    assert run_grid(cfg, results)["skipped"] == 2  # finished cells are found by key
    if op == "noise":  # seeded: recomputing gives the same numbers
        first = df.sort_values(["split", "layer", "unit"]).ex_gold_ll.tolist()
        for f in (results / "ablate").glob(f"{group}-{op}-{value:g}-*.parquet"):
            f.unlink()
        run_grid(cfg, results)
        df2, _ = read_cells(results, f"{group}-{op}-{value:g}-")
        assert [list(x) for x in df2.sort_values(["split", "layer", "unit"]).ex_gold_ll] == [list(x) for x in first]


def test_grid_refuses_ops_that_do_not_apply(grid):
    from paramscope.ablation.run import Plan
    from paramscope.errors import StudyError

    make, _ = grid
    with pytest.raises(StudyError, match="op 'mean' does not apply to weight group 'magnitude'; valid: zero, scale"):
        Plan.from_cfg(make("group=magnitude", "op=mean"))
    with pytest.raises(StudyError, match="op 'noise' needs value > 0"):
        Plan.from_cfg(make("group=heads", "op=noise"))


def test_pairs_are_chosen_on_dev_and_measure_non_additivity(grid):
    from paramscope.ablation.pairs import top_units
    from paramscope.ablation.run import run_grid
    from paramscope.evaluation.tasks import task_docs
    from paramscope.models import zoo

    make, results = grid
    cfg = make("group=pairs", "ablate.pair_top_k=3")
    assert run_grid(cfg, results)["computed"] == 2
    df, _ = read_cells(results, "pairs-zero-0-")
    assert len(df) == 2 * 3 and set(df.group) == {"pairs"}
    dev, test = (df[df.split == s].sort_values("unit").reset_index(drop=True) for s in ("dev", "test"))
    assert dev[["unit_a", "unit_b"]].equals(test[["unit_a", "unit_b"]])  # one choice, made on dev
    model, tok = zoo.load("scratch", Path(cfg.paths.models))
    adapter = get_adapter(model)
    dev_docs = task_docs(cfg, "induction", "dev", tok).docs
    tops = [spec for spec, _ in top_units(adapter, dev_docs, "heads", 3, neuron_block=cfg.ablate.neuron_block)]
    a, b = tops[0], tops[1]
    row = test[(test.rank_a == 0) & (test.rank_b == 1)].iloc[0]
    docs = task_docs(cfg, "induction", "test", tok).docs
    clean = score(model, docs).correct.mean()
    acc_a, acc_b = (score_with(adapter, docs, [s]) for s in (a, b))
    acc_ab = score_with(adapter, docs, [a, b])
    expected = (clean - acc_ab) - (clean - acc_a) - (clean - acc_b)
    assert row.nonadd == pytest.approx(expected, abs=1e-12)
    assert row.delta_acc == pytest.approx(acc_ab - clean, abs=1e-12)
    assert row.nonadd_ci_low <= row.nonadd <= row.nonadd_ci_high
    assert run_grid(cfg, results)["skipped"] == 2


def score_with(adapter, docs, specs) -> float:
    with apply(adapter, specs):
        return float(score(adapter.model, docs).correct.mean())


def test_ffn_is_the_neuron_blocks_under_another_name(grid):
    from paramscope.ablation.run import run_grid

    make, results = grid
    first = run_grid(make("group=neurons"), results)
    again = run_grid(make("group=ffn"), results)  # the same maps: found, not recomputed
    assert again["skipped"] == first["computed"] + first["skipped"] and again["computed"] == 0


def test_a_damaged_cell_is_recomputed_and_the_results_equal_the_undamaged_ones(grid, caplog):
    """One cell cut to 100 bytes, another a valid Parquet of other columns: reading the first is one clear
    error, a rerun recomputes both (a warning names each, nothing else is recomputed), and the stage's
    table, what the aggregate reads, equals the undamaged one."""
    import logging

    from paramscope.ablation.run import ROWS, run_grid
    from paramscope.errors import StudyError
    from paramscope.store import load_results, write_cell

    make, results = grid
    cfg = make("group=layers")
    run_grid(cfg, results)

    def table() -> pd.DataFrame:
        df = load_results("ablate", results, with_examples=True, schema=ROWS)
        df = df[df.group == "layers"].sort_values(["split", "layer", "unit"]).reset_index(drop=True)
        return df.assign(**{c: df[c].map(tuple) for c in df.columns if c.startswith("ex_")})

    before = table()
    cut, other = sorted((results / "ablate").glob("layers-zero-0-*.parquet"))
    cut.write_bytes(cut.read_bytes()[:100])
    write_cell(pd.DataFrame({"model": ["scratch"], "other": [1.0]}), other)
    with pytest.raises(StudyError, match=f"damaged result cell {cut} "):
        load_results("ablate", results)
    with caplog.at_level(logging.WARNING, logger="paramscope.store"):
        counts = run_grid(cfg, results)
    assert (counts["computed"], counts["skipped"]) == (2, 0)
    assert f"damaged result cell {cut}" in caplog.text and f"damaged result cell {other}" in caplog.text
    pd.testing.assert_frame_equal(table(), before)
