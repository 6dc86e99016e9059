"""End to end: `dvc repro` of the smoke profile in a fresh copy of the repository, twice."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def sh(cmd: str, cwd: Path, timeout: int = 1800) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A clean checkout (tracked and new files, nothing ignored) with profile=smoke, reproduced once."""
    repo = tmp_path_factory.mktemp("study") / "repo"
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split("\0")
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, repo / rel)
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("profile: tiny", "profile: smoke"))
    remote = repo.parent / "remote"
    sh(f"git init -q && dvc remote add -f -d local {remote} && dvc repro", repo)
    return repo


def test_repro_builds_every_output(study):
    for out in ["data/manifest.json", "models/scratch/model.safetensors", "models/scratch-step0/config.json",
                "models/gen2/tokenizer.json", "models/tuned/paramscope.json", "models/baselines/manifest.json",
                "reports/metrics.json", "reports/macros.tex", "paper/main.pdf"]:
        assert (study / out).is_file(), out
    assert any((study / "reports" / "figures").glob("*.pdf"))
    ablate = pd.concat(pd.read_parquet(p) for p in (study / "results" / "ablate").glob("*.parquet"))
    assert set(ablate.group) == {"heads", "layers", "attn", "mlp", "neurons"}
    assert set(ablate.op) == {"zero", "scale"}
    assert set(ablate.model) == {"scratch", "gen2", "tuned"}


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
    assert "ablate" in ran and ran <= {"ablate", "aggregate", "figures", "paper"}
    sh("dvc repro", study)  # back to the committed grid for the tests that follow


def test_forced_rerun_gives_identical_numbers(study):
    before = (study / "reports" / "metrics.json").read_text()
    evals = sorted((p.name, p.read_bytes()) for p in (study / "results" / "eval").glob("*.parquet"))
    shutil.rmtree(study / "results" / "ablate")  # persisted cells would otherwise be reused, not recomputed
    sh("dvc repro --force", study)
    assert (study / "reports" / "metrics.json").read_text() == before
    assert sorted((p.name, p.read_bytes()) for p in (study / "results" / "eval").glob("*.parquet")) == evals
