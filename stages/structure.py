"""Stage structure: which weights are indistinguishable from initialisation, annealing, substructures, Weibull."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from paramscope.errors import guard
from paramscope.structure.run import run_grid
from paramscope.tracking import stage_run


@hydra.main(config_path="../conf", config_name="structure", version_base="1.3")
@guard
def main(cfg: DictConfig) -> None:
    with stage_run(cfg, "structure", name=f"structure:fdr={cfg.fdr}:tol={cfg.tolerance}") as run:
        run.summary.update(run_grid(cfg, Path(cfg.paths.results)))


if __name__ == "__main__":
    main()
