"""Stage train: the scratch GPT-NeoX model (with its step-0 checkpoint), its two related variants, and the
noise twin of each (the structure stage's drift reference)."""

from pathlib import Path

import hydra
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig

from paramscope.errors import check_choice, guard
from paramscope.models.train import train_variant
from paramscope.tracking import stage_run


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
@guard
def main(cfg: DictConfig) -> None:
    for name in cfg.variants:
        check_choice("variant", name, cfg.train.variants)
    with stage_run(cfg, "train") as run:
        logger = WandbLogger(experiment=run)
        for name in cfg.variants:
            run.summary.update(train_variant(cfg, name, Path(cfg.paths.trained), Path(cfg.paths.data), logger))
        if not cfg.variants:  # a profile of pretrained models only (real): DVC still needs the output folder
            out = Path(cfg.paths.trained)
            out.mkdir(parents=True, exist_ok=True)
            (out / "NOTHING_TRAINED").write_text(f"profile {cfg.profile_name} trains no model\n")


if __name__ == "__main__":
    main()
