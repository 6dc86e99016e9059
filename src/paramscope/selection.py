"""What a stage's `model=NAME` and `task=NAME` on the command line narrow its lists to."""

from __future__ import annotations

from omegaconf import DictConfig

from paramscope.errors import StudyError, check_choice


def selected(cfg: DictConfig, key: str, choices: list) -> list[str]:
    """``cfg[key]`` as a one-entry list when set (it must be one of ``choices``), else every choice."""
    value = cfg.get(key)
    if value is None:
        return list(choices)
    if not isinstance(value, str):  # e.g. a profile block named like the selector (the architecture's is not)
        raise StudyError(f"{key} takes one name, got {value}; valid: {', '.join(map(str, choices))}")
    check_choice(key, value, choices)
    return [value]
