"""Transplant: registry and refusals, exact in-memory transplants, dev-only selection, the resumable
grid, the stage's bad-input line and the report, on tiny random models (no trained models needed)."""

from __future__ import annotations

import copy
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import make_cfg
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from paramscope.errors import StudyError
from paramscope.evaluation.documents import Doc
from paramscope.evaluation.tasks import task_docs
from paramscope.models.random_models import tiny_random_model
from paramscope.models.zoo import save_model
from paramscope.store import load_results
from paramscope.transplant import grid
from paramscope.transplant.apply import transplanted
from paramscope.transplant.metrics import with_gap_significance
from paramscope.transplant.modules import module_registry
from paramscope.transplant.plan import Pair, Plan, parse_k, resolve_k
from paramscope.transplant.select import (
    layer_matched,
    module_activity,
    random_order,
    rank_modules,
)
from paramscope.transplant.vocabulary import compare_vocabularies

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:The set_bad function:PendingDeprecationWarning")


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def random_docs(n: int, vocab: int = 64, seed: int = 0) -> tuple[Doc, ...]:
    rng = np.random.default_rng(seed)
    return tuple(Doc(i, tuple(int(t) for t in rng.integers(1, vocab, size=rng.integers(3, 9))), ((1,), (2,)), (1, 1), 0)
                 for i in range(n))


# ---------------------------------------------------------------------------------- registry


def test_registry_is_the_attention_and_mlp_projections_in_block_order():
    modules = module_registry(tiny_random_model("gpt_neox", 1), tiny_random_model("gpt_neox", 0))
    assert [(m.layer, m.kind, m.role) for m in modules[:4]] == [
        (0, "attn", "query_key_value"), (0, "attn", "dense"), (0, "mlp", "dense_h_to_4h"), (0, "mlp", "dense_4h_to_h")]
    assert len(modules) == 3 * 4 and [m.layer for m in modules] == sorted(m.layer for m in modules)
    assert not any(word in m.name for m in modules for word in ("embed", "norm"))


@pytest.mark.parametrize("donor, target, message", [
    (("llama", 64), ("gpt_neox", 64), "cannot transplant between architectures: donor is llama, target is gpt_neox"),
    (("gpt_neox", 80), ("gpt_neox", 64),
     "cannot transplant: shapes differ at gpt_neox.embed_in.weight: donor [80, 32], target [64, 32]"),
])
def test_mismatched_pairs_are_refused_with_the_first_difference(donor, target, message):
    with pytest.raises(StudyError) as err:
        module_registry(tiny_random_model(donor[0], 0, donor[1]), tiny_random_model(target[0], 1, target[1]))
    assert str(err.value) == message


# ---------------------------------------------------------------------------------- transplant


def test_transplant_blends_the_chosen_modules_and_restores_the_target_bit_exactly():
    target, donor = tiny_random_model("gpt_neox", 0), tiny_random_model("gpt_neox", 1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    donor_before = {k: v.clone() for k, v in donor.state_dict().items()}
    names = [m.name for m in module_registry(donor, target)][:3]
    with transplanted(target, donor, names, 0.25):
        now = target.state_dict()
        for key, value in now.items():
            if any(key.startswith(n + ".") for n in names):
                assert torch.allclose(value, 0.75 * before[key] + 0.25 * donor_before[key])
            else:
                assert torch.equal(value, before[key]), key
    with pytest.raises(RuntimeError, match="boom"), transplanted(target, donor, names, 1.0):
        raise RuntimeError("boom")
    for model, saved in ((target, before), (donor, donor_before)):
        after = model.state_dict()
        assert all(torch.equal(after[k], v) and after[k].dtype == v.dtype for k, v in saved.items())


def test_alpha_zero_is_the_target_and_alpha_one_of_every_module_is_the_donor():
    target, other = tiny_random_model("gpt_neox", 0), tiny_random_model("gpt_neox", 1)
    names = [m.name for m in module_registry(other, target)]
    # a donor that differs from the target only in the transplantable modules
    donor = copy.deepcopy(target)
    moved = {k: v for k, v in other.state_dict().items() if any(k.startswith(n + ".") for n in names)}
    donor.load_state_dict({**target.state_dict(), **moved})
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))
    clean, donor_logits = logits(target, ids), logits(donor, ids)
    assert not torch.allclose(clean, donor_logits)
    with transplanted(target, donor, names, 0.0) as model:
        assert torch.equal(logits(model, ids), clean)
    with transplanted(target, donor, names, 1.0) as model:
        assert torch.equal(logits(model, ids), donor_logits)
    with transplanted(target, other, names, 1.0) as model:  # a fully different donor: only its modules move
        state, theirs, ours = model.state_dict(), other.state_dict(), donor.state_dict()
        assert all(torch.equal(state[k], theirs[k] if any(k.startswith(n + ".") for n in names) else ours[k])
                   for k in state)


