"""VPS: exactness of the off switch, the low-rank identity, true top-r, padding independence, no gold."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_cfg

from paramscope.errors import StudyError
from paramscope.evaluation.documents import Doc
from paramscope.evaluation.positions import context_lengths
from paramscope.evaluation.scorer import score, score_shared_context
from paramscope.models.adapters import get_adapter
from paramscope.models.random_models import tiny_random_model
from paramscope.store import load_results
from paramscope.vps.policy import Policy
from paramscope.vps.selection import build_selection, dense_selectors, masked_mean_abs
from paramscope.vps.wrapper import VPSConfig, sharpen, sharpened_output, vps_modules

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    return tiny_random_model("gpt_neox", seed=0, vocab_size=64)


def logits(model, ids, mask=None):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


IDS = torch.randint(0, 64, (3, 9), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("policy", ["fixed", "adaptive"])
def test_off_switches_give_base_logits_exactly(model, policy):
    base = logits(model, IDS)
    for off in (VPSConfig(gamma=0.5, policy=policy, enabled=False), VPSConfig(gamma=0.0, policy=policy)):
        with sharpen(model, off):
            assert torch.equal(logits(model, IDS), base)
    with sharpen(model, VPSConfig(gamma=0.5, rank=4, policy=policy, tau=None)):
        assert not torch.allclose(logits(model, IDS), base, atol=1e-4)  # on really changes something
    assert torch.equal(logits(model, IDS), base)  # and leaving the context restores the model


@pytest.mark.parametrize("builder", ["sparse", "coupled"])
@pytest.mark.parametrize("policy", ["fixed", "adaptive"])
def test_wrapper_equals_dense_delta_w(builder, policy):
    torch.manual_seed(0)
    lin = torch.nn.Linear(12, 7).double()
    with torch.no_grad():
        lin.weight.mul_(3.0)  # large enough that the clip binds on some components
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    cfg = VPSConfig(gamma=0.7, rank=3, builder=builder, policy=policy, tau=0.8)
    with torch.no_grad():
        out = lin(x)
        wrapped, selection, scale, gamma = sharpened_output(lin, x, out, mask, cfg, torch.tensor([1.0, 4.0]))
        u, v = dense_selectors(selection, 12, 7, scale)
        w = lin.weight.float()
        for b in range(2):  # Delta W = gamma (W U)(V^T W), formed densely
            delta_w = gamma[b] * (w @ u[b]) @ (v[b].T @ w)
            dense = x[b].float() @ (w + delta_w).T + lin.bias.float()
            torch.testing.assert_close(wrapped[b].float(), dense, rtol=1e-5, atol=1e-5)
            comp = (w @ u[b]).norm(dim=0) * (v[b].T @ w).norm(dim=1)  # each rank-1 part within tau
            assert torch.all(comp <= 0.8 + 1e-6) and torch.any(scale[b] < 1)


def test_sparse_selection_is_the_true_top_r():
    x = torch.zeros(1, 3, 6)
    x[0, :, :] = torch.tensor([0.1, 5.0, -3.0, 0.2, 4.0, -6.0])
    x[0, 2, :] = 100.0  # a padded token: must not count
    mask = torch.tensor([[1, 1, 0]])
    y = torch.tensor([1.0, -2.0, 0.5, 3.0]).expand(1, 3, 4).clone()
    sel = build_selection("sparse", x, y, mask, rank=3)
    assert sel.in_idx.tolist() == [[5, 1, 4]]  # |-6| > 5 > 4, in descending order
    assert sel.out_idx.tolist() == [[3, 1, 0]]
    rng = np.random.default_rng(0)
    xr = torch.tensor(rng.normal(size=(4, 6, 40)), dtype=torch.float32)
    mr = torch.ones(4, 6, dtype=torch.long)
    sel = build_selection("sparse", xr, xr[..., :10], mr, rank=5)
    want = np.argsort(-masked_mean_abs(xr, mr).numpy(), axis=1)[:, :5]
    assert sel.in_idx.numpy().tolist() == want.tolist()


def test_coupled_ridge_keeps_index_order():
    torch.manual_seed(0)
    x = torch.randn(1, 50, 8)
    mask = torch.ones(1, 50, dtype=torch.long)
    y = torch.zeros(1, 50, 6)
    sel0 = build_selection("sparse", x, torch.randn(1, 50, 6), mask, rank=2)
    i0, i1 = sel0.in_idx[0].tolist()
    y[0, :, 4] = 3.0 * x[0, :, i1]  # the strongest output is driven by the second-ranked input only
    y[0, :, 2] = -2.0 * x[0, :, i0]
    sel = build_selection("coupled", x, y, mask, rank=2, ridge=1e-6)
    assert sel.in_idx[0].tolist() == [i0, i1] and sel.out_idx[0].tolist() == [4, 2]
    expected = torch.tensor([[0.0, -2.0], [3.0, 0.0]])  # T[j, c]: input i_j -> output o_c
    torch.testing.assert_close(sel.mix[0], expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("policy", ["fixed", "adaptive"])
@pytest.mark.parametrize("builder", ["sparse", "coupled"])
def test_padding_and_batch_mates_do_not_change_a_sequence(model, policy, builder):
    short = torch.tensor([[5, 9, 2, 7]])
    long = torch.randint(0, 64, (1, 10), generator=torch.Generator().manual_seed(3))
    batch = torch.zeros(2, 10, dtype=torch.long)
    batch[0, :4], batch[1] = short[0], long[0]
    batch[0, 4:] = 63  # pad with a real token id, so an unmasked statistic would see it
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[0, 4:] = 0
    cfg = VPSConfig(gamma=0.5, rank=4, builder=builder, policy=policy, tau=None)
    with sharpen(model, cfg):
        alone = logits(model, short)[0]
        together = logits(model, batch, mask)[0, :4]
        torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
        unmasked = logits(model, batch)[0, :4]  # causal attention alone hides pads from the base model,
    assert not torch.allclose(unmasked, alone, atol=1e-4)  # so only the mask keeps VPS's statistics clean
    assert torch.allclose(logits(model, batch)[0, :4], logits(model, short)[0], atol=1e-5)


def test_layer_sets_and_adaptive_gamma(model):
    adapter = get_adapter(model)
    attn, mlp, every = (vps_modules(adapter, s) for s in ("attn", "mlp", "all"))
    assert set(attn) | set(mlp) == set(every) and not set(attn) & set(mlp)
    assert all(n.endswith(("query_key_value", "dense")) for n in attn)
    assert {n.rsplit(".", 1)[-1] for n in vps_modules(adapter, "dense_4h_to_h")} == {"dense_4h_to_h"}
    with pytest.raises(ValueError, match="valid: attn, mlp, all"):
        vps_modules(adapter, "heads")
    h = torch.full((2, 3, 4), 1.0)
    mask = torch.ones(2, 3)
    pol = Policy("adaptive", gamma=1.0, lo_ratio=0.2)
    g = pol.gammas(h, mask, torch.tensor([3.0, 0.75]))  # E = 1: sigma = 1 - 1/e; H = 0.75 -> sigma ** 0.25
    sigma = 1 - np.exp(-1.0)
    np.testing.assert_allclose(g.numpy(), [0.2 + 0.8 * sigma, 0.2 + 0.8 * sigma**0.25], rtol=1e-6)


def test_scorer_under_vps_does_not_depend_on_batch_size(model):
    rng = np.random.default_rng(0)
    docs = [Doc(i, tuple(rng.integers(1, 60, rng.integers(3, 12)).tolist()), ((1,), (2,), (3,)), (1, 1, 1), 0)
            for i in range(12)]
    with sharpen(model, VPSConfig(gamma=0.5, rank=4, builder="coupled", policy="adaptive")):
        one = score(model, docs, batch_size=1)
        many = score(model, docs, batch_size=12)
    np.testing.assert_allclose(np.stack(one.lls), np.stack(many.lls), atol=1e-5)
    blind = [dataclasses.replace(d, gold=2) for d in docs]  # gold labels never reach the model
    with sharpen(model, VPSConfig(gamma=0.5, rank=4)):
        a, b = score(model, docs, 12), score(model, blind, 12)
    np.testing.assert_array_equal(np.stack(a.lls), np.stack(b.lls))


def test_multi_token_choices_are_scored_as_whole_sequences_under_vps(model):
    """STUDY section 7 selects over one sequence's tokens: a choice continuing a shared key/value cache would
    see only its own tokens, so VPS refuses it, and each choice is scored as its own sequence instead. A
    document packed into one row (`evaluation.packing`) declares its context, so VPS reads the same
    statistics there and gives the whole-sequence numbers."""
    docs = [Doc(0, (5, 9, 11, 3), ((7, 8), (12, 13, 14), (20,)), (2, 3, 1), 0),
            Doc(1, (6, 2), ((30, 31, 32), (40, 41)), (3, 2), 1)]
    shared, whole = score(model, docs, 4), score(model, docs, 4, share_context=False)
    for a, b in zip(shared.lls, whole.lls):  # the plain model: both paths give the same numbers
        np.testing.assert_allclose(a, b, atol=1e-5)
    config = VPSConfig(gamma=0.5, rank=4, policy="adaptive")
    with sharpen(model, config):
        with pytest.raises(RuntimeError, match="share_context=False"):
            score_shared_context(model, docs[0])
        got = score(model, docs, 4, share_context=False)
        for a, b in zip(score(model, docs, 4).lls, got.lls):  # packed rows under VPS: the same numbers
            np.testing.assert_allclose(a, b, atol=1e-5)
        for doc, lls in zip(docs, got.lls):
            for choice, ll in zip(doc.choices, lls):
                seq = doc.context + choice
                with context_lengths(torch.tensor([len(doc.context)])):  # statistics from the context only
                    logp = torch.log_softmax(logits(model, torch.tensor([seq[:-1]]))[0].double(), -1)  # HFLM's input
                by_hand = sum(logp[len(doc.context) - 1 + j, t].item() for j, t in enumerate(choice))
                assert ll == pytest.approx(by_hand, abs=1e-5)
    assert any(not np.allclose(a, b, atol=1e-3) for a, b in zip(got.lls, whole.lls))  # VPS did act


@pytest.mark.parametrize("builder", ["sparse", "coupled"])
@pytest.mark.parametrize("policy", ["fixed", "adaptive"])
def test_a_choices_first_tokens_do_not_depend_on_its_later_tokens_under_vps(model, builder, policy):
    """The score must be P(choice | context): channels and gamma come from the context positions only, so
    the log-probabilities of a choice's first k tokens cannot change when its later tokens do."""
    context, first = (5, 9, 11, 3, 17, 2), (7, 8)
    seqs = [context + first + later for later in ((12, 13), (40, 41), (3, 60))]
    config = VPSConfig(gamma=0.8, rank=4, builder=builder, policy=policy, tau=None)
    read = slice(len(context) - 1, len(context) + len(first) - 1)  # positions predicting the first tokens
    with sharpen(model, config):
        with context_lengths(torch.tensor([len(context)])):
            heads = [torch.log_softmax(logits(model, torch.tensor([s[:-1]]))[0, read], -1) for s in seqs]
        without = [torch.log_softmax(logits(model, torch.tensor([s[:-1]]))[0, read], -1) for s in seqs]
    for other in heads[1:]:
        torch.testing.assert_close(other, heads[0], rtol=0, atol=1e-6)
    # statistics over the whole sequence (the old way) let the later tokens move the earlier scores
    assert any(not torch.allclose(w, without[0], atol=1e-4) for w in without[1:])


