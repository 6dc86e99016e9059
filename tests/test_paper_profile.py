"""The paper profile offline: its configs compose, its model shape builds, baselines load from local
snapshot folders, loglikelihood tasks score as lm-eval scores them, the streamed-corpus training path
resumes exactly, and no hub access leaves one clear line and nothing half-written."""

import hashlib
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import eval_rows, make_cfg, standins
from omegaconf import OmegaConf, open_dict
from transformers import AutoTokenizer, GPTNeoXForCausalLM

from paramscope.data.lm_eval_tasks import LOADER_SOURCE
from paramscope.errors import StudyError
from paramscope.evaluation.documents import ContinuationDoc
from paramscope.evaluation.requests import build_docs, task_manager
from paramscope.evaluation.scorer import score
from paramscope.models import hub, zoo
from paramscope.models.corpus import fetch_tokenizer, open_stream, prepare_corpus
from paramscope.models.random_models import tiny_random_model
from paramscope.models.train import planned_steps, scratch_config, train_variant

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED_TASKS = ["lambada_openai", "piqa", "arc_easy", "arc_challenge", "winogrande", "sciq", "hellaswag"]


def paper_cfg(config_name: str, *overrides: str):
    return make_cfg(config_name, ["profile=paper", *overrides])


# --- configs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["prepare", "train", "baselines", "evaluate", "ablate", "report"])
def test_paper_configs_compose(stage):
    cfg = paper_cfg(stage)
    assert cfg.profile_name == "paper" and cfg.device == "cuda" and cfg.suite is None
    assert list(cfg.tasks) == PUBLISHED_TASKS
    for name, pin in cfg.baselines.items():  # a commit hash, or one of Pythia's immutable stepN branches
        assert pin.repo and re.fullmatch(r"[0-9a-f]{40}|step\d+", str(pin.revision)), name
    assert cfg.baselines["pythia-410m"].revision == "step143000"
    assert cfg.baselines["pythia-410m-step0"].revision == "step0"
    assert "gpt-neo-350m" not in cfg.baselines  # withdrawn from the hub: no public weights
    assert cfg.train.variants.scratch.tokens == cfg.train.tokens  # the length is a config value


def test_paper_training_length_follows_tokens_and_devices():
    cfg = paper_cfg("train")
    spec = cfg.train.variants.scratch
    per_device_step = cfg.train.batch_size * cfg.train.accumulate * cfg.train.seq_len
    assert planned_steps(cfg, spec, 1) == -(-cfg.train.tokens // per_device_step)
    assert planned_steps(cfg, spec, 8) == -(-cfg.train.tokens // (8 * per_device_step))
    assert planned_steps(make_cfg("train", ["profile=smoke"]),
                         make_cfg("train", ["profile=smoke"]).train.variants.gen2, 4) == 5


def test_trainer_group_selects_ddp():
    plain = make_cfg("train", ["profile=paper"])
    prefix = "" if "trainer" in plain else "+"  # the group joins train.yaml's defaults on integration
    cfg = make_cfg("train", ["profile=paper", f"{prefix}trainer=ddp"])
    from paramscope.models.train import trainer_options

    assert trainer_options(cfg) == {"accelerator": "gpu", "devices": "auto", "num_nodes": 1, "strategy": "ddp"}
    assert trainer_options(make_cfg("train", ["profile=smoke"]))["devices"] == 1


# --- the scratch model's shape ---------------------------------------------------------------------


class _PythiaTokenizer:
    """What scratch_config reads from Pythia's tokenizer (no download)."""

    pad_token_id = None
    eos_token_id = 0


def test_random_pythia_410m_shape_builds_and_runs_one_forward_pass():
    cfg = paper_cfg("train")
    config = scratch_config(cfg, 50277, _PythiaTokenizer())
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
            config.intermediate_size) == (50304, 1024, 24, 16, 4096)
    with torch.device("meta"):  # built without memory, then materialised once with HF's own init
        model = GPTNeoXForCausalLM(config)
    embeddings = model.get_input_embeddings().weight.numel() + model.get_output_embeddings().weight.numel()
    non_embedding = sum(p.numel() for p in model.parameters()) - embeddings
    assert 300e6 < non_embedding < 305e6  # Pythia-410M's ~302M non-embedding parameters
    torch.manual_seed(0)
    model = model.to_empty(device="cpu")
    model.init_weights()
    model.eval()
    ids = torch.randint(0, 50277, (1, 8))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, 8, 50304) and torch.isfinite(logits).all()


