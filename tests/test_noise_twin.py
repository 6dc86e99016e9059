"""The noise twin (the structure stage's drift reference): trained beside each variant, without touching it."""

import json
import shutil

import numpy as np
import pytest
from helpers import make_cfg

from paramscope.errors import StudyError
from paramscope.models import zoo
from paramscope.models.adapters import get_adapter
from paramscope.models.noise_twin import train_noise_twin
from paramscope.models.train import train_variant
from paramscope.structure.null_test import Weights, entry_tests
from paramscope.structure.run import projection_weights

VARIANTS = ("scratch", "gen2")  # from scratch, and trained further from it


def _train(data, out, *overrides) -> None:
    cfg = make_cfg("train", ["profile=smoke", *overrides])
    for name in VARIANTS:
        train_variant(cfg, name, out, data, logger=False)


@pytest.fixture(scope="module")
def trained(smoke_suite, tmp_path_factory):
    """The smoke variants trained with their noise twins and, in another folder, without."""
    _, data = smoke_suite
    tmp = tmp_path_factory.mktemp("twins")
    _train(data, tmp / "with")
    _train(data, tmp / "without", "train.noise_twin=null")
    return data, tmp


def _projections(name, folder):
    return projection_weights(get_adapter(zoo.load(name, folder)[0]))


def test_training_the_twins_leaves_every_variant_bit_identical(trained):
    _, tmp = trained
    for name in ("scratch-step0", *VARIANTS):
        assert zoo.digest(zoo.load(name, tmp / "with")[0]) == zoo.digest(zoo.load(name, tmp / "without")[0]), name
    assert sorted(p.name for p in (tmp / "without").iterdir()) == ["gen2", "scratch", "scratch-step0"]


def test_each_twin_starts_where_its_variant_started_and_takes_as_many_steps(trained):
    _, tmp = trained
    for name, start in (("scratch", "scratch-step0"), ("gen2", "scratch-noise")):
        twin = json.loads((tmp / "with" / f"{name}-noise" / "paramscope.json").read_text())
        variant = json.loads((tmp / "with" / name / "paramscope.json").read_text())
        assert (twin["noise_twin_of"], twin["start"], twin["steps"]) == (name, start, variant["steps"])
    step0, twin = _projections("scratch-step0", tmp / "with"), _projections("scratch-noise", tmp / "with")
    assert all(np.abs(twin[n] - step0[n]).max() > 0 for n in step0)  # it walked


def test_two_twins_of_one_start_are_each_others_null(trained, tmp_path):
    """Null calibration on the real construction: a second twin (another token stream) tested against the
    first as its drift reference is indistinguishable from it almost everywhere."""
    _, tmp = trained
    shutil.copytree(tmp / "with" / "scratch-step0", tmp_path / "scratch-step0")
    cfg = make_cfg("train", ["profile=smoke", "seed=1"])
    train_noise_twin(cfg, "scratch", tmp_path, int(cfg.train.variants.scratch.steps))
    init = _projections("scratch-step0", tmp / "with")
    weights = Weights(_projections("scratch-noise", tmp_path), init, _projections("scratch-noise", tmp / "with"))
    tests = entry_tests(weights, 0.05)
    p = np.concatenate([tests.drift.p[n].ravel() for n in init])
    q = np.concatenate([tests.drift.q[n].ravel() for n in init])
    assert 0.4 < p.mean() < 0.6 and np.mean(q <= 0.05) < 0.01


@pytest.mark.parametrize("name, overrides, message", [
    ("scratch", ["train.variants.scratch.save_step0=false"], "set train.variants.scratch.save_step0: true"),
    ("gen2", [], "the noise twin of 'gen2' starts from that of 'scratch', but"),
])
def test_a_twin_without_its_start_is_refused_before_the_variant_trains(trained, tmp_path, name, overrides, message):
    data, tmp = trained
    folder = tmp_path / "models"
    shutil.copytree(tmp / "without", folder)  # scratch, but no scratch-noise
    cfg = make_cfg("train", ["profile=smoke", *overrides])
    with pytest.raises(StudyError, match=message):
        train_variant(cfg, name, folder, data, logger=False)
    assert sorted(p.name for p in folder.iterdir()) == ["gen2", "scratch", "scratch-step0"]
