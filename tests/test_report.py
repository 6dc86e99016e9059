"""Reports from result rows: per-map FDR, macros, metrics, tables and figures, all reproducible.

Everything runs on small synthetic result cells written with ``paramscope.store.write_cell``, so
these tests need neither trained models nor LaTeX.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import eval_rows

from paramscope.errors import StudyError
from paramscope.report import latex as tex
from paramscope.report.atlas.inputs import load_inputs
from paramscope.report.atlas.keys import MAP_KEYS
from paramscope.report.atlas.topic import aggregate, build
from paramscope.report.figures import figures
from paramscope.report.settings import Settings
from paramscope.stats import benjamini_hochberg, paired_delta_summary
from paramscope.store import cell_key, cell_path, write_cell

ROOT = Path(__file__).resolve().parents[1]
# seaborn's heatmap calls a colormap method that matplotlib has scheduled for removal: not ours
pytestmark = pytest.mark.filterwarnings("ignore:The set_bad function:PendingDeprecationWarning")
MODELS = ["scratch", "gen2", "tuned", "scratch-step0"]
ABLATED = MODELS[:3]
TASKS = ["induction", "kv", "facts"]
SPLITS = ["dev", "test"]
SKILL = {"scratch": 0.8, "gen2": 0.65, "tuned": 0.85, "scratch-step0": 0.25}
SETTINGS = Settings(n_resamples=1000, models=tuple(MODELS), tasks=tuple(TASKS), n_choices=4,
                    facts=(("ProfileName", "synthetic"),))


def eval_row(model: str, task: str, split: str, ids: list, correct: list) -> pd.DataFrame:
    c = np.asarray(correct, dtype=int)
    row = eval_rows(model, task, split, ids, c, ex_gold_ll=(-1.0 - c).astype(float).tolist())
    return pd.DataFrame({k: [v] for k, v in row.items()})


def ablate_row(model: str, task: str, split: str, group: str, layer: int, unit: int, p: float,
               delta: float, op: str = "zero", value: float = 0.0, n: int = 60, acc_clean: float = 0.8) -> dict:
    """A row with the statistics given directly (aggregate never re-derives them from examples)."""
    return {
        "model": model, "digest": f"d-{model}", "task": task, "split": split, "cell": "c", "group": group,
        "layer": layer, "unit": unit, "n_units": 1, "op": op, "value": value, "n": n, "acc_clean": acc_clean,
        "acc": acc_clean + delta, "delta_acc": delta, "ci_low": delta - 0.05, "ci_high": delta + 0.05,
        "p_mcnemar": p, "loss": 1.0, "loss_clean": 1.0, "delta_loss": -delta, "delta_loss_ci_low": -delta - 0.1,
        "delta_loss_ci_high": -delta + 0.1, "ex_correct": [1] * n, "ex_gold_ll": [-1.0] * n,
    }


def write_map(root: Path, rows: list[dict]) -> None:
    r = rows[0]
    key = cell_key(**{k: r[k] for k in MAP_KEYS})
    write_cell(pd.DataFrame(rows), cell_path("ablate", key, root))


def write_eval(root: Path, df: pd.DataFrame) -> None:
    r = df.iloc[0]
    write_cell(df, cell_path("eval", cell_key(model=r.model, task=r.task, split=r.split), root))


def make_results(root: Path, seed: int = 0, n: int = 60, layers: int = 2, heads: int = 4,
                 tasks: tuple[str, ...] = tuple(TASKS), scale_values: tuple[float, ...] = (),
                 full_grid: bool = False) -> Path:
    """A small study: four models, head / neuron-block / site maps whose statistics come from examples.

    One head per task is critical (most of its correct answers break); gen2's documents are stored
    in a shuffled order, so model pairs must be matched by document id.
    """
    rng = np.random.default_rng(seed)
    block = 32
    units = {"heads": [(lay, h, 1) for lay in range(layers) for h in range(heads)],
             "neurons": [(lay, b, block) for lay in range(layers) for b in (0, block)],
             **{g: [(lay, -1, 1) for lay in range(layers)] for g in ("attn", "mlp", "layers")}}
    kinds = [("zero", 0.0, g) for g in units] + [("scale", v, g) for v in scale_values for g in ("heads", "layers")]
    if full_grid:  # every other map type of the DVC grid: replacements, weight groups (as in params.yaml)
        units.update({g: [(-1, b, 100) for b in range(4)] for g in ("matrix", "magnitude", "random")})
        units.update(single_neurons=[(lay, n, 1) for lay in range(layers) for n in (0, 7)],
                     neuron_clusters=[(lay, c, 16) for lay in range(layers) for c in (0, 16)])
        kinds += [("mean", 0.0, g) for g in ("heads", "layers")] + [("resample", 0.0, g) for g in ("heads", "layers")]
        kinds += [("noise", 1.0, "heads")] + [("zero", 0.0, g) for g in ("matrix", "magnitude", "random")]
        kinds += [("zero", 0.0, g) for g in ("single_neurons", "neuron_clusters")]  # zero maps only
    for model in MODELS:
        for t, task in enumerate(tasks):
            for split in SPLITS:
                ids = [f"{task}-{split}-{i}" for i in range(n)]
                correct = (rng.random(n) < SKILL[model]).astype(int)
                order = rng.permutation(n) if model == "gen2" else np.arange(n)
                write_eval(root, eval_row(model, task, split, [ids[i] for i in order], correct[order]))
                if model not in ABLATED:
                    continue
                for op, value, group in kinds:
                    rows = []
                    for lay, unit, n_units in units[group]:
                        critical = (lay == t % layers) and (unit in (-1, 0) or (lay, unit) == (1, t % heads))
                        harm = (0.8 if critical else 0.03) * (1.0 if op == "zero" else abs(1 - value))
                        flip = (correct == 1) & (rng.random(n) < harm)
                        ablated = np.where(flip, 0, correct)
                        stats = paired_delta_summary(correct, ablated, n_resamples=1000, seed=0)
                        row = ablate_row(model, task, split, group, lay, unit, stats["p_mcnemar"],
                                         stats["delta_acc"], op=op, value=value, n=n, acc_clean=stats["acc_clean"])
                        row.update(stats, n_units=n_units, delta_loss=float(flip.mean()))
                        if group in ("magnitude", "random"):
                            row["unit_name"] = f"{'attn' if unit < 2 else 'mlp'} bin {unit % 2} of 2"
                        if full_grid and op == "zero" and group in ("heads", "neurons", "single_neurons"):
                            row["screen_delta_gold_ll"] = -float(flip.mean()) + 0.01 * rng.standard_normal()
                        rows.append(row)
                    write_map(root, rows)
                if full_grid:
                    write_map(root, pair_rows(model, task, split, rng))
    return root


def pair_rows(model: str, task: str, split: str, rng: np.random.Generator, k: int = 3) -> list[dict]:
    """Rows of the `pairs` grid group: every pair of the top k heads, with a non-additivity CI."""
    rows = []
    for unit, (a, b) in enumerate(itertools.combinations(range(k), 2)):
        nonadd = float(rng.normal(0, 0.05))
        row = ablate_row(model, task, split, "pairs", -1, unit, 0.5, -0.2)
        row.update(n_units=2, pair_group="heads", unit_name=f"L0H{a}+L1H{b}", unit_a=f"L0H{a}", unit_b=f"L1H{b}",
                   rank_a=a, rank_b=b, delta_acc_a=-0.1, delta_acc_b=-0.1, nonadd=nonadd,
                   nonadd_ci_low=nonadd - 0.03, nonadd_ci_high=nonadd + 0.03)
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return make_results(tmp_path_factory.mktemp("study") / "results")


@pytest.fixture(scope="module")
def reports(results, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reports") / "reports"
    aggregate(results, out, SETTINGS)
    figures(out, "test", MODELS, TASKS)
    return out


# ------------------------------------------------------------------------------------- latex helpers


def test_macro_names_are_letters_only():
    assert tex.macro_name("gen2", "kv", "test", "acc") == "GenTwoKvTestAcc"
    assert tex.macro_name("scratch-step0", "facts") == "ScratchStepZeroFacts"
    assert tex.macro_name("heads", "scale", "0.5") == "HeadsScaleZeroPointFive"
    assert tex.pct(-0.123) == r"\ensuremath{-}12.3" and tex.pct(-0.0001) == "0.0"
    assert tex.pval(0.5) == "0.500" and "10^{-5}" in tex.pval(1.2e-5) and tex.pval(float("nan")) == tex.DASH
    with pytest.raises(ValueError):
        tex.macros_tex({"Bad1": "x"})


# ---------------------------------------------------------------------------------------- statistics


def test_q_is_benjamini_hochberg_within_each_map_only(tmp_path):
    res = tmp_path / "results"
    for model in ("scratch", "gen2"):
        for split in SPLITS:
            write_eval(res, eval_row(model, "kv", split, list(range(60)), [1] * 48 + [0] * 12))
    strong = [0.01, 0.02, 0.03, 0.04]  # per map: every q = 0.04 < 0.05; pooled with `weak`: q = 0.08
    weak = [0.9, 0.8, 0.7, 0.95]
    for split in SPLITS:
        write_map(res, [ablate_row("scratch", "kv", split, "heads", 0, h, p, -0.2) for h, p in enumerate(strong)])
        write_map(res, [ablate_row("scratch", "kv", split, "heads", 0, h, p, -0.01, op="scale", value=2.0)
                        for h, p in enumerate(weak)])
    rep = build(*load_inputs(res), Settings(n_resamples=1000, pairs=(("gen2", "scratch"),)))
    a = rep.atlas[(rep.atlas.split == "test") & (rep.atlas.op == "zero")].sort_values("unit")
    np.testing.assert_allclose(a["q"], benjamini_hochberg(strong))
    assert a["significant"].all()
    pooled = benjamini_hochberg(strong + weak)[:4]
    assert (pooled > 0.05).all()  # the pooled answer would have lost every unit
    for _, m in rep.atlas.groupby(MAP_KEYS):
        np.testing.assert_allclose(m["q"], benjamini_hochberg(m["p_mcnemar"].to_numpy()))


def test_model_pairs_are_matched_by_document_id(results):
    ev, ab = load_inputs(results)
    rep = build(ev, ab, SETTINGS)
    test = ev[ev.split == "test"].set_index(["model", "task"])
    for task in TASKS:
        g, s = test.loc[("gen2", task)], test.loc[("scratch", task)]
        by_id = dict(zip(s.ex_doc_ids, s.ex_correct))
        expected = np.mean([c - by_id[i] for i, c in zip(g.ex_doc_ids, g.ex_correct)])
        row = rep.pairs[(rep.pairs.model == "gen2") & (rep.pairs.task == task)].iloc[0]
        assert row.delta_acc == pytest.approx(expected)
        assert row.ci_low <= row.delta_acc <= row.ci_high


def test_top_units_are_chosen_on_dev_and_reported_on_test(tmp_path):
    res = tmp_path / "results"
    for model in ("scratch", "gen2"):
        for split in SPLITS:
            write_eval(res, eval_row(model, "kv", split, list(range(60)), [1] * 48 + [0] * 12))
    dev = {0: -0.30, 1: -0.10, 2: 0.0}  # dev says head 0 matters most
    test = {0: -0.15, 1: -0.40, 2: 0.0}  # test alone would pick head 1 (the winner's curse)
    for split, eff in (("dev", dev), ("test", test)):
        write_map(res, [ablate_row("scratch", "kv", split, "heads", 0, h, 0.001, d) for h, d in eff.items()])
    rep = build(*load_inputs(res), Settings(n_resamples=1000, pairs=()))
    top = rep.maps.set_index("split").loc["test"]
    assert (top.top_unit, top.top_delta_acc, top.top_selected_on) == (0, pytest.approx(-0.15), "dev")
    assert rep.macros["AtlasScratchKvHeadsTopUnit"] == "L0H0"


def test_a_test_map_without_its_dev_map_is_an_error(tmp_path):
    res = tmp_path / "results"
    for model in ("scratch", "gen2"):
        for split in SPLITS:
            write_eval(res, eval_row(model, "kv", split, list(range(60)), [1] * 48 + [0] * 12))
    write_map(res, [ablate_row("scratch", "kv", "test", "heads", 0, h, 0.001, -0.1) for h in range(3)])
    with pytest.raises(StudyError, match=r"^the ablation map \(.*split=test.*\) has no dev counterpart"):
        build(*load_inputs(res), Settings(n_resamples=1000, pairs=()))


# ----------------------------------------------------------------------------------------- outputs


def test_metrics_on_a_constructed_example(tmp_path):
    res = tmp_path / "results"
    correct = {"scratch": [1] * 45 + [0] * 15, "gen2": [1] * 30 + [0] * 30}  # 0.75 and 0.5
    for model, c in correct.items():
        for split in SPLITS:
            write_eval(res, eval_row(model, "facts", split, list(range(60)), c))
    p = [1e-6, 1e-5, 0.5, 0.9]  # BH: q = 4e-6, 2e-5, 0.667, 0.9 -> two significant heads
    for model in correct:
        for split in SPLITS:
            write_map(res, [ablate_row(model, "facts", split, "heads", h // 2, h % 2, pv, -0.1 * (pv < 0.01))
                            for h, pv in enumerate(p)])
    out = tmp_path / "reports"
    aggregate(res, out, Settings(n_resamples=1000, pairs=(("gen2", "scratch"),)))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["acc/test/scratch/facts"] == 0.75
    assert metrics["acc/test/gen2/facts"] == 0.5
    assert metrics["atlas/scratch/facts/heads/n_sig"] == 2
    assert metrics["atlas/scratch/facts/heads/n_units"] == 4
    assert metrics["atlas/all/heads/n_sig"] == 4
    # gen2 is right exactly where scratch is right on docs 0-29, wrong on 45-59, and differs on 30-44
    assert metrics["pair/gen2-vs-scratch/facts/delta_acc"] == -0.25
    assert metrics["pair/gen2-vs-scratch/facts/p_mcnemar"] == pytest.approx(2 * 0.5**15, rel=1e-5)
    assert all(isinstance(k, str) and not isinstance(v, (dict, list)) for k, v in metrics.items())


def test_pair_rows_are_reported_as_interactions_not_as_a_map(tmp_path):
    res = tmp_path / "results"
    for split in SPLITS:
        write_eval(res, eval_row("scratch", "facts", split, list(range(60)), [1] * 60))
        write_map(res, [ablate_row("scratch", "facts", split, "heads", 0, h, 0.5, -0.01) for h in range(2)])
        pairs = []
        for unit, (low, high) in enumerate([(0.05, 0.2), (-0.3, -0.1), (-0.05, 0.04)]):
            row = ablate_row("scratch", "facts", split, "pairs", -1, unit, 0.5, -0.2)
            row.update(n_units=2, pair_group="heads", unit_name=f"p{unit}", unit_a="L0H0", unit_b=f"L1H{unit}",
                       rank_a=0, rank_b=unit + 1, delta_acc_a=-0.1, delta_acc_b=-0.1,
                       nonadd=(low + high) / 2, nonadd_ci_low=low, nonadd_ci_high=high)
            pairs.append(row)
        write_map(res, pairs)
    out = tmp_path / "reports"
    aggregate(res, out, Settings(n_resamples=1000, pairs=()))
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["pairs/n"], metrics["pairs/n_super"], metrics["pairs/n_sub"]) == (3, 1, 1)
    assert "atlas/scratch/facts/pairs/n_units" not in metrics  # not treated as a map of units
    atlas = pd.read_parquet(out / "atlas.parquet")
    assert set(atlas["group"]) == {"heads"}
    inter = pd.read_csv(out / "data" / "interactions.csv")
    assert list(inter[inter.split == "test"].sort_values("unit_b")["sign"]) == ["super", "sub", "none"]
    assert (out / "tables" / "atlas_interactions.tex").exists()
    macros = _macros(out / "macros.tex")
    assert (macros["PairsN"], macros["PairsNSuper"], macros["PairsTopK"]) == ("3", "1", "4")


def _macros(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("%"):
            continue
        m = re.fullmatch(r"\\newcommand\{\\([A-Za-z]+)\}\{(.*)\}", line)
        assert m, f"not a macro definition: {line!r}"
        name, value = m.groups()
        assert name not in out, f"duplicate macro {name}"
        assert value.count("{") == value.count("}") and value.strip()
        out[name] = value
    return out


def test_macros_are_valid_and_unique(reports):
    macros = _macros(reports / "macros.tex")
    assert macros["ScratchFactsTestAcc"] == tex.pct(
        pd.read_csv(reports / "plots/clean_accuracy.csv")
        .query("model == 'scratch' and task == 'facts' and split == 'test'")
        .acc.iloc[0])
    for name in ("CiLevel", "FdrLevel", "ChanceAcc", "GenTwoVsScratchMinDelta", "GenTwoVsScratchMinVerdict",
                 "AtlasHeadsNSig", "AtlasHeadsTopUnit", "AtlasLayersNSig", "ScratchHeadsRhoMean",
                 "AtlasScratchInductionHeadsTopDelta", "NameScratchStepZero", "ProfileName"):
        assert name in macros, name
    assert macros["AtlasHeadsNSig"] != "0"  # the critical heads are found


TOPIC_MACROS = ("Transplant", "Structure", "Optimize", "Vps", "Validation")  # prefixes of the topic reports
ATLAS_SECTIONS = ("introduction", "setup", "results", "limitations")  # the parts built from this aggregate
PAPER_CITES = re.compile(r"\\(val|pctci|ppci)\{([A-Za-z]+)\}")


def test_paper_cites_only_generated_macros_and_types_no_number(tmp_path):
    """Against a synthetic study with the tiny profile's models, tasks and map grid."""
    from helpers import make_cfg

    cfg = make_cfg("aggregate", ["report.n_resamples=1000"])
    res = make_results(tmp_path / "results", layers=2, heads=4, tasks=tuple(cfg.tasks), scale_values=(0.5, 2.0),
                       full_grid=True)
    aggregate(res, tmp_path / "reports", Settings.from_cfg(cfg))
    macros = _macros(tmp_path / "reports" / "macros.tex")
    sections = sorted((ROOT / "paper" / "sections").glob("*.tex"))
    assert sections
    # The other topics' sections cite their own reports/<topic>/macros.tex, tested with each topic.
    atlas_sections = [ROOT / "paper" / "sections" / f"{name}.tex" for name in ATLAS_SECTIONS]
    for path in [ROOT / "paper" / "main.tex", *atlas_sections]:
        for helper, name in PAPER_CITES.findall(_uncommented(path)):
            needed = [name] if helper == "val" else [name, f"{name}Low", f"{name}High"]
            if path.name == "main.tex" and name.startswith(TOPIC_MACROS):
                continue  # the abstract cites every topic's report; the pipeline test builds them all
            assert not [n for n in needed if n not in macros], (path.name, helper, name)
    for path in atlas_sections:
        assert not re.search(r"\d", _uncommented(path)), f"{path.name} types a number"
    for path in [*sections, ROOT / "paper" / "pretrained.tex"]:  # formulas (1 - alpha, log10), never a typed result
        # not lengths
        result = re.search(r"\d+\.\d+(?!\d|pt|em|ex|cm|mm|in|\\[a-z]*width)|\d+\s*(\\%|pp\b)", _uncommented(path))
        assert not result, f"{path.name} types a result: {result.group(0) if result else ''}"