# --- baselines from local snapshot folders ---------------------------------------------------------


def _hub_snapshot(cache: Path, repo: str, revision: str, model, tokenizer) -> Path:
    """A folder laid out as huggingface_hub lays out its cache: blobs named by content hash,
    refs/<revision> holding the commit, snapshots/<commit>/ whose files link into blobs."""
    commit = hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()
    root = cache / f"models--{repo.replace('/', '--')}"
    staging = root / f"staging-{commit}"
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    snapshot = root / "snapshots" / commit
    for folder in (root / "blobs", snapshot, root / "refs"):
        folder.mkdir(parents=True, exist_ok=True)
    for f in sorted(staging.iterdir()):
        blob = root / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        f.replace(blob)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    staging.rmdir()
    (root / "refs" / revision).write_text(commit)
    return snapshot


def test_offline_fetch_finds_a_snapshot_already_in_the_hub_cache(tmp_path, monkeypatch):
    """A machine that fetched once can rebuild offline: the pinned ref resolves in the hub cache."""
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hub"
    repo = cache / "models--EleutherAI--pythia-410m"
    commit = "a" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "step143000").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors").write_bytes(b"weights")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    pin = OmegaConf.create({"repo": "EleutherAI/pythia-410m", "revision": "step143000"})
    assert hub.fetch_baseline("pythia-410m", pin, tmp_path / "dest") == {"repo": pin.repo, "revision": pin.revision}
    assert (tmp_path / "dest" / "model.safetensors").read_bytes() == b"weights"
    other = OmegaConf.create({"repo": "EleutherAI/pythia-410m", "revision": "step36000"})  # not cached
    with pytest.raises(StudyError, match="cannot fetch baseline 'pythia-410m'"):
        hub.fetch_baseline("pythia-410m", other, tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_baselines_load_from_local_hub_snapshot_folders(smoke_suite, tmp_path):
    _, data = smoke_suite
    tok = AutoTokenizer.from_pretrained(data / "tokenizer")
    cfg = paper_cfg("baselines")
    families = {"pythia-410m": "gpt_neox", "pythia-410m-step0": "gpt_neox", "gpt-neo-125m": "gpt_neo",
                "qwen2.5-0.5b": "qwen2"}
    # Qwen's kind of tokenizer for the Qwen folder: transformers reads a qwen2 folder's as Qwen2Tokenizer
    qwen_tok = standins.byte_level_tokenizer(["ind s1 s2 . s1 kv k1 v1"] * 8)
    snapshots = {}
    for name, family in families.items():
        pin = cfg.baselines[name]
        own = qwen_tok if family == "qwen2" else tok
        snapshots[name] = _hub_snapshot(tmp_path / "hub", pin.repo, pin.revision,
                                        tiny_random_model(family, 1, len(own)), own)
    # as a user without hub access types it (Hydra cannot address keys with dots: qwen2.5-0.5b below)
    cfg = paper_cfg("baselines", *(f"+baselines.{n}.local_dir={p}" for n, p in snapshots.items() if "." not in n))
    with open_dict(cfg):
        cfg.baselines["qwen2.5-0.5b"].local_dir = str(snapshots["qwen2.5-0.5b"])
        cfg.baselines = {k: v for k, v in cfg.baselines.items() if k in families}
    root = tmp_path / "models"
    manifest = hub.fetch_all(cfg, root / "baselines")
    assert sorted(manifest) == sorted(families)
    for name, family in families.items():
        model, tokenizer = zoo.load(name, root)
        assert model.config.model_type == family
        assert not any(p.is_symlink() for p in (root / "baselines" / name).iterdir())  # real files, not links
        provenance = json.loads((root / "baselines" / name / "paramscope.json").read_text())
        assert provenance["baseline"] == name
        ids = tokenizer.encode("ind s1 s2 . s1", add_special_tokens=False)
        assert len(ids) >= 5 and tokenizer.decode(ids).replace(" ", "") == "inds1s2.s1"  # it really tokenizes
        with torch.no_grad():
            assert torch.isfinite(model(torch.tensor([ids])).logits).all()


# --- loglikelihood tasks (lambada_openai's output type) -------------------------------------------

# lambada_openai's own templates: the last word is the continuation.
LAMBADA_LIKE = """\
task: {name}
custom_dataset: !function loader.load
dataset_kwargs:
  data_dir: {name}
test_split: eval
output_type: loglikelihood
doc_to_text: "{{{{text.split(' ')[:-1]|join(' ')}}}}"
doc_to_target: "{{{{' '+text.split(' ')[-1]}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def _loglikelihood_task(root: Path, name: str, texts: list[str]) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "eval.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (root / "loader.py").write_text(LOADER_SOURCE)
    (root / f"{name}.yaml").write_text(LAMBADA_LIKE.format(name=name))


def _texts(model, tok, n: int, seed: int) -> list[str]:
    """Random word sequences; half end in the model's own greedy next word, so is_greedy varies."""
    rng = np.random.default_rng(seed)
    words = [w for w in tok.get_vocab() if not w.startswith("<")]
    texts = []
    for i in range(n):
        context = " ".join(rng.choice(words, int(rng.integers(2, 12))))
        if i % 2:
            ids = torch.tensor([tok.encode(context, add_special_tokens=False)])
            with torch.no_grad():
                last = tok.convert_ids_to_tokens(int(model(ids).logits[0, -1].argmax()))
            texts.append(f"{context} {last}")
        else:
            texts.append(f"{context} {rng.choice(words)}")
    return texts


def lm_eval_loglikelihood(model, tok, task_name: str, indices: list[int], include_path: Path):
    """Per-document (ll, is_greedy) and the task's perplexity from lm_eval.simple_evaluate."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4, device="cpu")
    out = simple_evaluate(model=lm, tasks=[task_name], task_manager=task_manager(include_path),
                          samples={task_name: list(indices)}, num_fewshot=0, log_samples=True,
                          bootstrap_iters=0, verbosity="ERROR")
    per_doc = {r["doc_id"]: (r["perplexity"], r["acc"]) for r in out["samples"][task_name]}
    return per_doc, out["results"][task_name]


@pytest.mark.parametrize("family", ["gpt_neox", "qwen2"])
def test_loglikelihood_scores_equal_lm_eval(smoke_suite, tmp_path, family):
    _, data = smoke_suite
    tok = AutoTokenizer.from_pretrained(data / "tokenizer")
    model = tiny_random_model(family, seed=5, vocab_size=len(tok))
    _loglikelihood_task(tmp_path, "ps_lastword", _texts(model, tok, 24, seed=1))
    docs = build_docs("ps_lastword", tok, "test", seed=0, include_path=tmp_path)
    assert all(isinstance(d, ContinuationDoc) for d in docs.docs)
    ours = score(model, docs.docs, batch_size=5)
    ref, results = lm_eval_loglikelihood(model, tok, "ps_lastword", docs.doc_ids, tmp_path)
    assert sorted(ref) == docs.doc_ids
    assert ours.correct.tolist() == [int(ref[i][1]) for i in docs.doc_ids]
    assert 0 < ours.correct.sum() < len(docs.docs)  # both outcomes occur
    np.testing.assert_allclose(ours.gold_ll, [ref[i][0] for i in docs.doc_ids], atol=1e-4)
    summary = ours.summary()
    assert summary["acc"] == pytest.approx(results["acc,none"])
    assert summary["ppl"] == pytest.approx(results["perplexity,none"], rel=1e-5)


def test_multi_token_continuations_equal_full_sequence_scoring(smoke_suite):
    _, data = smoke_suite
    tok = AutoTokenizer.from_pretrained(data / "tokenizer")
    model = tiny_random_model("gpt_neox", seed=2, vocab_size=len(tok))
    docs = [ContinuationDoc(i, tuple(ctx), (tuple(cont),), (1,), 0) for i, (ctx, cont) in
            enumerate([([5, 12, 13], [4, 12, 13]), ([6], [20]), ([7, 30, 31, 32, 33], [9, 40])])]
    ours = score(model, docs, batch_size=2)
    for doc, ll, greedy in zip(docs, ours.gold_ll, ours.correct):
        ids = torch.tensor([doc.context + doc.choices[0]])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].double(), -1)
        positions = range(len(doc.context) - 1, len(ids[0]) - 1)
        assert ll == pytest.approx(sum(logp[p, t].item() for p, t in zip(positions, doc.choices[0])), abs=1e-5)
        assert greedy == all(logp[p].argmax().item() == t for p, t in zip(positions, doc.choices[0]))


def test_mixed_document_kinds_are_refused(smoke_suite):
    _, data = smoke_suite
    tok = AutoTokenizer.from_pretrained(data / "tokenizer")
    mc = build_docs("ps_kv", tok, "dev", 0, include_path=data / "tasks").docs[:2]
    with pytest.raises(ValueError, match="cannot be scored together"):
        score(tiny_random_model("gpt_neox", 0, len(tok)), [*mc, ContinuationDoc(9, (5,), ((6,),), (1,), 0)])


# winogrande's own functions: the choices fill the blank in the context, the rest is the continuation
WINO_UTILS = """\
def doc_to_text(doc):
    return {"1": 0, "2": 1}[doc["answer"]]


def doc_to_target(doc):
    return doc["sentence"][doc["sentence"].index("_") + 1 :].strip()


def doc_to_choice(doc):
    idx = doc["sentence"].index("_")
    return [doc["sentence"][:idx] + opt for opt in (doc["option1"], doc["option2"])]
"""

WINO_LIKE = """\
task: ps_blank
custom_dataset: !function loader.load
dataset_kwargs:
  data_dir: ps_blank
test_split: eval
output_type: multiple_choice
doc_to_text: !function wino_utils.doc_to_text
doc_to_target: !function wino_utils.doc_to_target
doc_to_choice: !function wino_utils.doc_to_choice
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def test_multiple_input_scores_equal_lm_eval(smoke_suite, tmp_path):
    """Winogrande's shape (one context per choice, a shared continuation) against lm-eval's own scoring."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from paramscope.data.splits import split_indices
    from paramscope.evaluation.loglikelihood import score_multiple_input
    from paramscope.evaluation.requests import load_lm_eval_task, multiple_input_docs

    _, data = smoke_suite
    tok = AutoTokenizer.from_pretrained(data / "tokenizer")
    rng = np.random.default_rng(3)
    words = [w for w in tok.get_vocab() if not w.startswith("<")]
    rows = []
    for _ in range(30):
        pre, post = rng.choice(words, int(rng.integers(1, 6))), rng.choice(words, int(rng.integers(1, 4)))
        rows.append({"sentence": " ".join([*pre, "_", *post]), "option1": str(rng.choice(words)),
                     "option2": str(rng.choice(words)), "answer": str(rng.integers(1, 3))})
    (tmp_path / "ps_blank").mkdir()
    (tmp_path / "ps_blank" / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "loader.py").write_text(LOADER_SOURCE)
    (tmp_path / "wino_utils.py").write_text(WINO_UTILS)
    (tmp_path / "ps_blank.yaml").write_text(WINO_LIKE)

    model = tiny_random_model("gpt_neox", seed=6, vocab_size=len(tok))
    task = load_lm_eval_task("ps_blank", tmp_path)
    indices = split_indices(len(task.test_docs()), 0)["test"]
    task.build_all_requests(samples=indices, rank=0, world_size=1)
    docs = multiple_input_docs(task, tok, indices)
    assert all(len(set(d.contexts)) == 2 for d in docs)  # the choices really are in the contexts
    ours = score_multiple_input(model, docs, batch_size=4)

    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=3, device="cpu")
    out = simple_evaluate(model=lm, tasks=["ps_blank"], task_manager=task_manager(tmp_path),
                          samples={"ps_blank": indices}, num_fewshot=0, log_samples=True, bootstrap_iters=0,
                          verbosity="ERROR")
    ref = {r["doc_id"]: r for r in out["samples"]["ps_blank"]}
    assert ours.correct.tolist() == [int(ref[d.doc_id]["acc"]) for d in docs]
    for d, lls in zip(docs, ours.lls):
        np.testing.assert_allclose(lls, [float(r[0][0]) for r in ref[d.doc_id]["resps"]], atol=1e-4)


# --- the streamed corpus: offline errors and exact resume -------------------------------------------


def test_offline_tokenizer_and_corpus_fail_with_one_line_and_nothing_written(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    cfg = paper_cfg("prepare")
    with pytest.raises(StudyError,
                       match=r"cannot fetch tokenizer EleutherAI/pythia-410m@step143000: .*tokenizer.local_dir"):
        prepare_corpus(cfg, tmp_path / "data")
    assert not (tmp_path / "data").exists()
    with pytest.raises(StudyError, match=r"cannot stream corpus HuggingFaceFW/fineweb-edu@87f0.*corpus.local_files"):
        open_stream(cfg.corpus)


def test_prepare_corpus_from_local_tokenizer_writes_manifest(smoke_suite, tmp_path):
    _, data = smoke_suite
    cfg = paper_cfg("prepare", f"tokenizer.local_dir={data / 'tokenizer'}")
    summary = prepare_corpus(cfg, tmp_path / "data")
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["corpus"]["revision"] == cfg.corpus.revision and manifest["tasks"] == PUBLISHED_TASKS
    assert summary["vocab_size"] == len(AutoTokenizer.from_pretrained(tmp_path / "data" / "tokenizer"))
    with pytest.raises(StudyError, match="local_dir"):
        fetch_tokenizer(OmegaConf.create({"repo": "x/y", "revision": "r", "local_dir": str(tmp_path / "none")}),
                        tmp_path / "tok")
    assert not (tmp_path / "tok").exists()


def _corpus_cfg(data: Path, tmp_path: Path, steps: int):
    """The paper training path (streamed corpus, accumulation, checkpoints) at toy sizes on CPU."""
    corpus = tmp_path / "corpus.jsonl"
    if not corpus.exists():
        lines = (data / "train" / "pretrain.txt").read_text().splitlines()[:300]
        corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    return make_cfg("train", [
        "profile=paper", "device=cpu", "architecture.vocab_size=null", "architecture.hidden_size=32",
        "architecture.num_hidden_layers=2", "architecture.num_attention_heads=2", "architecture.intermediate_size=64",
        "architecture.max_position_embeddings=64", "train.seq_len=16", "train.batch_size=4", "train.accumulate=2",
        "train.precision=32-true", "train.attn_implementation=eager", f"train.tokens={steps * 4 * 2 * 16}",
        "train.warmup_steps=2", "train.log_every_n_steps=1", "train.checkpoints.every_n_steps=2",
        f"train.checkpoints.dir={tmp_path / 'checkpoints'}", f"corpus.local_files={corpus}",
    ])


class _Crash(Exception):
    pass


class _CrashAt:
    """Stops a run once a given step is reached (its checkpoint written), as a killed job would."""

    def __init__(self, step: int):
        self.step = step

    def __call__(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise _Crash


def test_streamed_training_resumes_exactly_after_a_crash(smoke_suite, tmp_path, monkeypatch):
    import lightning as L

    _, data = smoke_suite
    cfg = _corpus_cfg(data, tmp_path, steps=6)
    whole = train_variant(cfg, "scratch", tmp_path / "whole", data, logger=False)
    assert np.isfinite(whole["scratch/tokens_per_s"]) and whole["scratch/tokens_per_s"] > 0
    assert not list((tmp_path / "checkpoints").iterdir())  # removed once the model is saved

    crash = type("CrashCallback", (L.Callback,), {"on_train_batch_start": _CrashAt(4)})()
    original = L.Trainer.__init__

    def with_crash(self, *args, **kwargs):
        original(self, *args, **{**kwargs, "callbacks": [*kwargs["callbacks"], crash]})

    monkeypatch.setattr(L.Trainer, "__init__", with_crash)
    with pytest.raises(_Crash):
        train_variant(cfg, "scratch", tmp_path / "resumed", data, logger=False)
    monkeypatch.undo()
    [run_dir] = (tmp_path / "checkpoints").iterdir()
    assert (run_dir / "last.ckpt").is_file()
    assert not (tmp_path / "resumed" / "scratch").exists()  # only the step-0 model, no half-trained one
    train_variant(cfg, "scratch", tmp_path / "resumed", data, logger=False)
    a = zoo.load("scratch", tmp_path / "whole")[0].state_dict()
    b = zoo.load("scratch", tmp_path / "resumed")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    step0 = zoo.load("scratch-step0", tmp_path / "whole")[0].state_dict()
    assert not all(torch.equal(a[k], step0[k]) for k in a)
    assert json.loads((tmp_path / "whole" / "scratch" / "paramscope.json").read_text())["steps"] == 6


# --- the validation table -------------------------------------------------------------------------


def _eval_cell(results: Path, model: str, task: str, split: str, doc_ids, correct, correct_norm, gold_ll) -> None:
    import pandas as pd

    from paramscope.store import cell_key, cell_path, write_cell

    row = eval_rows(model, task, split, doc_ids, correct, loss=float(-np.mean(gold_ll)),
                    acc_norm=float(np.mean(correct_norm)), ex_correct_norm=[int(c) for c in correct_norm],
                    ex_gold_ll=list(gold_ll))
    row = {k: [v] for k, v in row.items()}
    write_cell(pd.DataFrame(row), cell_path("eval", cell_key(model=model, task=task, split=split), results))


def test_validation_table_pools_splits_and_uses_each_tasks_published_metric(tmp_path):
    from paramscope.report.validation import report

    rng = np.random.default_rng(0)
    outcomes = {}
    for model, task in [("pythia-410m", "piqa"), ("pythia-410m", "arc_challenge"), ("pythia-410m", "lambada_openai"),
                        ("gpt-neo-125m", "hellaswag")]:
        n = 40
        correct, norm = rng.integers(0, 2, n), rng.integers(0, 2, n)
        ll = -rng.gamma(2.0, 1.2, n)
        outcomes[model, task] = (correct, norm, ll)
        dev = sorted(rng.choice(n, n // 2, replace=False).tolist())
        for split, ids in (("dev", dev), ("test", [i for i in range(n) if i not in dev])):
            _eval_cell(tmp_path / "results", model, task, split, ids, correct[ids], norm[ids], ll[ids])
    cfg = make_cfg("report", ["profile=paper", "topic=validation"])
    out = tmp_path / "out"
    metrics = report(cfg, tmp_path / "results", out)

    correct, _, _ = outcomes["pythia-410m", "piqa"]
    assert metrics["pythia-410m/piqa/acc/ours"] == pytest.approx(100 * correct.mean())
    assert metrics["pythia-410m/piqa/acc/stderr"] == pytest.approx(100 * correct.std(ddof=1) / np.sqrt(40))
    assert metrics["pythia-410m/piqa/acc/diff"] == pytest.approx(100 * correct.mean() - 66.8)
    _, norm, _ = outcomes["pythia-410m", "arc_challenge"]
    assert metrics["pythia-410m/arc_challenge/acc_norm/ours"] == pytest.approx(100 * norm.mean())
    _, _, ll = outcomes["pythia-410m", "lambada_openai"]
    assert metrics["pythia-410m/lambada_openai/ppl/ours"] == pytest.approx(np.exp(-ll.mean()))
    correct, _, _ = outcomes["gpt-neo-125m", "hellaswag"]  # GPT-Neo's published HellaSwag is plain acc
    assert metrics["gpt-neo-125m/hellaswag/acc/ours"] == pytest.approx(100 * correct.mean())
    assert metrics["n_compared"] == 5  # lambada counts twice (acc and perplexity); missing tasks are not compared
    assert np.isnan(metrics["pythia-410m/sciq/acc/ours"])  # listed, published, not measured: shown as --
    macros = (out / "macros.tex").read_text()
    assert r"\newcommand{\ValidationPythiaFourOneZeroMPiqaAccPublished}{66.8}" in macros
    assert "sciq" in (out / "tables" / "validation.tex").read_text()


# --- the GPU check, as a CPU dry run ----------------------------------------------------------------


def test_gpu_check_dry_run_prints_every_measurement(monkeypatch, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", gpu_check)  # dataclasses look their module up
    spec.loader.exec_module(gpu_check)
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--device", "cpu", "--quick", "--peak-tflops", "0.05"])
    gpu_check.main()
    out = capsys.readouterr().out
    for needle in ("tokens/s", "6N + 12 L d T", "MFU", "requests/s", "head-map time", "max |engine - loop|", ": ok;"):
        assert needle in out, needle
    config = gpu_check.paper_config(gpu_check.FULL).architecture  # the full check trains the paper profile's model
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (24, 1024, 50304)
