"""One transplant job's plan: its config read once, checked and turned into plain Python values.

Everything the user can get wrong fails here, in one line, before any model is loaded; the grid then
reads only the plan (the data layer alone still reads the config, to find documents and models).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from paramscope.data.splits import check_split
from paramscope.errors import StudyError, check_choice, number
from paramscope.evaluation.tasks import split_definition
from paramscope.selection import selected
from paramscope.stats import MIN_RESAMPLES
from paramscope.transplant.select import RANKINGS

SPLITS = ("dev", "test")  # the order in which a job's K cells are planned


@dataclass(frozen=True)
class Pair:
    models: tuple[str, str]
    kind: str

    @property
    def label(self) -> str:
        return f"{self.models[0]} vs {self.models[1]}"


def parse_k(value: object) -> int | float:
    """A whole number >= 1 is a module count; a value strictly between 0 and 1 a fraction of all."""
    try:
        k = float(value)
    except (TypeError, ValueError):
        k = float("nan")
    if math.isfinite(k) and k >= 1 and k == int(k):
        return int(k)
    if 0 < k < 1:
        return k
    raise StudyError(f"k must be a module count (1, 2, ...) or a fraction of all modules in (0, 1); got {value}")


def resolve_k(k: float, n_modules: int) -> int | None:
    """Modules for request ``k`` out of ``n_modules``; None when a count exceeds what the model has."""
    if isinstance(k, float):
        return max(1, math.floor(k * n_modules + 0.5))
    return k if k <= n_modules else None


def parse_alpha(value: object) -> float:
    try:
        alpha = float(value)
    except (TypeError, ValueError):
        alpha = float("nan")
    if not 0.0 < alpha <= 1.0:
        raise StudyError(f"alpha must lie in (0, 1] (1 = the paper's copy); got {value}")
    return alpha


def profile_pairs(cfg: DictConfig) -> list[Pair]:
    """The configured pairs whose two models are both in the profile's `models`."""
    known = set(cfg.models)
    pairs = [Pair(tuple(str(m) for m in p.models), str(p.kind)) for p in cfg.transplant.pairs]
    return [p for p in pairs if set(p.models) <= known]


def requested_pairs(cfg: DictConfig) -> list[Pair]:
    """The profile's pairs, narrowed to `pair=[a,b]` (in either order) where given."""
    pairs = profile_pairs(cfg)
    if cfg.pair is not None:
        wanted = [str(m) for m in cfg.pair] if not isinstance(cfg.pair, str) else [cfg.pair]
        pairs = [p for p in pairs if sorted(p.models) == sorted(wanted)]  # a pair is unordered
        if not pairs:
            check_choice("pair", f"[{','.join(wanted)}]", [f"[{','.join(p.models)}]" for p in profile_pairs(cfg)])
    if not pairs:
        raise StudyError(f"no transplant pair has both models in this profile's models ({', '.join(cfg.models)})")
    return pairs


@dataclass(frozen=True)
class Plan:
    """Everything from the config that decides this job's cells, checked before any model is loaded."""

    k: int | float  # the request: a module count, or a fraction of every pair's modules
    alpha: float
    pairs: tuple[Pair, ...]
    tasks: tuple[str, ...]
    rankings: tuple[str, ...]
    splits: tuple[str, ...]  # selected transplants and copy-all are scored on these
    control_splits: tuple[str, ...]  # the random controls on these
    n_seeds: int  # replicates of each random control
    n_resamples: int
    seed: int
    batch_size: int  # documents per forward pass of the selection workload
    eval_batch_size: int  # documents per forward pass when scoring
    full_grid: bool  # every pair and task: cells of this job's kinds that it no longer plans are stale
    export: Path | None = None  # where to save the selected transplants, if anywhere
    split: dict = field(default_factory=dict)  # which documents are dev and test (`split_definition`)

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> Plan:
        k, alpha = parse_k(cfg.k), parse_alpha(cfg.alpha)
        t = cfg.transplant
        rankings = tuple(str(r) for r in t.rankings)
        for ranking in rankings:
            check_choice("ranking", ranking, RANKINGS)
        splits, control_splits = tuple(str(s) for s in t.splits), tuple(str(s) for s in t.control_splits)
        for split in (*splits, *control_splits):
            check_split(split)
        n_seeds = number("transplant.n_seeds", t.n_seeds, int, example="5")
        n_resamples = number("transplant.n_resamples", t.n_resamples, int, example="2000")
        if n_seeds < 0 or n_resamples < MIN_RESAMPLES:
            raise StudyError(f"transplant.n_seeds must be >= 0 and transplant.n_resamples >= {MIN_RESAMPLES}; "
                             f"got {t.n_seeds} and {t.n_resamples}")
        pairs = tuple(requested_pairs(cfg))
        tasks = tuple(selected(cfg, "task", [str(task) for task in cfg.tasks]))
        return cls(k=k, alpha=alpha, pairs=pairs, tasks=tasks, rankings=rankings, splits=splits,
                   control_splits=control_splits, n_seeds=n_seeds, n_resamples=n_resamples, seed=int(cfg.seed),
                   batch_size=number("transplant.batch_size", t.batch_size, int, example="64"),
                   eval_batch_size=number("eval.batch_size", cfg.eval.batch_size, int, example="64"),
                   full_grid=cfg.pair is None and cfg.task is None,
                   export=Path(cfg.export) if cfg.export else None, split=split_definition(cfg))

    @property
    def k_splits(self) -> tuple[str, ...]:
        """The splits of a K cell: wherever selected transplants or controls are scored."""
        return tuple(s for s in SPLITS if s in (*self.splits, *self.control_splits))