def _uncommented(path: Path) -> str:
    return "\n".join(re.sub(r"(?<!\\)%.*", "", line) for line in path.read_text().splitlines())


def test_tables_are_booktabs_fragments(reports):
    names = {p.stem for p in (reports / "tables").glob("*.tex")}
    assert {"clean_accuracy", "model_pairs", "atlas_summary", "atlas_top_heads"} <= names
    for p in (reports / "tables").glob("*.tex"):
        text = p.read_text()
        assert text.startswith(r"\begin{tabular}") and r"\toprule" in text and text.rstrip().endswith(r"\end{tabular}")
        assert "nan" not in text.lower()
    atlas = pd.read_parquet(reports / "atlas.parquet")
    assert not [c for c in atlas.columns if c.startswith("ex_")]
    assert {"q", "significant"} <= set(atlas.columns)


def test_figures_are_nonempty_pdfs(reports):
    written = sorted(p.name for p in (reports / "figures").glob("*.pdf"))
    assert {"clean_accuracy.pdf", "model_pairs.pdf", "heads.pdf", "layer_profile.pdf",
            "spearman_heads.pdf"} <= set(written)
    for name in written:
        data = (reports / "figures" / name).read_bytes()
        assert data.startswith(b"%PDF") and len(data) > 1000
        assert b"CreationDate" not in data


