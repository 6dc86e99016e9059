"""The tasks a profile's task choice kept (`reports/tasks/kept.json`, written by the tasks report), for the
stages that study "the chosen tasks" (`ablate.tasks: chosen`)."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from paramscope.errors import StudyError

KEPT = "kept.json"


def kept_tasks(cfg: DictConfig) -> list[str]:
    """The tasks the choice kept, in candidate order; one clear error before the choice has been made."""
    path = Path(cfg.paths.reports) / "tasks" / KEPT
    if not path.is_file():
        raise StudyError(f"ablate.tasks is 'chosen' but {path} does not exist; run "
                         f"`python stages/report.py profile={cfg.profile_name} topic=tasks` (dvc repro does)")
    choice = json.loads(path.read_text())
    if not choice["kept"]:
        raise StudyError(f"{choice['model']} is above chance on no candidate task on dev ({path}); "
                         "nothing to study with ablate.tasks=chosen")
    return choice["kept"]
