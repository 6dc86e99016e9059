"""Stage optimize: per-task scale profiles searched on dev from the atlas, their controls, transfer
between tasks, and compression curves (see paramscope.optimize.run)."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from paramscope.errors import guard
from paramscope.optimize.run import run_grid
from paramscope.tracking import stage_run


@hydra.main(config_path="../conf", config_name="optimize", version_base="1.3")
@guard
def main(cfg: DictConfig) -> None:
    with stage_run(cfg, "optimize", name=f"optimize:k={cfg.k}:budget={cfg.budget}") as run:
        run.summary.update(run_grid(cfg, Path(cfg.paths.results)))


if __name__ == "__main__":
    main()
