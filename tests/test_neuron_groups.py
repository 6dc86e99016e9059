"""FFN neuron groupings beside contiguous blocks: k-means clusters of dev activations and single neurons."""

import numpy as np
import pytest
from helpers import smoke_test_docs
from omegaconf import OmegaConf

from paramscope.ablation.atlas import ablation_map
from paramscope.ablation.interventions import UnitSpec, apply
from paramscope.ablation.neuron_groups import cluster_neurons, cluster_specs
from paramscope.ablation.reference import last_context_activations
from paramscope.ablation.run import Plan
from paramscope.errors import StudyError
from paramscope.evaluation.scorer import score
from paramscope.models.adapters import get_adapter
from paramscope.models.random_models import tiny_random_model


def test_clusters_recover_neurons_that_co_activate():
    rng = np.random.default_rng(0)
    signals = rng.normal(size=(60, 3))  # three independent activation patterns over 60 documents
    planted = np.array([0, 1, 2, 0, 1, 2, 2, 0, 1, 0, 2, 1])
    acts = signals[:, planted] * rng.uniform(0.5, 4.0, size=12) + rng.uniform(-3, 3, size=12)
    acts += 0.05 * rng.normal(size=acts.shape)
    acts = np.c_[acts, np.full(60, 0.7)]  # a neuron that never varies: no NaN, it joins some cluster
    clusters = cluster_neurons(acts, 3, seed=0)
    found = {tuple(c[c < 12]) for c in clusters}
    assert found == {tuple(np.flatnonzero(planted == g)) for g in range(3)}
    assert sorted(np.concatenate(clusters).tolist()) == list(range(13))  # a partition of the neurons
    assert [c.tolist() for c in cluster_neurons(acts, 3, seed=0)] == [c.tolist() for c in clusters]


@pytest.fixture(scope="module")
def setup(smoke_suite):
    found, vocab = smoke_test_docs(smoke_suite[1], limit=4)
    adapter = get_adapter(tiny_random_model("gpt_neox", seed=2, vocab_size=vocab))
    dev, test = found[::2], found[1::2]
    return adapter, dev, test, score(adapter.model, test)


def test_cluster_map_partitions_each_layer_and_equals_the_loop(setup):
    adapter, dev, test, clean = setup
    block = adapter.d_ffn // 4
    df = ablation_map(adapter, test, "neuron_clusters", "zero", 0.0, clean, 1000, 0, neuron_block=block,
                      reference=dev)
    assert set(df.group) == {"neuron_clusters"} and set(df.checked) == {"all"}
    for layer, rows in df.groupby("layer"):
        assert 1 <= len(rows) <= 4 and rows.n_units.sum() == adapter.d_ffn
    # Fitted on dev: the same clusters for every split scored.
    again = ablation_map(adapter, dev, "neuron_clusters", "zero", 0.0, score(adapter.model, dev), 1000, 0,
                         neuron_block=block, reference=dev)
    assert again[["layer", "unit", "n_units"]].equals(df[["layer", "unit", "n_units"]])
    # A cluster's row is the model scored with exactly those neurons zeroed.
    row = df.iloc[len(df) // 2]
    assert 1 < row.n_units < adapter.d_ffn  # a real cluster, not a whole layer: the test means something
    specs = cluster_specs(last_context_activations(adapter, dev, "neurons"), adapter.d_ffn, block, 0)
    spec = next(s for s in specs if s.layer == row.layer and s.units[0] == row.unit)
    with apply(adapter, [spec]):
        looped = score(adapter.model, test)
    assert row.acc == pytest.approx(looped.correct.mean())
    assert row.loss == pytest.approx(float(-looped.gold_ll.mean()), abs=1e-5)


def test_single_neurons_are_screened_on_dev(setup):
    adapter, dev, test, clean = setup
    df = ablation_map(adapter, test, "single_neurons", "zero", 0.0, clean, 1000, 0, reference=dev,
                      single_neuron_units=3)
    assert (df.n_units == 1).all() and len(df) == 6
    assert sorted(df.checked) == ["random"] * 3 + ["screen-top"] * 3
    spec = UnitSpec("neurons", int(df.layer.iloc[0]), (int(df.unit.iloc[0]),), "zero", 0.0)
    with apply(adapter, [spec]):
        assert df.acc.iloc[0] == pytest.approx(score(adapter.model, test).correct.mean())


@pytest.mark.parametrize("group", ["single_neurons", "neuron_clusters"])
def test_neuron_groupings_are_zero_maps_only(group):
    cfg = OmegaConf.create({"group": group, "op": "scale", "value": 0.5, "ablate": {"pair_group": "heads"}})
    with pytest.raises(StudyError, match=f"group '{group}' is chosen on dev for zero ablation; got op 'scale'"):
        Plan.from_cfg(cfg)