# ---------------------------------------------------------------------------------- selection


def test_activity_is_mean_abs_output_at_the_last_token_in_one_pass_per_model():
    model = tiny_random_model("gpt_neox", 0)
    modules = module_registry(model, model)
    docs = random_docs(7)
    calls = []
    handle = model.base_model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        activity = module_activity(model, modules, docs, batch_size=64)
        assert len(calls) == 1
        module_activity(model, modules, docs, batch_size=3)
        assert len(calls) == 1 + 3  # batches of one pass, never a pass per module
    finally:
        handle.remove()
    seen = []  # the same quantity one document at a time, unpadded
    probe = model.get_submodule(modules[5].name).register_forward_hook(lambda _m, _i, out: seen.append(out[0, -1]))
    try:
        for d in docs:
            model.base_model(input_ids=torch.tensor([d.context]))
    finally:
        probe.remove()
    expected = float(np.mean([s.abs().mean().item() for s in seen]))
    assert activity[5] == pytest.approx(expected, rel=1e-5)


def test_rankings_and_random_controls():
    donor, target = np.array([1.0, 5.0, 2.0, 2.0]), np.array([4.0, 4.5, 2.0, 1.0])
    assert rank_modules(donor, target, "abs").tolist() == [0, 3, 1, 2]
    assert rank_modules(donor, target, "signed").tolist() == [3, 1, 2, 0]
    order = random_order(16, seed=0, replicate=2)
    assert sorted(order.tolist()) == list(range(16)) and np.array_equal(order, random_order(16, 0, 2))
    assert not np.array_equal(order, random_order(16, 0, 3))
    modules = module_registry(tiny_random_model("gpt_neox", 0), tiny_random_model("gpt_neox", 1))
    chosen = [0, 1, 2, 9]
    for rep in range(5):
        picked = layer_matched(modules, chosen, seed=0, replicate=rep)
        assert np.bincount([modules[i].layer for i in picked], minlength=3).tolist() == [3, 0, 1]
        assert len(set(picked.tolist())) == len(picked)


@pytest.mark.parametrize("k, n, expected", [(8, 16, 8), (16, 16, 16), (32, 16, None), (0.5, 16, 8), (0.01, 16, 1),
                                            ("0.125", 16, 2)])
def test_k_is_a_count_or_a_fraction_and_never_clipped(k, n, expected):
    assert resolve_k(parse_k(k), n) == expected


@pytest.mark.parametrize("k", [0, -1, 1.5, "all"])
def test_bad_k_is_refused(k):
    with pytest.raises(StudyError, match="k must be a module count"):
        parse_k(k)


