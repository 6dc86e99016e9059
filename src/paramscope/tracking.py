"""W&B: one run per stage job, with the resolved config; offline unless the environment says otherwise."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from omegaconf import DictConfig, OmegaConf


@contextlib.contextmanager
def stage_run(cfg: DictConfig, stage: str, name: str | None = None) -> Iterator[object]:
    """Start a W&B run for this job and always finish it, even when the stage fails."""
    import wandb

    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        sweep = hc.sweep.dir if hc.mode.name == "MULTIRUN" else None
        job = hc.job.override_dirname or None
    except ValueError:  # not under @hydra.main (tests, notebooks)
        sweep, job = None, None
    wcfg = cfg.wandb
    run = wandb.init(
        project=wcfg.project,
        entity=wcfg.entity,
        mode=wcfg.mode,
        dir=wcfg.dir,
        group=wcfg.group or (f"{stage}:{sweep}" if sweep else stage),
        job_type=stage,
        name=name or (f"{stage}:{job}" if job else stage),
        config=OmegaConf.to_container(cfg, resolve=True),
        reinit="finish_previous",
    )
    try:
        yield run
    finally:
        run.finish()
