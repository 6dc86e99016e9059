"""Stage aggregate: tables, macros, metrics and plot data for the paper, from the eval and ablate results."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from paramscope.errors import guard
from paramscope.report.aggregate import Settings, aggregate
from paramscope.tracking import stage_run


@hydra.main(config_path="../conf", config_name="aggregate", version_base="1.3")
@guard
def main(cfg: DictConfig) -> None:
    settings = Settings.from_cfg(cfg)
    with stage_run(cfg, "aggregate") as run:
        metrics = aggregate(Path(cfg.paths.results), Path(cfg.paths.reports), settings)
        run.summary.update({k: v for k, v in metrics.items() if v is not None})


if __name__ == "__main__":
    main()
