"""A rehearsal of the paper profile: `dvc repro` with profile=paper in a clean checkout, on this CPU.

Every hub download is replaced by a local stand-in of the kind the profile accepts offline
(`tokenizer.local_dir`, `corpus.local_files`, `baselines.<name>.local_dir`, `task_data`), made here, and the
sizes shrink to a CPU (model dimensions, training tokens, grids). Everything else is the paper profile's:
its ten models, the seven lm-eval benchmarks through lm-eval's own YAML, its transplant pairs, structure
nulls, VPS and validation against the published numbers. So each stage's paper code path runs once here,
before a GPU is paid for."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import clean_checkout, standins
from transformers import AutoTokenizer

from paramscope.models.random_models import tiny_random_model
from paramscope.models.zoo import save_model

pytestmark = pytest.mark.slow

FAMILIES = {"pythia-410m": "gpt_neox", "pythia-410m-step36000": "gpt_neox", "pythia-410m-step0": "gpt_neox",
            "pythia-160m": "gpt_neox", "gpt-neo-125m": "gpt_neo", "qwen2-0.5b": "qwen2", "qwen2.5-0.5b": "qwen2",
            "qwen2.5-0.5b-instruct": "qwen2"}


def make_standins(folder: Path, tokenizer_dir: Path) -> dict:
    """The local stand-ins, and the profile settings that point the paper profile at them."""
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    shutil.copytree(tokenizer_dir, folder / "tokenizer")
    vocab = sorted(w for w in tok.get_vocab() if not w.startswith("<"))
    rows = standins.benchmark_rows(vocab)
    corpus = folder / "corpus"
    corpus.mkdir()
    texts = [" ".join(row.get("text", "").split()) for row in rows[standins.TASKS["lambada_openai"][0]]["test"]]
    (corpus / "part-0.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts * 20))
    qwen_tok = standins.byte_level_tokenizer([" ".join(vocab)] * 4 + texts)  # one vocabulary, as Qwen2 and 2.5 share
    baselines = {}
    for seed, (name, family) in enumerate(FAMILIES.items()):
        own = qwen_tok if family == "qwen2" else tok
        save_model(tiny_random_model(family, seed, len(own)), own, folder / "baselines" / name, {"standin": name})
        baselines[name] = {"local_dir": str(folder / "baselines" / name)}
    return {
        "device": "cpu",
        "tokenizer": {"local_dir": str(folder / "tokenizer")},
        "corpus": {"local_files": str(corpus / "*.jsonl")},
        "task_data": standins.write_task_data(rows, folder / "tasks"),
        "baselines": baselines,
        # CPU sizes: a 2-layer scratch model trained for 5 optimizer steps, with periodic checkpoints
        "architecture": {"vocab_size": 256, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                  "intermediate_size": 64, "max_position_embeddings": 64},
        "train": {"seq_len": 16, "batch_size": 4, "accumulate": 2, "tokens": 5 * 4 * 2 * 16, "warmup_steps": 1,
                  "precision": "32-true", "log_every_n_steps": 1, "checkpoints": {"every_n_steps": 2}},
        "eval": {"batch_size": 8},
        "ablate": {"neuron_block": 16},
        "transplant": {"n_seeds": 2, "n_resamples": 1000},
        "structure": {"thresholds": [0.5, 0.1], "decompose_docs": 2},
        "optimize": {"k": 4, "budget": 12, "n_controls": 2, "n_random_orders": 2, "fractions": [0.0, 0.5]},
        "gamma": [0.3], "rank": [2], "layer_set": ["all"], "builder": ["sparse"],
        "vps": {"overhead_repeats": 1},
    }


@pytest.fixture(scope="module")
def rehearsal(smoke_suite, tmp_path_factory):
    """A clean checkout whose paper profile points at the stand-ins, reproduced once with no network."""
    _, data = smoke_suite
    tmp = tmp_path_factory.mktemp("rehearsal")
    repo = clean_checkout(tmp / "repo")
    settings = make_standins(tmp / "standins", data / "tokenizer")
    profile = {"defaults": ["paper", "_self_"], **settings}
    (repo / "conf" / "profile" / "rehearsal.yaml").write_text("# @package _global_\n" + yaml.safe_dump(profile))
    params = repo / "params.yaml"
    text = params.read_text().replace("profile: tiny", "profile: rehearsal")
    text = re.sub(r"(?m)^(  k:) .*$", r"\1 2", text)
    text = re.sub(r"(?m)^(  alpha:) .*$", r"\1 0.5,1", text)
    params.write_text(text)
    proc = subprocess.run("git init -q && dvc repro", shell=True, cwd=repo, capture_output=True, text=True,
                          timeout=3600, check=False)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return repo


def test_every_model_is_scored_on_every_benchmark(rehearsal):
    metrics = json.loads((rehearsal / "reports" / "metrics.json").read_text())
    models = ["scratch", "scratch-step0", *FAMILIES]
    for model in models:
        for task in standins.TASKS:
            assert 0.0 <= metrics[f"acc/test/{model}/{task}"] <= 1.0, (model, task)
    manifest = json.loads((rehearsal / "models" / "baselines" / "manifest.json").read_text())
    assert sorted(manifest) == sorted(FAMILIES)


def test_scratch_trained_on_the_streamed_corpus(rehearsal):
    provenance = json.loads((rehearsal / "models" / "trained" / "scratch" / "paramscope.json").read_text())
    assert provenance["data"] == "corpus" and provenance["corpus"]["local_files"].endswith("*.jsonl")
    assert provenance["steps"] == 5  # train.tokens / (batch x accumulate x seq_len)
    assert (rehearsal / "models" / "trained" / "scratch-step0" / "model.safetensors").is_file()
    assert not (rehearsal / "models" / "trained" / "gen2").exists()  # the paper profile trains scratch only
    assert not list((rehearsal / "checkpoints").glob("scratch-*"))  # a finished run clears its checkpoints


def test_every_part_is_reported_and_the_pretrained_document_is_built(rehearsal):
    macros = (rehearsal / "reports" / "validation" / "macros.tex").read_text()
    assert re.search(r"\\newcommand\{\\ValidationNCompared\}\{([1-9]\d*)\}", macros), macros[:2000]
    for topic in ("transplant", "structure", "vps", "optimize"):
        assert (rehearsal / "reports" / topic / "macros.tex").is_file(), topic
    assert (rehearsal / "paper" / "main.pdf").stat().st_size > 10_000
    assert "pretrained.tex" in (rehearsal / "paper" / "main.fls").read_text()  # not the tiny study's main.tex


def test_the_task_choice_tests_multiple_choice_tasks_only(rehearsal):
    """lambada_openai (one continuation per document) has no chance level: shown, untested, never kept."""
    import pandas as pd

    choice = pd.read_csv(rehearsal / "reports" / "tasks" / "task_choice.csv").set_index("task")
    assert set(choice.index) == {"lambada_openai", "piqa", "arc_easy", "arc_challenge", "winogrande", "sciq",
                                 "hellaswag"}
    assert pd.isna(choice.loc["lambada_openai", "p"]) and not choice.loc["lambada_openai", "kept"]
    assert choice.drop(index="lambada_openai").p.between(0, 1).all()


def test_importance_is_compared_across_the_two_ablated_models(rehearsal):
    """The paper atlas maps two models of one shape, so every task's maps are correlated across models."""
    import pandas as pd

    rho = pd.read_csv(rehearsal / "reports" / "data" / "spearman.csv")
    across = rho[(rho.kind == "model") & (rho.group == "heads")]
    profile = yaml.safe_load((rehearsal / "conf" / "profile" / "paper.yaml").read_text())["ablate"]
    assert sorted(set(across.scope)) == sorted(profile["tasks"])
    assert {frozenset(p) for p in zip(across.a, across.b)} == {frozenset(profile["models"])}
    shape = tiny_random_model("gpt_neox", 0, 16).config  # the stand-ins' shape
    assert (across.n_units == shape.num_hidden_layers * shape.num_attention_heads).all()  # every head matched
    metrics = json.loads((rehearsal / "reports" / "metrics.json").read_text())
    assert {f"spearman_models/heads/{t}/mean_rho" for t in profile["tasks"]} <= metrics.keys()
    assert (rehearsal / "reports" / "figures" / "spearman_heads_models.pdf").is_file()
