"""Stage transplant: activation-selected modules of a stronger related model blended into a weaker one.

One job is one (k, alpha) point over every pair and task; e.g. `python stages/transplant.py -m k=8,16
alpha=0.5,1`. Results: results/transplant/, one Parquet cell per (pair, task, split, K, alpha).
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from paramscope.errors import guard
from paramscope.tracking import stage_run
from paramscope.transplant.grid import run_grid


@hydra.main(config_path="../conf", config_name="transplant", version_base="1.3")
@guard
def main(cfg: DictConfig) -> None:
    with stage_run(cfg, "transplant", name=f"transplant:k={cfg.k}:alpha={cfg.alpha}") as run:
        run.summary.update(run_grid(cfg, Path(cfg.paths.results)))


if __name__ == "__main__":
    main()