def test_gbr_is_undefined_where_the_gap_is_not_significant_after_bh():
    rows = pd.DataFrame({"pair": ["a", "a", "b", "c", "d"], "task": ["t"] * 5, "split": ["test"] * 5,
                         "p_gap": [1e-6, 1e-6, 0.04, 0.3, 1e-6], "gbr": [0.5, 0.7, 2.0, 9.0, 0.4],
                         "gbr_ci_low": [0.1, 0.2, -3.0, -9.0, 0.1], "gbr_ci_high": [0.9, 1.0, 9.0, 20.0, 0.8],
                         "acc_clean": [0.5, 0.5, 0.5, 0.5, 0.9], "acc_donor": [0.9, 0.9, 0.6, 0.55, 0.5]})
    out = with_gap_significance(rows, fdr=0.05)
    assert out["q_gap"].tolist() == pytest.approx([2e-6, 2e-6, 0.04 * 4 / 3, 0.3, 2e-6])  # one test per (pair, task)
    # p = 0.04 alone would have passed; pair d's gap is significant but the wrong way (donor worse on test)
    assert out["gap_significant"].tolist() == [True, True, False, False, False]
    assert out["gbr_reported"].tolist()[:2] == [0.5, 0.7] and out["gbr_reported"].iloc[2:].isna().all()
    assert out["gbr_reported_ci_high"].iloc[2:].isna().all() and out["gbr"].tolist() == rows["gbr"].tolist()


# ---------------------------------------------------------------------------------- the grid


@pytest.fixture(scope="module")
def study(smoke_suite, tmp_path_factory):
    """Smoke data plus random gpt_neox models named as the study's, and a config pointing at them."""
    _, data = smoke_suite
    tmp = tmp_path_factory.mktemp("transplant")
    tokenizer = AutoTokenizer.from_pretrained(data / "tokenizer")
    for seed, name in enumerate(["scratch", "gen2", "tuned"]):
        save_model(tiny_random_model("gpt_neox", seed, len(tokenizer)), tokenizer, tmp / "models" / name, {})

    def cfg(*overrides: str):
        return make_cfg("transplant", ["profile=smoke", f"paths.data={data}", f"paths.tasks={data / 'tasks'}",
                                       f"paths.tokenizer={data / 'tokenizer'}", f"paths.models={tmp / 'models'}",
                                       f"paths.results={tmp / 'results'}", "transplant.n_seeds=1",
                                       "transplant.n_resamples=1000", "pair=[gen2,scratch]", "task=kv", *overrides])

    return cfg, tmp


@pytest.fixture(scope="module")
def first_run(study):
    cfg, tmp = study
    seen: list[tuple[int, ...]] = []
    original = grid.module_activity

    def recording(model, modules, docs, batch_size=64):
        seen.append(tuple(d.doc_id for d in docs))
        return original(model, modules, docs, batch_size)

    grid.module_activity = recording
    try:
        counts = grid.run_grid(cfg("k=2", "alpha=1", f"export={tmp / 'exported'}"), tmp / "results")
    finally:
        grid.module_activity = original
    return counts, seen


def test_grid_writes_tidy_cells_selected_on_dev_only(study, first_run):
    cfg, tmp = study
    counts, seen = first_run
    assert counts["computed"] == 4  # copy-all on dev and test, the K=2 cell on dev and test
    c = cfg()
    tokenizer = AutoTokenizer.from_pretrained(tmp / "models" / "scratch")
    dev_ids = tuple(task_docs(c, "kv", "dev", tokenizer).doc_ids)
    test_ids = set(task_docs(c, "kv", "test", tokenizer).doc_ids)
    assert len(seen) == 2 and all(sorted(ids) == sorted(dev_ids) for ids in seen)  # donor and target, dev only
    assert not test_ids & set(dev_ids)
    rows = load_results("transplant", root=tmp / "results", with_examples=True)
    test = rows[(rows.split == "test") & (rows.method != "all")]
    assert sorted(test.method) == ["layer_random", "layer_random", "random", "selected", "selected"]
    assert set(rows.loc[rows.split == "dev", "method"]) == {"selected", "all"}
    assert (rows.k[rows.method != "all"] == 2).all() and (rows.k[rows.method == "all"] == 12).all()
    # transplant columns say what they hold: no atlas column is reused with another meaning
    assert not {"group", "layer", "unit", "n_units", "op", "value", "unit_name"} & set(rows.columns)
    assert set(rows.label[rows.method == "selected"]) == {"top-2 (abs)", "top-2 (signed)"}
    assert set(rows.replicate) == {0} and (rows.alpha == 1.0).all()
    for _, r in rows.iterrows():
        assert r.acc == pytest.approx(np.mean(r.ex_correct))
        assert r.tir == pytest.approx(r.acc / r.acc_target) if r.acc_target else np.isnan(r.tir)
        assert r.acc_clean == r.acc_target and len(r.ex_doc_ids) == r.n == len(r.ex_correct_donor)
        assert r.model != r.donor and {r.model, r.donor} == {"gen2", "scratch"}
    exported = sorted(p.name for p in (tmp / "exported").iterdir())
    assert len(exported) == 2 and all(name.endswith("-kv-" + name.split("-kv-")[1]) for name in exported)


