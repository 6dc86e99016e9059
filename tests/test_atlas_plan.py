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
    cfg = _cfg(leave_out={"groups": ["neurons"], "ops": ["mean"]})
    assert "leaves out group 'neurons'" in profile_leaves_out(cfg)
    assert profile_leaves_out(OmegaConf.merge(cfg, {"group": "heads"})) is None
    assert "leaves out op 'mean'" in profile_leaves_out(OmegaConf.merge(cfg, {"group": "heads", "op": "mean"}))
    assert profile_leaves_out(_cfg()) is None
    # the job computes nothing and writes nothing (no model is even looked for)
    assert run_grid(cfg, tmp_path) == {"computed": 0, "skipped": 0, "left_out": 1}
    assert not any(tmp_path.iterdir())
