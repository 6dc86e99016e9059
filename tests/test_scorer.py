"""Our scorer against lm-eval's HFLM on the same model and documents: identical per-document results."""

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from paramscope.data.lm_eval_tasks import lm_eval_name, write_task
from paramscope.data.synthetic import TASKS, Item
from paramscope.evaluation.documents import Doc
from paramscope.evaluation.harness import lm_eval_per_doc
from paramscope.evaluation.requests import build_docs
from paramscope.evaluation.scorer import score
from paramscope.models.random_models import tiny_random_model


def _random_model(family: str, vocab_size: int):
    return tiny_random_model(family, seed=3, vocab_size=vocab_size)


@pytest.mark.parametrize("family", ["gpt_neox", "gpt2"])
@pytest.mark.parametrize("task", TASKS)
def test_accuracy_equals_lm_eval_per_document(smoke_suite, family, task):
    _, data = smoke_suite
    tok = AutoTokenizer.from_pretrained(data / "tokenizer")
    model = _random_model(family, len(tok))
    docs = build_docs(lm_eval_name(task), tok, "test", seed=0, include_path=data / "tasks")
    ours = score(model, docs.docs, batch_size=7)
    ref = lm_eval_per_doc(model, tok, lm_eval_name(task), docs.doc_ids, include_path=data / "tasks", batch_size=5)
    assert sorted(ref) == sorted(docs.doc_ids)
    assert ours.correct.tolist() == [int(ref[i]["acc"]) for i in docs.doc_ids]
    assert ours.correct_norm.tolist() == [int(ref[i]["acc_norm"]) for i in docs.doc_ids]


def _multi_token_task(root, tok):
    items = [
        Item("multi", "ind s1 s2 s3 . s1", ("s2 s3", "s3", "s9 s8 s7", "s2"), 0),
        Item("multi", "kv k1 s4 k2 s5 . k2", ("s5", "s4 s4", "k1 s5 s6", "s6 s5"), 1),
        Item("multi", "fact e1", ("lives c1", "likes h2 ; fact", "lives"), 2),
    ]
    write_task(root, "multi", items)
    return lm_eval_name("multi")


def test_shared_context_path_equals_lm_eval(smoke_suite, tmp_path):
    _, data = smoke_suite
    tok = AutoTokenizer.from_pretrained(data / "tokenizer")
    name = _multi_token_task(tmp_path, tok)
    model = _random_model("gpt_neox", len(tok))
    docs = build_docs(name, tok, "test", seed=0, dev_fraction=0.34, include_path=tmp_path)
    assert any(len(c) > 1 for d in docs.docs for c in d.choices)
    ours = score(model, docs.docs)
    ref = lm_eval_per_doc(model, tok, name, docs.doc_ids, include_path=tmp_path)
    assert ours.correct.tolist() == [int(ref[i]["acc"]) for i in docs.doc_ids]


@pytest.mark.parametrize("family", ["gpt_neox", "gpt2", "llama", "qwen2", "gpt_neo"])
def test_log_likelihoods_equal_full_sequence_scoring(smoke_suite, tmp_path, family):
    """Both fast paths against the plain definition: sum of log p(token) over the continuation. Packed
    rows restart each choice's position ids after the context (GPT-2's learned positions, rotary
    elsewhere) and hide the other choices; GPT-Neo's local window takes rows too long to pack to the
    key/value cache path."""
    _, data = smoke_suite
    tok = AutoTokenizer.from_pretrained(data / "tokenizer")
    name = _multi_token_task(tmp_path, tok)
    model = _random_model(family, len(tok))
    docs = list(build_docs(name, tok, "test", 0, 0.34, tmp_path).docs)
    docs += list(build_docs("ps_kv", tok, "dev", 0, include_path=data / "tasks").docs[:5])
    ours = score(model, docs, batch_size=3)
    for doc, lls in zip(docs, ours.lls):
        for choice, ll in zip(doc.choices, lls):
            ids = torch.tensor([doc.context + choice])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0].double(), -1)
            positions = range(len(doc.context) - 1, len(doc.context) + len(choice) - 1)
            expected = sum(logp[p, t].item() for p, t in zip(positions, choice))
            assert ll == pytest.approx(expected, abs=1e-4)


def test_scores_do_not_depend_on_batch_composition(smoke_suite):
    _, data = smoke_suite
    tok = AutoTokenizer.from_pretrained(data / "tokenizer")
    model = _random_model("gpt_neox", len(tok))
    docs = build_docs("ps_induction", tok, "dev", 0, include_path=data / "tasks").docs
    a, b = score(model, docs, batch_size=1), score(model, docs, batch_size=64)
    np.testing.assert_allclose(np.stack(a.lls), np.stack(b.lls), atol=1e-5)


def test_packed_rows_do_not_depend_on_batch_composition(smoke_suite, tmp_path):
    """A packed row's numbers are its own: alone, or padded beside longer rows of other documents."""
    _, data = smoke_suite
    tok = AutoTokenizer.from_pretrained(data / "tokenizer")
    name = _multi_token_task(tmp_path, tok)
    model = _random_model("llama", len(tok))
    docs = list(build_docs(name, tok, "test", 0, 0.34, tmp_path).docs) * 2
    docs += [Doc(doc_id=99, context=(5,) * 9, choices=((3, 4, 5, 6, 7), (8,)), choice_chars=(5, 1), gold=0)]
    alone, together = score(model, docs, batch_size=1), score(model, docs, batch_size=64)
    for a, b in zip(alone.lls, together.lls):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
