"""Stage ablate: ablation maps (every unit of a group) for every model, task and split."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from paramscope.ablation.run import run_grid
from paramscope.errors import guard
from paramscope.tracking import stage_run


@hydra.main(config_path="../conf", config_name="ablate", version_base="1.3")
@guard
def main(cfg: DictConfig) -> None:
    with stage_run(cfg, "ablate", name=f"ablate:{cfg.group}:{cfg.op}={cfg.value}") as run:
        run.summary.update(run_grid(cfg, Path(cfg.paths.results)))


if __name__ == "__main__":
    main()
