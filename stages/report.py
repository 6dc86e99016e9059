"""Stage report-<topic>: tables, macros, metrics and figures of one study topic, from its results.

`python stages/report.py topic=transplant` reads results/transplant and writes reports/transplant/
(macros.tex, tables/, figures/, metrics.json) in one piece: a failed run leaves the old folder as it was.
"""

import importlib
from pathlib import Path

import hydra
from omegaconf import DictConfig

from paramscope.errors import check_choice, guard
from paramscope.store import atomic_dir
from paramscope.tracking import stage_run

# Each topic's report lives in paramscope.report.<topic> as `report(cfg, results, out) -> metrics`.
TOPICS = ("transplant", "structure", "vps", "optimize", "validation", "tasks")


@hydra.main(config_path="../conf", config_name="report", version_base="1.3")
@guard
def main(cfg: DictConfig) -> None:
    check_choice("topic", cfg.topic, TOPICS)
    topic = importlib.import_module(f"paramscope.report.{cfg.topic}")
    with stage_run(cfg, f"report-{cfg.topic}") as run, atomic_dir(Path(cfg.paths.reports) / cfg.topic) as out:
        metrics = topic.report(cfg, Path(cfg.paths.results), out)
        run.summary.update({k: v for k, v in metrics.items() if v is not None})


if __name__ == "__main__":
    main()
