"""Stage figures: every figure of the paper as a PDF, drawn from the aggregate stage's reports."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from paramscope.errors import guard
from paramscope.report.figures import figures
from paramscope.tracking import stage_run


@hydra.main(config_path="../conf", config_name="figures", version_base="1.3")
@guard
def main(cfg: DictConfig) -> None:
    with stage_run(cfg, "figures") as run:
        written = figures(Path(cfg.paths.reports), cfg.figures.split, cfg.get("models") or (), cfg.get("tasks") or ())
        run.summary.update({"figures": len(written)})


if __name__ == "__main__":
    main()
