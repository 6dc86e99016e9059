"""Stage vps: Virtual Parameter Sharpening over a dev-chosen grid, reported on test against the base model."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from paramscope.errors import guard
from paramscope.tracking import stage_run
from paramscope.vps.run import run_vps


@hydra.main(config_path="../conf", config_name="vps", version_base="1.3")
@guard
def main(cfg: DictConfig) -> None:
    with stage_run(cfg, "vps", name=f"vps:{cfg.phase}") as run:
        run.summary.update(run_vps(cfg, Path(cfg.paths.results)))


if __name__ == "__main__":
    main()
