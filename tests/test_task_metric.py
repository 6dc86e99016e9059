"""Each task is reported on its own metric (STUDY.md section 2): acc_norm where the profile names it, and
every accuracy built on the scorer (clean, ablated, deltas) follows it."""

import numpy as np
import pytest
from helpers import make_cfg
from transformers import AutoTokenizer

from paramscope.ablation.atlas import paired_row
from paramscope.ablation.engine import fast_map
from paramscope.errors import StudyError
from paramscope.evaluation.scorer import score
from paramscope.evaluation.tasks import split_definition, task_docs, task_metric
from paramscope.models.adapters import get_adapter
from paramscope.models.random_models import tiny_random_model


def _cfg(data, metrics: str | None):
    overrides = ["profile=smoke", f"paths.data={data}", f"paths.tasks={data / 'tasks'}"]
    if metrics:
        overrides.append(f"+task_metrics={metrics}")
    return make_cfg("ablate", overrides)


def _docs_where_the_metrics_disagree(cfg, tok, model) -> tuple:
    """Dev documents of every smoke task, kept where plain and length-normalised argmax differ."""
    found = []
    for task in cfg.tasks:
        docs = task_docs(cfg, task, "dev", tok).docs
        s = score(model, docs)
        found += [(task, d) for d, a, n in zip(docs, s.correct_acc, s.correct_norm) if a != n]
    return tuple(found)


@pytest.fixture(scope="module")
def setup(smoke_suite):
    _, data = smoke_suite
    tok = AutoTokenizer.from_pretrained(data / "tokenizer")
    model = tiny_random_model("gpt_neox", seed=5, vocab_size=len(tok))
    return data, tok, model


def test_a_task_on_acc_norm_is_scored_and_ablated_on_it(setup):
    data, tok, model = setup
    plain = _cfg(data, None)
    disagree = _docs_where_the_metrics_disagree(plain, tok, model)
    assert disagree, "no smoke document where acc and acc_norm differ: the test would prove nothing"
    task = disagree[0][0]
    normed = _cfg(data, f"{{{task}:acc_norm}}")
    assert task_metric(normed, task) == "acc_norm" and task_metric(plain, task) == "acc"

    docs = task_docs(normed, task, "dev", tok).docs
    clean = score(model, docs)
    assert clean.metric == "acc_norm"
    np.testing.assert_array_equal(clean.correct, clean.correct_norm)
    assert not np.array_equal(clean.correct, clean.correct_acc)  # the choice of metric matters here
    assert clean.summary()["acc"] == pytest.approx(clean.correct_norm.mean())

    # An ablation map's rows, deltas included, are on the task's metric too.
    adapter = get_adapter(model)
    (_, ablated), *_ = fast_map(adapter, docs, "heads", "zero", 0.0, 16)
    assert ablated.metric == "acc_norm"
    row = paired_row(clean, ablated, n_resamples=1000, seed=0)
    assert row["acc_clean"] == pytest.approx(clean.correct_norm.mean())
    assert row["acc"] == pytest.approx(ablated.correct_norm.mean())


def test_a_metric_changes_the_cell_keys_only_where_it_is_not_plain_accuracy(smoke_suite):
    _, data = smoke_suite
    plain, same, normed = _cfg(data, None), _cfg(data, "{kv:acc}"), _cfg(data, "{kv:acc_norm}")
    assert split_definition(plain) == split_definition(same)
    assert split_definition(normed) != split_definition(plain)


def test_an_unknown_metric_is_one_clear_error(smoke_suite):
    _, data = smoke_suite
    with pytest.raises(StudyError, match="task_metrics.kv .f1.; valid: acc, acc_norm"):
        task_metric(_cfg(data, "{kv:f1}"), "kv")
