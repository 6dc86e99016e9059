"""Stage evaluate: clean accuracy of every model on every task and split, with our fast scorer."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from paramscope.errors import guard
from paramscope.evaluation.run import evaluate_all
from paramscope.store import load_results
from paramscope.tracking import stage_run


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
@guard
def main(cfg: DictConfig) -> None:
    results = Path(cfg.paths.results)
    with stage_run(cfg, "evaluate") as run:
        evaluate_all(cfg, results)
        df = load_results("eval", results)
        run.summary.update({f"acc/{r.model}/{r.task}/{r.split}": r.acc for r in df.itertuples()})


if __name__ == "__main__":
    main()