# --------------------------------------------------------------------------- the stage on the smoke suite


@pytest.fixture(scope="module")
def smoke_job(smoke_suite, tmp_path_factory):
    """A random GPT-NeoX over the smoke suite's vocabulary, saved as the model `scratch`."""
    from transformers import AutoTokenizer

    from paramscope.models.zoo import save_model

    _, data = smoke_suite
    root = tmp_path_factory.mktemp("vps")
    tokenizer = AutoTokenizer.from_pretrained(data / "tokenizer")
    save_model(tiny_random_model("gpt_neox", seed=1, vocab_size=len(tokenizer)), tokenizer, root / "models" / "scratch",
               {"test": True})
    overrides = ["profile=smoke", f"paths.data={data}", f"paths.tasks={data / 'tasks'}",
                 f"paths.tokenizer={data / 'tokenizer'}", f"paths.models={root / 'models'}", "vps.models=[scratch]",
                 "tasks=[arith]", "gamma=[0.3,1.0]", "rank=[2]", "builder=[sparse,coupled]", "layer_set=[all]",
                 "policy=[fixed]", "vps.overhead_repeats=1"]
    return root, overrides


@pytest.fixture(scope="module")
def smoke_run(smoke_job, tmp_path_factory):
    """The stage run twice on the smoke job, then its report."""
    from paramscope.report.vps import report
    from paramscope.vps.run import run_vps

    root, overrides = smoke_job
    cfg = make_cfg("vps", overrides)
    first, again = run_vps(cfg, root / "results"), run_vps(cfg, root / "results")
    out = tmp_path_factory.mktemp("report")
    metrics = report(make_cfg("report", ["profile=smoke", "topic=vps"]), root / "results", out)
    return root, first, again, out, metrics