def test_two_runs_are_byte_identical(results, reports, tmp_path):
    again = tmp_path / "reports"
    aggregate(results, again, SETTINGS)
    figures(again, "test", MODELS, TASKS)
    files = sorted(p.relative_to(reports) for p in reports.rglob("*") if p.is_file())
    assert {Path("macros.tex"), Path("metrics.json"), Path("tables/clean_accuracy.tex")} <= set(files)
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (reports / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_missing_inputs_are_one_clear_error(tmp_path):
    with pytest.raises(StudyError, match="no eval results .* run the 'evaluate' stage"):
        aggregate(tmp_path / "nothing", tmp_path / "reports", SETTINGS)
    with pytest.raises(StudyError, match="run the 'aggregate' stage first"):
        figures(tmp_path / "reports")
    assert not (tmp_path / "reports").exists()


def test_unknown_pair_model_names_the_valid_ones(results, tmp_path):
    with pytest.raises(StudyError, match="no eval results for 'gen9'.*scratch"):
        aggregate(results, tmp_path / "reports", Settings(n_resamples=1000, pairs=(("gen9", "scratch"),)))


# ------------------------------------------------------------------------------------------ stages


def _stage(name: str, tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "stages" / f"{name}.py"), f"hydra.run.dir={tmp_path / 'hydra'}",
           "hydra/job_logging=none", "hydra/hydra_logging=none", *overrides]
    return subprocess.run(cmd, check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_stages_run_end_to_end_and_fail_in_one_line(results, tmp_path):
    paths = [f"paths.results={results}", f"paths.reports={tmp_path / 'reports'}", "tasks=[induction,kv,facts]"]
    done = _stage("aggregate", tmp_path, *paths, "report.n_resamples=1000")
    assert done.returncode == 0, done.stderr
    done = _stage("figures", tmp_path, *paths)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "reports" / "figures" / "heads.pdf").is_file()
    failed = _stage("aggregate", tmp_path, f"paths.results={tmp_path / 'none'}", f"paths.reports={tmp_path / 'r2'}")
    assert failed.returncode == 2
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("paramscope: error: no eval results")


