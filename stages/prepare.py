"""Stage prepare: the synthetic task suite, its tokenizer and the training mixtures, from one seed."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from paramscope.data.prepare import prepare
from paramscope.errors import guard
from paramscope.tracking import stage_run


@hydra.main(config_path="../conf", config_name="prepare", version_base="1.3")
@guard
def main(cfg: DictConfig) -> None:
    with stage_run(cfg, "prepare") as run:
        summary = prepare(cfg, Path(cfg.paths.data))
        run.summary.update(summary)


if __name__ == "__main__":
    main()
