"""The atlas report in memory: every table it writes, and its macros, metrics and LaTeX tables."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from paramscope.report.atlas.keys import MAP_KEYS, SITE_GROUPS
from paramscope.report.atlas.maps import screen_agreement


@dataclass
class Reports:
    """The atlas's tables in memory (``build`` fills ``macros``, ``metrics`` and ``tables`` from them)."""

    clean: pd.DataFrame
    pairs: pd.DataFrame
    atlas: pd.DataFrame
    tops: pd.DataFrame
    maps: pd.DataFrame
    spearman: pd.DataFrame
    split: str = "test"
    interactions: pd.DataFrame = field(default_factory=pd.DataFrame)
    macros: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float | int | None] = field(default_factory=dict)
    tables: dict[str, str] = field(default_factory=dict)

    @property
    def screen(self) -> pd.DataFrame:
        return screen_agreement(self.atlas)

    @property
    def layer_profile(self) -> pd.DataFrame:
        cols = [*MAP_KEYS, "layer", "delta_acc", "ci_low", "ci_high", "q", "significant", "delta_loss"]
        keep = self.atlas["group"].isin(SITE_GROUPS) & (self.atlas["split"] == self.split)
        return self.atlas[keep][cols].reset_index(drop=True)
