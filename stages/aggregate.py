"""Stage aggregate: tables, macros, metrics and plot data for the paper, from the eval and ablate results."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from paramscope.errors import guard
from paramscope.report import atlas
from paramscope.tracking import stage_run


@hydra.main(config_path="../conf", config_name="aggregate", version_base="1.3")
@guard
def main(cfg: DictConfig) -> None:
    # the atlas topic writes into the reports folder itself (the paper and figures read it there)
    with stage_run(cfg, "aggregate") as run:
        metrics = atlas.report(cfg, Path(cfg.paths.results), Path(cfg.paths.reports))
        run.summary.update({k: v for k, v in metrics.items() if v is not None})


if __name__ == "__main__":
    main()