def test_exported_transplant_loads_and_carries_the_donor_modules(study, first_run):
    _, tmp = study
    rows = load_results("transplant", root=tmp / "results")
    row = rows[(rows.method == "selected") & (rows.ranking == "abs")].iloc[0]
    path = tmp / "exported" / f"{row.model}-from-{row.donor}-kv-abs-k2-a1"
    moved = AutoModelForCausalLM.from_pretrained(path).state_dict()
    target = AutoModelForCausalLM.from_pretrained(tmp / "models" / row.model).state_dict()
    donor = AutoModelForCausalLM.from_pretrained(tmp / "models" / row.donor).state_dict()
    for key, value in moved.items():
        source = donor if any(key.startswith(m + ".") for m in row.modules) else target
        assert torch.equal(value, source[key]), key


def test_a_second_run_computes_nothing_and_equal_k_finds_its_cells(study, first_run, monkeypatch):
    cfg, tmp = study

    def no_scoring(*_args, **_kwargs):
        raise AssertionError("a finished cell was scored again")

    monkeypatch.setattr(grid, "score", no_scoring)
    assert grid.run_grid(cfg("k=2", "alpha=1"), tmp / "results")["computed"] == 0
    assert grid.run_grid(cfg("k=0.1667", "alpha=1"), tmp / "results")["computed"] == 0  # 0.1667 x 12 = 2
    counts = grid.run_grid(cfg("k=64", "alpha=1"), tmp / "results")  # more than the 12 modules
    assert counts["k_too_large"] == 1 and counts["computed"] == 0


def test_a_mismatched_pair_is_refused_before_anything_is_written(study, tmp_path):
    cfg, tmp = study
    tokenizer = AutoTokenizer.from_pretrained(tmp / "models" / "scratch")
    models = tmp_path / "models"
    save_model(tiny_random_model("gpt_neox", 0, len(tokenizer)), tokenizer, models / "scratch", {})
    save_model(tiny_random_model("llama", 1, len(tokenizer)), tokenizer, models / "gen2", {})
    refusal = "^cannot transplant between architectures: gen2 is llama, scratch is gpt_neox$"
    with pytest.raises(StudyError, match=refusal):
        grid.run_grid(cfg(f"paths.models={models}", "k=2"), tmp_path / "results")
    assert not (tmp_path / "results").exists()


def _pair_with_gen2_tokenizer(tmp, tmp_path, edit) -> Path:
    """scratch and gen2 as random models with one padded vocabulary (as Qwen2 and Qwen2.5 pad theirs), gen2
    saved with its tokenizer changed by `edit`."""
    base = AutoTokenizer.from_pretrained(tmp / "models" / "scratch")
    changed = copy.deepcopy(base)
    edit(changed)
    vocab = max(len(base), len(changed)) + 2
    models = tmp_path / "models"
    for seed, (name, tokenizer) in enumerate([("scratch", base), ("gen2", changed), ("tuned", base)]):
        save_model(tiny_random_model("gpt_neox", seed, vocab), tokenizer, models / name, {})
    return models


