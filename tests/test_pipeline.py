"""End to end: `dvc repro` of the smoke profile in a fresh copy of the repository, twice."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import clean_checkout

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def sh(cmd: str, cwd: Path, timeout: int = 1800) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, shell=True, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A clean checkout with profile=smoke, reproduced once."""
    repo = clean_checkout(tmp_path_factory.mktemp("study") / "repo")
    params = repo / "params.yaml"
    text = params.read_text().replace("profile: tiny", "profile: smoke")
    # smaller multirun axes (they live in params.yaml, not in the profile): a 2-layer model has 8 modules
    text = re.sub(r"(?m)^(  k:) .*$", r"\1 2,0.5", text)
    text = re.sub(r"(?m)^(  alpha:) .*$", r"\1 0.5,1", text)
    params.write_text(text)
    remote = repo.parent / "remote"
    sh(f"git init -q && dvc remote add -f -d local {remote} && dvc repro", repo)
    return repo


def test_repro_builds_every_output(study):
    for out in ["data/manifest.json", "models/trained/scratch/model.safetensors",
                "models/trained/scratch-step0/config.json", "models/trained/gen2/tokenizer.json",
                "models/trained/tuned/paramscope.json", "models/baselines/manifest.json",
                "reports/metrics.json", "reports/macros.tex", "paper/main.pdf"]:
        assert (study / out).is_file(), out
    assert any((study / "reports" / "figures").glob("*.pdf"))
    ablate = pd.concat(pd.read_parquet(p) for p in (study / "results" / "ablate").glob("*.parquet"))
    assert set(ablate.group) == {"heads", "layers", "attn", "mlp", "neurons", "single_neurons", "neuron_clusters",
                                 "matrix", "magnitude", "magnitude_matrix", "random", "pairs"}
    assert set(ablate.op) == {"zero", "scale", "mean", "noise", "resample"}
    assert set(ablate.model) == {"scratch", "gen2", "tuned"}
    for topic in ("transplant", "structure", "optimize", "vps"):
        assert any((study / "results" / topic).glob("*.parquet")), topic
        assert (study / "reports" / topic / "macros.tex").is_file(), topic
    screened = (ablate.op == "zero") & ablate.group.isin(["heads", "neurons", "single_neurons", "neuron_clusters"])
    assert ablate.loc[screened, "screen_delta_gold_ll"].notna().all()
    assert ablate.loc[~screened, "screen_delta_gold_ll"].isna().all()
    screen = pd.read_csv(study / "reports" / "data" / "screen_agreement.csv")
    heads = screen[(screen.group == "heads") & (screen.op == "zero")]
    assert len(heads) == 3 * 4 * 2 and heads.recall_at_k.between(0, 1).all()


def test_second_repro_does_nothing(study):
    out = sh("dvc repro", study).stdout
    assert "Data and pipelines are up to date" in out
    assert "Running stage" not in out


def test_metrics_plots_and_push(study):
    metrics = json.loads(sh("dvc metrics show --json", study).stdout)
    assert metrics
    sh("dvc plots show --json", study)
    sh("dvc push", study)
    assert any((study.parent / "remote").rglob("*"))


def test_changing_a_grid_axis_reruns_only_downstream(study):
    params = study / "params.yaml"
    original = params.read_text()
    params.write_text(original.replace("scale_values: 0.5,1.5,2", "scale_values: 0.5,2"))
    try:
        out = sh("dvc repro", study).stdout
    finally:
        params.write_text(original)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert "ablate" in ran and ran <= {"ablate", "aggregate", "figures", "optimize", "report-optimize", "paper"}
    sh("dvc repro", study)  # back to the committed grid for the tests that follow


def test_forced_rerun_gives_identical_numbers(study):
    before = (study / "reports" / "metrics.json").read_text()
    evals = sorted((p.name, p.read_bytes()) for p in (study / "results" / "eval").glob("*.parquet"))
    shutil.rmtree(study / "results" / "ablate")  # persisted cells would otherwise be reused, not recomputed
    sh("dvc repro --force", study)
    assert (study / "reports" / "metrics.json").read_text() == before
    assert sorted((p.name, p.read_bytes()) for p in (study / "results" / "eval").glob("*.parquet")) == evals


