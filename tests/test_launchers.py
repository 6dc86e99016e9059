"""Scale-out: the Hydra launcher configs compose, and a real grid of the ablate stage runs as two jobs, then
resumes (a rerun recomputes only the cell that is missing), under submitit's local executor (the SLURM
launcher's code path without a cluster), joblib's worker processes, and Ray on this machine when the Ray
launcher is installed (it pins cloudpickle<3, which joblib>=1.6 refuses, so it lives in its own env)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from transformers import AutoTokenizer

from paramscope.models.random_models import tiny_random_model
from paramscope.models.zoo import save_model

ROOT = Path(__file__).resolve().parents[1]


def launcher_cfg(launcher: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("ablate", [f"hydra/launcher={launcher}", "profile=paper"],
                       return_hydra_config=True).hydra.launcher


@pytest.mark.parametrize(
    "launcher, target",
    [
        ("processes", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
        ("slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
        ("slurm_ddp", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
        ("submitit_local", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"),
        ("ray_cluster", "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"),
    ],
)
def test_launcher_configs_compose(launcher, target, monkeypatch):
    monkeypatch.setenv("SLURM_PARTITION", "gpu")
    cfg = launcher_cfg(launcher)
    assert cfg._target_ == target
    if launcher.startswith("slurm"):
        assert cfg.partition == "gpu" and cfg.max_num_timeout > 0 and cfg.gpus_per_node >= 1
        assert cfg.submitit_folder.endswith(".submitit/%j")  # under the sweep dir, never a DVC out
    if launcher == "slurm_ddp":
        assert cfg.tasks_per_node == cfg.gpus_per_node == 8  # one Lightning DDP rank per GPU
    if launcher == "processes":
        assert cfg.n_jobs == 2 and cfg.prefer == "processes"
    if launcher == "ray_cluster":
        assert cfg.ray.init.address is None and cfg.ray.remote.num_gpus == 1


@pytest.fixture
def smoke_workspace(smoke_suite, tmp_path):
    """The smoke suite and a random model saved as `scratch`, in a private folder."""
    _, data = smoke_suite
    tok = AutoTokenizer.from_pretrained(data / "tokenizer")
    save_model(tiny_random_model("gpt_neox", seed=4, vocab_size=len(tok)), tok, tmp_path / "models" / "scratch",
               {"variant": "scratch"})
    return data, tmp_path


# What each launcher needs to run two small CPU jobs on this machine.
LOCAL_LAUNCHERS = {
    "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
                       "hydra.launcher.cpus_per_task=1"],
    "processes": ["hydra/launcher=processes", "hydra.launcher.n_jobs=2"],
    "ray_cluster": ["hydra/launcher=ray_cluster", "hydra.launcher.ray.remote.num_gpus=0",
                    "hydra.launcher.ray.remote.num_cpus=1", "+hydra.launcher.ray.init.num_cpus=2",
                    "+hydra.launcher.ray.init.include_dashboard=false"],
}


def run_grid(data: Path, tmp: Path, launcher: str = "submitit_local") -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)  # a local Ray instance, never a cluster the caller may point at
    return subprocess.run(
        [sys.executable, "stages/ablate.py", "-m", *LOCAL_LAUNCHERS[launcher], f"hydra.sweep.dir={tmp / 'sweep'}",
         "profile=smoke",
         f"paths.data={data}", f"paths.tasks={data / 'tasks'}", f"paths.models={tmp / 'models'}",
         f"paths.results={tmp / 'results'}", "model=scratch", "task=induction", "ablate.splits=[dev]",
         "group=heads,layers"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )


def cells(tmp: Path) -> dict[str, int]:
    """Each result cell with its modification time: a recomputed cell is a new file."""
    return {p.name: p.stat().st_mtime_ns for p in sorted((tmp / "results" / "ablate").glob("*.parquet"))}


def assert_grid_resumes(data: Path, tmp: Path, launcher: str) -> None:
    """Two cells, one per job; after one is lost, a rerun computes it and keeps the other untouched."""
    done = cells(tmp)
    assert len(done) == 2 and {n.split("-")[0] for n in done} == {"heads", "layers"}

    # A job that died before writing: its cell is missing, the other job's cell is finished.
    lost = next(n for n in done if n.startswith("layers"))
    (tmp / "results" / "ablate" / lost).unlink()
    second = run_grid(data, tmp, launcher)
    assert second.returncode == 0, second.stderr[-3000:]
    again = cells(tmp)
    assert sorted(again) == sorted(done)
    kept = next(n for n in done if n.startswith("heads"))
    assert again[kept] == done[kept]  # finished cell not recomputed
    assert lost in again  # missing cell computed by the rerun


@pytest.mark.slow
def test_submitit_local_grid_runs_two_jobs_and_resumes(smoke_workspace):
    data, tmp = smoke_workspace
    first = run_grid(data, tmp, "submitit_local")
    assert first.returncode == 0, first.stderr[-3000:]
    jobs = [d for d in (tmp / "sweep" / ".submitit").iterdir() if d.name.isdigit()]  # "%j": before job ids
    assert len(jobs) == 2  # one submitit job per grid point, each with its own process and result
    assert all(list(d.glob("*_result.pkl")) for d in jobs)
    assert_grid_resumes(data, tmp, "submitit_local")


@pytest.mark.slow
def test_joblib_grid_runs_two_jobs_and_resumes(smoke_workspace):
    data, tmp = smoke_workspace
    first = run_grid(data, tmp, "processes")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in first.stderr + first.stdout  # the launcher, not the basic one
    assert_grid_resumes(data, tmp, "processes")


@pytest.mark.slow
def test_ray_grid_runs_two_jobs_and_resumes(smoke_workspace):
    pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="the Ray launcher is an optional extra (README)")
    data, tmp = smoke_workspace
    first = run_grid(data, tmp, "ray_cluster")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Ray Launcher is launching 2 jobs" in first.stderr + first.stdout
    assert_grid_resumes(data, tmp, "ray_cluster")