def test_added_special_tokens_absent_from_the_text_are_named_and_allowed(study, tmp_path, caplog):
    """Qwen2 -> Qwen2.5: one base vocabulary, different chat/tool markers added after it."""
    cfg, tmp = study
    models = _pair_with_gen2_tokenizer(tmp, tmp_path, lambda t: t.add_tokens(["<|tool|>"], special_tokens=True))
    with caplog.at_level("WARNING", logger=grid.log.name):
        counts = grid.run_grid(cfg(f"paths.models={models}", "k=2", "alpha=1"), tmp_path / "results")
    assert counts["computed"] == 4
    assert "the added tokens differ: 1 added only to gen2's ('<|tool|>')" in caplog.text


def test_an_added_token_that_occurs_in_the_documents_is_refused(study, tmp_path):
    cfg, tmp = study
    tokenizer = AutoTokenizer.from_pretrained(tmp / "models" / "scratch")
    first = task_docs(cfg(), "kv", "dev", tokenizer).docs[0]
    # two adjacent words as one added token: matched before the words are split, so the text encodes differently
    word = " ".join(tokenizer.decode(first.context).split()[:2])
    models = _pair_with_gen2_tokenizer(tmp, tmp_path, lambda t: t.add_tokens([word]))
    refusal = (f"^cannot transplant between gen2 and scratch on task 'kv': its dev documents encode differently "
               f"under the two tokenizers \\(1 added only to gen2's \\('{word}'\\)\\)$")
    with pytest.raises(StudyError, match=refusal):
        grid.run_grid(cfg(f"paths.models={models}", "k=2"), tmp_path / "results")
    assert not (tmp_path / "results").exists()


def _word_level(vocab: list[str]) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)},
                                                                             unk_token="<unk>")))


def test_different_base_vocabularies_are_refused_and_added_tokens_are_compared_by_token_and_id():
    a, b = _word_level(["<unk>", "x", "y", "z"]), _word_level(["<unk>", "x", "z", "y"])
    with pytest.raises(StudyError, match=r"^cannot transplant between a and b: their base vocabularies differ in "
                                         r"2 tokens \('y', 'z'\)"):
        compare_vocabularies("a", a, "b", b)
    same = _word_level(["<unk>", "x", "y", "z"])
    assert not compare_vocabularies("a", a, "a2", same)
    a.add_tokens(["<|im_start|>"], special_tokens=True)
    same.add_tokens(["<|tool|>", "<|im_start|>"], special_tokens=True)  # same token, another id
    difference = compare_vocabularies("a", a, "a2", same)
    assert difference.only_a == ("<|im_start|>",) and difference.only_b == ("<|im_start|>", "<|tool|>")


def test_the_report_writes_macros_tables_and_figures(study, first_run, tmp_path):
    from paramscope.report.transplant import report

    _, tmp = study
    cfg = make_cfg("report", ["profile=smoke", "topic=transplant", "report.n_resamples=1000"])
    metrics = report(cfg, tmp / "results", tmp_path)
    macros = (tmp_path / "macros.tex").read_text()
    assert r"\newcommand{\TransplantCrossGenerationGapVerdict}" in macros
    # random models: no significant gap, so no recovery may be reported
    assert metrics["n_gaps_significant"] == 0 and r"\newcommand{\TransplantCrossGenerationGbr}{--}" in macros
    assert {p.name for p in (tmp_path / "figures").iterdir()} == {
        "transplant_k.pdf", "transplant_alpha.pdf", "transplant_modules.pdf"}
    assert {p.name for p in (tmp_path / "tables").iterdir()} == {
        "transplant_summary.tex", "transplant_controls.tex", "transplant_paper.tex"}


