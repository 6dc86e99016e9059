"""The seven benchmarks of the paper profile, through lm-eval's own task definitions (templates, splits,
`process_docs`, winogrande's partial scoring, lambada's last word), with the hub replaced by small local
datasets of the same fields: our documents and scores equal lm-eval's simple_evaluate on each."""

from dataclasses import replace

import datasets
import numpy as np
import pytest
from helpers import make_cfg, standins
from transformers import AutoTokenizer

from paramscope.errors import StudyError
from paramscope.evaluation.harness import lm_eval_per_doc
from paramscope.evaluation.requests import build_docs
from paramscope.evaluation.scorer import score
from paramscope.evaluation.tasks import task_docs, task_metric
from paramscope.models.random_models import tiny_random_model

N_EVAL, TASKS = standins.N_EVAL, standins.TASKS


@pytest.fixture(scope="module")
def benchmark_rows(smoke_suite):
    """Generated rows of every split of the seven benchmarks, in the words of the smoke tokenizer."""
    _, data = smoke_suite
    tok = AutoTokenizer.from_pretrained(data / "tokenizer")
    return tok, standins.benchmark_rows(sorted(w for w in tok.get_vocab() if not w.startswith("<")))


@pytest.fixture
def local_hub(benchmark_rows, monkeypatch):
    """`datasets.load_dataset` answers the seven benchmarks' (path, name) with the generated rows."""
    tok, rows = benchmark_rows
    hub = {where: datasets.DatasetDict({split: datasets.Dataset.from_list(r) for split, r in splits.items()})
           for where, splits in rows.items()}
    asked = []

    real = datasets.load_dataset

    def load_dataset(path, name=None, **kwargs):
        asked.append((path, name))
        if (path, name) in hub:
            return hub[(path, name)]
        return real(path, name, **kwargs)  # local files; a hub name fails offline

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return tok, asked


@pytest.mark.parametrize("task", list(TASKS))
def test_real_task_definitions_score_as_lm_eval_scores_them(local_hub, task):
    tok, asked = local_hub
    model = tiny_random_model("gpt_neox", seed=3, vocab_size=len(tok))
    dev, test = (build_docs(task, tok, split, seed=0) for split in ("dev", "test"))
    assert TASKS[task][0] in asked  # the real YAML's dataset, not a stand-in task
    assert sorted(dev.doc_ids + test.doc_ids) == list(range(N_EVAL))  # the whole evaluation split, halved
    ours = score(model, test.docs, batch_size=4)
    ref = lm_eval_per_doc(model, tok, task, test.doc_ids, batch_size=4)
    assert sorted(ref) == test.doc_ids
    assert ours.correct.tolist() == [int(ref[i]["acc"]) for i in test.doc_ids]
    if task == "lambada_openai":  # one continuation: its log-likelihood is lm-eval's per-document value
        np.testing.assert_allclose(ours.gold_ll, [ref[i]["perplexity"] for i in test.doc_ids], atol=1e-4)
    elif task != "winogrande":  # winogrande reports acc only
        assert ours.correct_norm.tolist() == [int(ref[i]["acc_norm"]) for i in test.doc_ids]
    if task in ("piqa", "arc_easy", "sciq", "hellaswag"):  # choices of several tokens: the cached path
        assert any(max(len(c) for c in d.choices) > 1 for d in test.docs)


def test_task_data_reads_the_same_documents_from_local_files(local_hub, benchmark_rows, tmp_path):
    """`task_data` (offline) gives exactly the documents the hub dataset gives, through the same YAML."""
    tok, rows = benchmark_rows
    cfg = make_cfg("evaluate", ["profile=paper"])
    cfg.task_data = standins.write_task_data(rows, tmp_path)
    _, asked = local_hub
    for task in TASKS:
        for split in ("dev", "test"):
            local = task_docs(cfg, task, split, tok)
            hub = build_docs(task, tok, split, seed=0).docs
            # The profile decides the metric (acc_norm for arc_challenge, hellaswag); the documents are the hub's.
            assert local.docs == tuple(replace(d, metric=task_metric(cfg, task)) for d in hub), (task, split)
        assert len(local.docs) > 0
    assert asked[-2:] == [("json", None), TASKS["hellaswag"][0]], asked[-4:]  # local JSON, then the hub stand-in


def test_task_data_errors_are_one_line(benchmark_rows, tmp_path):
    tok, _ = benchmark_rows
    cfg = make_cfg("evaluate", ["profile=paper"])
    with pytest.raises(StudyError, match=r"cannot load the documents of task 'piqa' from the hub: .*task_data\.piqa"):
        task_docs(cfg, "piqa", "dev", tok)  # HF_DATASETS_OFFLINE=1 in tests: the hub is unreachable
    missing = make_cfg("evaluate", ["profile=paper", f"+task_data.piqa.files.validation={tmp_path / 'none.jsonl'}"])
    with pytest.raises(StudyError, match=r"task 'piqa' from its local files \(task_data\)"):
        task_docs(missing, "piqa", "dev", tok)
    wrong_split = make_cfg("evaluate", ["profile=paper", "+task_data.arc_easy.files.validation=x.jsonl"])
    with pytest.raises(StudyError, match="task_data.arc_easy.files must give the 'test' split, the one lm-eval's "
                                         "arc_easy evaluates; given: validation"):
        task_docs(wrong_split, "arc_easy", "dev", tok)  # validation documents would silently replace the test set
    bad = make_cfg("evaluate", ["profile=paper", "+task_data.piqa.format=xml", "+task_data.piqa.files.validation=x"])
    with pytest.raises(StudyError, match="task_data.piqa.format 'xml' is not supported; valid: json, parquet, csv"):
        task_docs(bad, "piqa", "dev", tok)