def test_stage_chooses_on_dev_tests_once_and_resumes(smoke_run):
    root, first, again, _, _ = smoke_run
    assert (first["computed"], first["skipped"]) == (1 + 4 + 4, 0)  # dev base + 4 configs; test base, chosen, 2 loops
    assert (again["computed"], again["skipped"]) == (0, 9)  # finished cells are read back, not recomputed
    df = load_results("vps", root / "results")
    test = df[df.split == "test"]
    assert sorted(test.condition) == ["base", "selected", "verify", "verify_control"]
    grid = df[df.condition == "grid"]
    assert set(grid.split) == {"dev"} and len(grid) == 4
    best = grid.sort_values(["acc", "loss"], ascending=[False, True]).iloc[0]
    chosen = test[test.condition == "selected"].iloc[0]
    assert (chosen.gamma, chosen.builder) == (best.gamma, best.builder) and chosen.dev_acc == best.acc
    assert chosen.latency_ratio > 0 and chosen.peak_bytes > 0
    loops = test[test.condition.str.startswith("verify")]
    assert set(loops.selected_cell) == {chosen.cell} and sorted(loops.gamma) == [0.0, chosen.gamma]


def test_report_files_and_the_paper_section_cite_generated_macros(smoke_run):
    import re

    _, _, _, out, metrics = smoke_run
    assert metrics["vps/n_cells"] == 1 and metrics["vps/grid_size"] == 4
    for name in ("macros.tex", "metrics.json", "tables/test.tex", "tables/verify.tex", "figures/gamma_rank.pdf",
                 "figures/overhead.pdf"):
        assert (out / name).stat().st_size > 0, name
    macros = set(re.findall(r"\\newcommand\{\\(\w+)\}", (out / "macros.tex").read_text()))
    assert "VpsScratchArithDelta" in macros and "VpsScratchArithVerifyControlP" in macros
    section = (ROOT / "paper" / "sections" / "vps.tex").read_text()
    assert not re.search(r"\d", section), "the VPS section types a number"
    cited = set(re.findall(r"\\(?:val|ppci|pctci)\{(\w+)\}", section))
    assert cited and all(n.startswith("Vps") or n in ("ReportSplit", "SelectSplit") for n in cited)
    # Names that do not depend on the models, tasks or grid values of the run must be generated by it.
    specific = re.compile(r"Scratch|GenTwo|Tuned|Gamma[A-Z]|Rank[A-Z]|DeltaAll|DeltaAttn|DeltaMlp|Adaptive|Coupled")
    generic = {n for n in cited if n.startswith("Vps") and not specific.search(n)}
    assert generic - macros == set()


