"""Shared fixtures (one torch thread, a prepared smoke suite) and the environment every test runs in, set
once here: no hub, no dataset download, no W&B. Plain helpers live in `tests/helpers`."""

import os

# Assigned, not defaulted: a user's WANDB_MODE=online or hub access must not leak into a test run. Stages
# that tests start as subprocesses inherit these.
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false")

import pytest
import torch
from helpers import make_cfg


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Two cores shared with other processes: one torch thread avoids oversubscription stalls."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def smoke_suite(tmp_path_factory):
    """The smoke profile's data folder (tokenizer, lm-eval tasks, training mixtures)."""
    from paramscope.data.prepare import prepare

    out = tmp_path_factory.mktemp("suite") / "data"
    cfg = make_cfg("prepare", ["profile=smoke"])
    prepare(cfg, out)
    return cfg, out
