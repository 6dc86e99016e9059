"""Stage baselines: pretrained models pinned by repo and revision (none in the tiny profile)."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from paramscope.errors import guard
from paramscope.models.hub import fetch_all
from paramscope.tracking import stage_run


@hydra.main(config_path="../conf", config_name="baselines", version_base="1.3")
@guard
def main(cfg: DictConfig) -> None:
    with stage_run(cfg, "baselines") as run:
        manifest = fetch_all(cfg, Path(cfg.paths.baselines))
        run.summary.update({"n_baselines": len(manifest)})


if __name__ == "__main__":
    main()