def test_grid_killed_midway_resumes_without_recomputing(study, tmp_path):
    """SIGKILL an ablation grid after its first finished cell; the rerun keeps every finished cell
    (same file, untouched) and ends with the same table as the uninterrupted `dvc repro` run."""
    results = tmp_path / "results"
    cmd = [sys.executable, "stages/ablate.py", "-m", "profile=smoke", "group=heads,layers,neurons",
           f"paths.results={results}"]
    proc = subprocess.Popen(cmd, cwd=study, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    cells = results / "ablate"
    deadline = time.time() + 600
    while not (cells.is_dir() and any(cells.glob("*.parquet"))) and time.time() < deadline:
        assert proc.poll() is None, "grid finished or failed before it could be interrupted"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in cells.glob("*.parquet")}
    total = 3 * 4 * 2 * 3  # models x tasks x splits x groups
    assert 0 < len(finished) < total

    rerun = subprocess.run(cmd, cwd=study, capture_output=True, text=True, timeout=1200)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = {p.name: p.stat().st_mtime_ns for p in cells.glob("*.parquet")}
    assert len(after) == total
    assert all(after[name] == mtime for name, mtime in finished.items())

    def table(folder):
        df = pd.concat(pd.read_parquet(p) for p in folder.glob("*.parquet"))
        df = df[(df.op == "zero") & df.group.isin(["heads", "layers", "neurons"])].copy()
        df = df.dropna(axis=1, how="all")  # columns that only other groups' rows have (pairs, weights)
        df = df[sorted(df.columns)]
        for col in [c for c in df.columns if c.startswith("ex_")]:
            df[col] = df[col].map(tuple)
        return df.sort_values(["model", "task", "split", "group", "layer", "unit"]).reset_index(drop=True)

    pd.testing.assert_frame_equal(table(cells), table(study / "results" / "ablate"))