def test_verification_loop_never_sees_gold(smoke_job):
    from paramscope.evaluation.tasks import task_docs
    from paramscope.models import zoo
    from paramscope.vps.verify import LoopSettings, inverse_question, verification_loop

    assert inverse_question("mod n3 add2", 0, 5) == ("mod n0 add3", 3)  # 3 + 2 = 0 (mod 5); 0 + 3 = 3
    assert inverse_question("mod n1 sub4", 2, 5) == ("mod n2 add4", 1)  # 1 - 4 = 2 (mod 5); 2 + 4 = 1
    root, overrides = smoke_job
    cfg = make_cfg("vps", overrides)
    model, tokenizer = zoo.load("scratch", root / "models")
    docs = list(task_docs(cfg, "arith", "test", tokenizer).docs)
    config = VPSConfig(gamma=1.0, rank=2)
    result = verification_loop(model, tokenizer, docs, config, 5, LoopSettings(), 16)
    shuffled = [dataclasses.replace(d, gold=(d.gold + 1) % len(d.choices)) for d in docs]
    again = verification_loop(model, tokenizer, shuffled, config, 5, LoopSettings(), 16)
    np.testing.assert_array_equal(result.prediction, again.prediction)
    assert result.rounds_used.max() <= LoopSettings().rounds and set(result.verified) <= {0, 1}


