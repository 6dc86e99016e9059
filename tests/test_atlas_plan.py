"""What a profile's atlas runs: the documents it caps per split and the maps it leaves out."""

import pytest
from omegaconf import OmegaConf

from paramscope.ablation.run import atlas_max_docs, capped, profile_leaves_out, run_grid
from paramscope.errors import StudyError


def _cfg(**ablate):
    return OmegaConf.create({"profile_name": "real", "group": "neurons", "op": "zero", "value": 0.0,
                             "ablate": ablate})


def test_capped_draws_a_seeded_sample_in_document_order():
    docs = tuple(range(100))  # stand-ins: documents grouped by subtask come in blocks
    a, b = capped(docs, 10, seed=0), capped(docs, 10, seed=0)
    assert a == b and len(a) == 10 and list(a) == sorted(a)
    assert max(a) > 50  # a sample of the whole split, not its first ten
    assert capped(docs, 10, seed=1) != a
    assert capped(docs, None, seed=0) == docs and capped(docs[:5], 10, seed=0) == docs[:5]


@pytest.mark.parametrize("bad", [0, -3, 2.5, "ten", True])
def test_max_docs_must_be_a_positive_integer_or_null(bad):
    assert atlas_max_docs(_cfg(max_docs=None)) is None and atlas_max_docs(_cfg(max_docs=24)) == 24
    with pytest.raises(StudyError, match="ablate.max_docs must be a positive integer or null"):
        atlas_max_docs(_cfg(max_docs=bad))


def test_a_profile_leaves_out_maps_by_group_and_op_and_says_so(tmp_path):
    cfg = _cfg(leave_out={"groups": ["neurons"], "ops": ["mean"], "maps": ["heads/scale"]})
    assert "leaves out group 'neurons'" in profile_leaves_out(cfg)
    assert profile_leaves_out(OmegaConf.merge(cfg, {"group": "heads"})) is None
    assert "leaves out op 'mean'" in profile_leaves_out(OmegaConf.merge(cfg, {"group": "heads", "op": "mean"}))
    assert "leaves out map 'heads/scale'" in profile_leaves_out(OmegaConf.merge(cfg, {"group": "heads", "op": "scale"}))
    assert profile_leaves_out(OmegaConf.merge(cfg, {"group": "layers", "op": "scale"})) is None
    assert profile_leaves_out(_cfg()) is None
    # the job computes nothing and writes nothing (no model is even looked for)
    assert run_grid(cfg, tmp_path) == {"computed": 0, "skipped": 0, "left_out": 1}
    assert not any(tmp_path.iterdir())


def test_a_screened_map_checks_the_dev_screens_top_units_and_as_many_random_ones(smoke_suite):
    """Chosen on dev, the same units on every split; each checked unit's row equals the full map's."""
    import numpy as np
    from helpers import smoke_test_docs

    from paramscope.ablation.atlas import ablation_map
    from paramscope.ablation.screen import attribution_screen
    from paramscope.evaluation.scorer import score
    from paramscope.models.adapters import get_adapter
    from paramscope.models.random_models import tiny_random_model

    found, vocab = smoke_test_docs(smoke_suite[1], limit=4)
    dev, test = found[::2], found[1::2]
    adapter = get_adapter(tiny_random_model("llama", seed=1, vocab_size=vocab))
    clean = score(adapter.model, test)
    full = ablation_map(adapter, test, "heads", "zero", 0.0, clean, 1000, 0)
    maps = [ablation_map(adapter, test, "heads", "zero", 0.0, clean, 1000, seed, reference=dev, exact_units=2)
            for seed in (0, 0, 1)]
    got = maps[0]
    assert len(got) == 4 and sorted(got["checked"]) == ["random", "random", "screen-top", "screen-top"]
    estimate = attribution_screen(adapter, dev, "heads")
    top = set(full["unit_name"].to_numpy()[np.argsort(estimate)[:2]])
    assert set(got.loc[got["checked"] == "screen-top", "unit_name"]) == top
    assert set(full["checked"]) == {"all"}
    for _, row in got.iterrows():
        same = full[full["unit_name"] == row["unit_name"]].iloc[0]
        assert row["delta_loss"] == same["delta_loss"] and row["screen_delta_gold_ll"] == same["screen_delta_gold_ll"]
    assert maps[1].equals(got)  # seeded
    assert set(maps[2]["unit_name"]) != set(got["unit_name"]) or len(full) <= 4  # another seed draws others


def test_the_real_profiles_atlas_plan_reaches_the_ablate_stage():
    """The stage's own config file comes after the profile in the defaults, so a key it also set would
    silently undo the profile's: the real profile's sizing must arrive intact."""
    from helpers import make_cfg

    cfg = make_cfg("ablate", ["profile=real"])
    assert atlas_max_docs(cfg) == 16 and cfg.ablate.exact_units == 16
    assert "neurons" in cfg.ablate.leave_out.groups and "heads/scale" in cfg.ablate.leave_out.maps
    tiny = make_cfg("ablate", ["profile=tiny"])
    assert atlas_max_docs(tiny) is None and tiny.ablate.get("exact_units") is None
    assert profile_leaves_out(OmegaConf.merge(tiny, {"group": "neurons"})) is None