def test_a_damaged_cell_is_recomputed_and_the_aggregate_is_unchanged(study, tmp_path):
    """One result cell cut to 100 bytes, another a valid Parquet of other columns: aggregate refuses them in
    one line, a rerun of their grid recomputes both (with a warning naming each) and leaves the others
    untouched, and every file the aggregate writes equals the undamaged run's, byte for byte."""
    results, reports = tmp_path / "results", tmp_path / "reports"
    shutil.copytree(study / "results", results)
    cells = results / "ablate"
    damaged = [p for p in sorted(cells.glob("*.parquet"))
               if (row := pd.read_parquet(p).iloc[0]).group == "layers" and row.op == "zero"][:2]
    others = {p.name: p.stat().st_mtime_ns for p in cells.glob("*.parquet") if p not in damaged}
    cut, foreign = damaged
    cut.write_bytes(cut.read_bytes()[:100])
    pd.DataFrame({"model": ["scratch"], "other": [1.0]}).to_parquet(foreign, index=False)
    where = [f"paths.results={results}", f"paths.reports={reports}"]

    refused = subprocess.run([sys.executable, "stages/aggregate.py", "profile=smoke", *where], cwd=study,
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0
    assert f"damaged result cell {cut}" in refused.stderr and "Traceback" not in refused.stderr

    rerun = subprocess.run([sys.executable, "stages/ablate.py", "-m", "profile=smoke", "group=layers", *where],
                           cwd=study, capture_output=True, text=True, timeout=1200)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for path in damaged:
        assert f"damaged result cell {path}" in rerun.stdout + rerun.stderr
        pd.testing.assert_frame_equal(pd.read_parquet(path), pd.read_parquet(study / "results" / "ablate" / path.name))
    assert {p.name: p.stat().st_mtime_ns for p in cells.glob("*.parquet") if p not in damaged} == others

    again = subprocess.run([sys.executable, "stages/aggregate.py", "profile=smoke", *where], cwd=study,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    written = sorted(p.relative_to(reports) for p in reports.rglob("*") if p.is_file())
    assert Path("metrics.json") in written and Path("macros.tex") in written
    differ = [str(p) for p in written if (reports / p).read_bytes() != (study / "reports" / p).read_bytes()]
    assert differ == [], f"aggregate outputs differ from the undamaged run: {differ}"


def test_scorer_equals_lm_eval_on_every_study_model_and_task(study):
    """Clean accuracy from the evaluate stage equals lm-eval's on every trained model, task and split."""
    from paramscope.evaluation.harness import lm_eval_per_doc
    from paramscope.models import zoo
    from paramscope.store import load_results

    evals = load_results("eval", study / "results", with_examples=True)
    assert len(evals) == 4 * 4 * 2
    for name in sorted(evals.model.unique()):
        model, tok = zoo.load(name, study / "models")
        for row in evals[evals.model == name].itertuples():
            ref = lm_eval_per_doc(model, tok, f"ps_{row.task}", list(row.ex_doc_ids), study / "data" / "tasks")
            assert list(row.ex_correct) == [int(ref[i]["acc"]) for i in row.ex_doc_ids], (name, row.task)


def test_an_experiment_on_a_grid_axis_runs_and_is_shown(study):
    """`dvc exp run -S` on a grid axis of params.yaml, then `dvc exp show`. Experiments start from a commit, so
    the reproduced study is committed first (its outputs are ignored by git, kept by DVC). alpha=1 is part of
    the study's grid, so the transplant job finds its cells and the experiment computes nothing new."""
    git = "git -c user.name=paramscope -c user.email=dev@paramscope"
    sh(f"{git} add -A && {git} commit -qm study", study)
    try:
        out = sh("dvc exp run -n alpha-one -S transplant.alpha=1", study).stdout
        shown = json.loads(sh("dvc exp show --json", study).stdout)
    finally:
        sh("git checkout -- params.yaml dvc.lock && dvc checkout -q", study)  # back to the committed study
    assert "Running stage 'transplant'" in out
    [baseline] = [row for row in shown if row["rev"] != "workspace"]
    [experiment] = [e["revs"][0] for e in baseline["experiments"] if e["revs"][0]["name"] == "alpha-one"]
    params = experiment["data"]["params"]
    assert params["params.yaml"]["data"]["transplant"]["alpha"] == 1
    assert baseline["data"]["params"]["params.yaml"]["data"]["transplant"]["alpha"] == "0.5,1"
    assert params["conf/vps.yaml"]["data"]["rank"] == [2, 8]  # the conf keys stages declare are shown too
    assert experiment["data"]["metrics"]["reports/metrics.json"]["data"]


def test_paper_repro_offline_stops_at_the_first_hub_access_with_one_line(tmp_path):
    """`dvc repro` with profile=paper and no network: prepare (tokenizer and corpus) is the first hub access;
    it fails with one line of ours, DVC runs no later stage, and no output is left behind."""
    repo = clean_checkout(tmp_path / "repo")
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("profile: tiny", "profile: paper"))
    sh("git init -q", repo)
    before = {p.relative_to(repo) for p in repo.rglob("*") if ".git" not in p.parts and ".dvc" not in p.parts}
    proc = subprocess.run("dvc repro", shell=True, cwd=repo, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if line.startswith("paramscope: error:")]
    assert len(ours) == 1, proc.stderr[-3000:]
    assert "cannot fetch tokenizer EleutherAI/pythia-410m@step143000" in ours[0] and "tokenizer.local_dir" in ours[0]
    assert "Traceback" not in proc.stderr
    assert "failed to reproduce 'prepare'" in proc.stderr and "Running stage 'train'" not in proc.stdout
    after = {p.relative_to(repo) for p in repo.rglob("*") if ".git" not in p.parts and ".dvc" not in p.parts}
    assert {p.parts[0] for p in after - before} <= {".hydra_runs"}, after - before  # Hydra's own run log only
    assert (repo / "dvc.lock").read_text() == (ROOT / "dvc.lock").read_text()  # nothing recorded as reproduced