def test_the_grids_best_is_chosen_on_dev_and_reported_on_test(study, first_run):
    """MaxTir/MaxGbr: the configuration with the best dev value, read on test; never a test maximum."""
    from paramscope.report.transplant import Report

    _, tmp = study
    rows = load_results("transplant", root=tmp / "results", with_examples=True)
    selected = rows[rows.method == "selected"]
    first, second = sorted(set(selected.ranking))
    dev_pick = (rows.method == "selected") & (rows.split == "dev")
    test_pick = (rows.method == "selected") & (rows.split == "test")
    rows.loc[dev_pick, "tir"] = np.where(rows.loc[dev_pick, "ranking"] == second, 2.0, 1.0)  # dev: second wins
    rows.loc[test_pick, "tir"] = np.where(rows.loc[test_pick, "ranking"] == first, 3.0, 0.5)  # test: first would
    cfg = make_cfg("report", ["profile=smoke", "topic=transplant", "report.n_resamples=1000"])
    best = Report(cfg, rows).grid_max(rows.kind.iloc[0], "tir")
    assert best.split == "test" and best.ranking == second and best.tir == 0.5
    no_dev = rows[~dev_pick]
    with pytest.raises(StudyError, match="have no dev counterpart"):
        Report(cfg, no_dev).grid_max(rows.kind.iloc[0], "tir")


def test_the_plan_reads_the_config_once_into_plain_values(study):
    cfg, tmp = study
    plan = Plan.from_cfg(cfg("k=0.25", "alpha=1", "pair=[scratch,gen2]", f"export={tmp / 'out'}"))
    assert (plan.k, plan.alpha, plan.tasks, plan.rankings) == (0.25, 1.0, ("kv",), ("abs", "signed"))
    assert plan.pairs == (Pair(("gen2", "scratch"), "cross-generation"),)  # a pair is unordered
    assert (plan.splits, plan.control_splits, plan.k_splits) == (("dev", "test"), ("test",), ("dev", "test"))
    assert (plan.n_seeds, plan.n_resamples, plan.export, plan.full_grid) == (1, 1000, tmp / "out", False)
    assert type(plan.seed) is int and type(plan.batch_size) is int and plan.split["split_seed"] == plan.seed
    assert Plan.from_cfg(cfg("pair=null", "task=null")).full_grid
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.alpha = 0.5


@pytest.mark.parametrize("override, message", [
    ("alpha=0", r"alpha must lie in \(0, 1\] \(1 = the paper's copy\); got 0"),
    ("k=all", "k must be a module count"),
    ("transplant.rankings=[abs,loud]", "unknown ranking 'loud'; valid: abs, signed"),
    ("transplant.control_splits=[train]", "unknown split 'train'"),
    ("transplant.n_resamples=10", "transplant.n_seeds must be >= 0 and transplant.n_resamples >= 1000; got 1 and 10"),
    ("transplant.n_seeds=1.5", "transplant.n_seeds must be an integer, got 1.5"),
    ("pair=[gen2,tuned]", r"unknown pair '\[gen2,tuned\]'; valid: \[gen2,scratch\], \[tuned,scratch\]"),
    ("task=nope", "unknown task 'nope'"),
])
def test_the_plan_refuses_bad_input_in_one_line(study, override, message):
    cfg, _ = study
    with pytest.raises(StudyError, match=f"^{message}"):
        Plan.from_cfg(cfg(override))


def test_stage_bad_input_is_one_line_and_writes_nothing(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "stages/transplant.py", "profile=smoke", "alpha=1.5",
                           f"paths.results={tmp_path / 'results'}", f"paths.models={tmp_path / 'models'}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("paramscope: error:")]
    assert lines == ["paramscope: error: alpha must lie in (0, 1] (1 = the paper's copy); got 1.5"]
    assert "Traceback" not in proc.stderr and not (tmp_path / "results").exists()