def test_jittered_figures_are_the_same_bytes_on_every_draw():
    """seaborn's strip-plot jitter comes from numpy's global generator; paper_style seeds it per block."""
    import io

    import seaborn as sns

    from paramscope.report.style import new_figure, paper_style

    data = pd.DataFrame({"x": ["a"] * 20 + ["b"] * 20, "y": np.linspace(0, 1, 40)})

    def draw() -> bytes:
        np.random.seed(None)  # whatever state the caller left behind
        with paper_style():
            fig = new_figure(3, 2)
            sns.stripplot(data, x="x", y="y", jitter=0.3, ax=fig.subplots())
            buf = io.BytesIO()
            fig.savefig(buf, format="pdf", metadata={"CreationDate": None})
        return buf.getvalue()

    assert draw() == draw()


def test_the_real_profile_reports_no_trained_model_of_the_tiny_profile():
    """The real profile builds on tiny's settings but trains nothing: none of tiny's architecture,
    variants or training mixes may reach its report's macros."""
    from helpers import make_cfg

    from paramscope.report.settings import profile_facts

    cfg = make_cfg("aggregate", ["profile=real"])
    names = {name for name, _ in profile_facts(cfg)}
    assert "ProfileName" in names
    assert not any(n.startswith(("Model", "Train", "Mix")) for n in names), sorted(names)
    assert any(n.startswith("Train") for n, _ in profile_facts(make_cfg("aggregate", ["profile=tiny"])))


def test_a_screened_map_is_not_taken_for_a_whole_map():
    """Concentration (share of a map's damage in its top units) needs every unit; a screened map's rows
    are a chosen subset, so the report leaves it out there."""
    from paramscope.report.atlas.maps import every_unit_exact

    assert every_unit_exact(pd.DataFrame({"delta_acc": [0.1, 0.2]}))  # rows made before the column existed
    assert every_unit_exact(pd.DataFrame({"checked": ["all", "all"]}))
    assert not every_unit_exact(pd.DataFrame({"checked": ["screen-top", "random"]}))
