"""Stages as a user runs them: bad input gets one clear line and no output; W&B records offline runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from paramscope.tracking import read_offline_run

ROOT = Path(__file__).resolve().parents[1]


def run_stage(stage: str, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, f"stages/{stage}.py", *overrides],
        cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=300,
    )


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("paramscope: error:")]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A smoke data folder made by the prepare stage itself."""
    tmp = tmp_path_factory.mktemp("stages")
    proc = run_stage("prepare", "profile=smoke", f"paths.data={tmp / 'data'}")
    assert proc.returncode == 0, proc.stderr
    return tmp


@pytest.mark.parametrize(
    "stage, overrides, message",
    [
        ("ablate", ["group=bogus"],
         "unknown group 'bogus'; valid: heads, neurons, attn, mlp, layers, single_neurons, neuron_clusters, matrix, "
         "magnitude, magnitude_matrix, random, pairs"),
        ("optimize", ["model=bogus"], "unknown model 'bogus'; valid: scratch"),
        ("ablate", ["op=bogus"], "unknown op 'bogus'; valid: zero, scale, mean, noise, resample"),
        ("ablate", ["model=bogus"], "unknown model 'bogus'; valid: scratch, gen2, tuned"),
        # a mapping where one name goes (as a profile's old `model:` architecture block once did)
        ("ablate", ["model={hidden_size:8}"],
         "model takes one name, got {'hidden_size': 8}; valid: scratch, gen2, tuned"),
        ("ablate", ["task=bogus"], "unknown task 'bogus'; valid: induction, kv, facts, arith"),
        ("prepare", ["tasks=[induction,bogus]"], "unknown task 'bogus'; valid: induction, kv, facts, arith"),
        ("train", ["variants=[bogus]"], "unknown variant 'bogus'; valid: scratch, gen2, tuned"),
        # a grid axis of the wrong type: the key, the value and an example, not a traceback
        ("ablate", ["op=scale", "value=abc"], "value must be a number, got 'abc'; e.g. value=0.5"),
        ("structure", ["fdr=abc"], "fdr must be a number, got 'abc'; e.g. fdr=0.05"),
        ("optimize", ["k=abc"], "k must be an integer, got 'abc'; e.g. k=16"),
        ("vps", ["rank=2.5"], "rank must be an integer, got 2.5; e.g. rank=2"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(prepared, stage, overrides, message):
    out = prepared / f"out-{stage}-{overrides[0].split('=')[0]}"
    proc = run_stage(
        stage, "profile=smoke", f"paths.data={prepared / 'data'}", f"paths.results={out / 'results'}",
        f"paths.models={out / 'models'}", *overrides,
    )
    assert proc.returncode == 2
    assert error_lines(proc) == [f"paramscope: error: {message}"]
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_every_stage_composes_its_defaults_before_the_profile():
    """One defaults order: a stage's own file first, then `common` (and with it the profile), so a profile can
    override any stage default, and the architecture block (`architecture:`) never meets a stage's `model=NAME`."""
    import yaml

    for path in sorted((ROOT / "conf").glob("*.yaml")):
        defaults = yaml.safe_load(path.read_text()).get("defaults")
        if path.stem == "common" or not defaults:
            continue
        names = [d if isinstance(d, str) else next(iter(d)) for d in defaults]
        if path.stem == "report":  # the report is the aggregate stage's config plus a topic
            assert names == ["aggregate", "_self_"], path
            continue
        assert "common" in names and names.index("_self_") < names.index("common"), (path.name, names)
    for path in (ROOT / "conf" / "profile").glob("*.yaml"):
        assert "model" not in yaml.safe_load(path.read_text()), f"{path.name}: the architecture block is architecture:"


def test_missing_model_directory_names_the_choices(prepared, tmp_path):
    proc = run_stage(
        "evaluate", "profile=smoke", f"paths.data={prepared / 'data'}", f"paths.models={tmp_path / 'none'}",
        f"paths.results={tmp_path / 'results'}",
    )
    assert proc.returncode == 2
    [line] = error_lines(proc)
    assert "unknown model 'scratch'" in line and "valid: none" in line
    assert not (tmp_path / "results").exists()


def test_unknown_profile_names_the_valid_profiles():
    proc = run_stage("prepare", "profile=bogus")
    assert proc.returncode != 0
    assert "Could not find 'profile/bogus'" in proc.stderr
    assert all(p in proc.stderr for p in ("smoke", "tiny", "paper"))


def test_offline_hub_fails_with_one_line_and_no_partial_output(tmp_path):
    proc = run_stage("baselines", "profile=paper", f"paths.baselines={tmp_path / 'baselines'}",
                     env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    [line] = error_lines(proc)
    assert "cannot fetch baseline 'pythia-410m' (EleutherAI/pythia-410m@step143000)" in line
    assert "baselines.pythia-410m.local_dir" in line
    assert not (tmp_path / "baselines").exists()


def test_paper_prepare_is_the_first_hub_access_and_fails_cleanly_offline(tmp_path):
    """`dvc repro` with profile=paper starts with prepare: offline it stops there, in one line."""
    proc = run_stage("prepare", "profile=paper", f"paths.data={tmp_path / 'data'}", env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    [line] = error_lines(proc)
    assert "cannot fetch tokenizer EleutherAI/pythia-410m@step143000" in line
    assert not (tmp_path / "data").exists()
    assert not list(tmp_path.iterdir())  # no temp folder left behind either


def test_offline_wandb_run_records_config_and_summary(prepared, tmp_path):
    proc = run_stage("prepare", "profile=smoke", f"paths.data={tmp_path / 'data'}", f"wandb.dir={tmp_path}",
                     env={"WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr
    [run_dir] = (tmp_path / "wandb").glob("offline-run-*")
    recorded = read_offline_run(run_dir)
    config, summary = recorded["config"], recorded["summary"]
    assert config["profile_name"] == "smoke"
    assert config["paths"]["data"] == str(tmp_path / "data")
    assert config["wandb"]["mode"] == "offline"
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert summary["vocab_size"] == manifest["vocab_size"]
    assert summary["n_eval/induction"] == 40