@pytest.mark.parametrize("override, message", [
    ("builder=[dense]", "unknown builder 'dense'"),
    ("policy=[greedy]", "unknown policy 'greedy'"),
    ("gamma=[0]", "gamma must be > 0"),
    ("rank=[0]", "rank must be a positive integer"),
    ("phase=test", "unknown phase 'test'"),
])
def test_bad_requests_are_study_errors(override, message):
    from paramscope.vps.run import Plan

    with pytest.raises(StudyError, match=message):
        Plan.from_cfg(make_cfg("vps", ["profile=smoke", override]))


@pytest.mark.parametrize("family", ["gpt2", "gpt_neo", "llama", "qwen2"])
def test_every_family_is_wrapped_reversibly_and_per_sequence(family):
    model = tiny_random_model(family, seed=0, vocab_size=64)
    ids = torch.randint(1, 64, (2, 7), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0
    base = logits(model, ids, mask)
    with sharpen(model, VPSConfig(gamma=1.0, rank=4, builder="coupled", policy="adaptive", tau=None)) as wrapped:
        assert len(wrapped) == len(get_adapter(model).linear_modules())
        on = logits(model, ids, mask)
        alone = logits(model, ids[:1, :4])
    assert not torch.allclose(on, base, atol=1e-4)
    torch.testing.assert_close(on[0, :4], alone[0], rtol=1e-4, atol=1e-4)
    assert torch.equal(logits(model, ids, mask), base)


def test_report_refuses_cells_of_two_checkpoints_or_two_settings():
    import pandas as pd

    from paramscope.errors import StudyError
    from paramscope.report.vps import AXES, check_one_setting

    point = {a: v for a, v in zip(AXES, ("sparse", 2, 0.1, "all", "fixed"))}
    base = {"model": "m", "task": "t", "split": "dev", "condition": "base"}
    grid = {**base, "condition": "grid", **point, "tau": 0.8, "clamp": None, "ridge": 1.0, "lo_ratio": 0.0}
    check_one_setting(pd.DataFrame([base, grid]))  # one of each: fine
    with pytest.raises(StudyError, match="different settings or weights"):
        check_one_setting(pd.DataFrame([base, base, grid]))
    with pytest.raises(StudyError, match="different settings or weights"):
        check_one_setting(pd.DataFrame([base, grid, {**grid, "tau": 0.5}]))


def test_a_whole_grid_run_prunes_the_cells_it_did_not_plan(tmp_path):
    from omegaconf import OmegaConf

    from paramscope.store import CellGrid
    from paramscope.vps.run import ROWS, whole_grid

    cells = CellGrid("vps", ROWS, tmp_path)
    kept, stale = cells.plan(task="kv").path, tmp_path / "vps" / "b.parquet"
    kept.parent.mkdir()
    kept.write_bytes(b"x")
    stale.write_bytes(b"x")
    assert cells.prune("*") == 1  # the whole grid's scope is every cell of the stage
    assert kept.exists() and not stale.exists()
    assert whole_grid(OmegaConf.create({"model": None, "task": None}))
    assert not whole_grid(OmegaConf.create({"model": "scratch", "task": None}))
    assert not whole_grid(OmegaConf.create({"model": None, "task": "kv"}))
