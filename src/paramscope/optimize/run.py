"""The optimize grid: per model and task, search a profile on dev, then measure it and its controls.

Cells (one Parquet file each under results/optimize/, found by content key, so a rerun skips them):

- ``search``: every method's best profile, scored on dev and then on test (rows: method x split);
  the method chosen on dev is flagged ``selected`` and saved as the task's profile file
  (results/optimize/profiles/<model>/<task>-k<k>-b<budget>-s<seed>.json).
- ``control``: random profiles of the same size and strength as the selected one, on test.
- ``transfer``: the selected profile of one task scored on the test split of every task.
- ``compress``: heads or neuron groups removed in four orders at fixed fractions, on dev and test
  (dev chooses a compression level, test reports it).

Every row is paired with the clean model on the same documents (the ``*_clean`` columns, and per
document ``ex_doc_ids``/``ex_correct``/``ex_gold_ll`` beside ``ex_clean_correct``/``ex_clean_gold_ll``).
Test documents are scored only after the profile is fixed: the search is given dev documents only.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig
from tqdm import tqdm

from paramscope import row_schemas
from paramscope.ablation.atlas import paired_row
from paramscope.ablation.interventions import apply
from paramscope.errors import StudyError, check_choice, number
from paramscope.evaluation.documents import Doc, Scores
from paramscope.evaluation.scorer import score
from paramscope.evaluation.tasks import atlas_tasks, split_definition, task_docs
from paramscope.models import zoo
from paramscope.models.adapters import Adapter, get_adapter
from paramscope.optimize.candidates import (
    SEARCH_GROUPS,
    importance_order,
    rank_candidates,
    search_units,
)
from paramscope.optimize.compress import (
    COMPRESS_GROUPS,
    ascending,
    input_norms,
    magnitude_scores,
    n_removed,
    random_order,
    removal_specs,
    wanda_scores,
)
from paramscope.optimize.profile import Profile, Unit, applied
from paramscope.optimize.search import (
    METHODS,
    SearchResult,
    SearchSettings,
    random_profiles,
    search_profile,
    select_on_dev,
)
from paramscope.row_schemas import OPTIMIZE as ROWS
from paramscope.selection import selected
from paramscope.store import Cell, CellGrid, load_results

log = logging.getLogger(__name__)

STAGE = "optimize"
SPLITS = ("dev", "test")


@dataclass(frozen=True)
class Plan:
    """Everything from the config that decides the numbers, checked before any work."""

    k: int
    settings: SearchSettings
    methods: tuple[str, ...]
    groups: tuple[str, ...]
    neuron_block: int
    n_controls: int
    compress_groups: tuple[str, ...]
    fractions: tuple[float, ...]
    n_random_orders: int
    n_resamples: int
    seed: int
    split: dict = field(default_factory=dict)  # which documents are dev and test (`split_definition`)

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> Plan:
        o = cfg.optimize
        k, budget = number("k", cfg.k, int, example="16"), number("budget", cfg.budget, int, example="240")
        if k < 1:
            raise StudyError(f"k (atlas candidates searched) must be >= 1, got {k}")
        for method in o.methods:
            check_choice("search method", method, METHODS)
        for group in o.groups:
            check_choice("search group", group, SEARCH_GROUPS)
        for group in o.compress_groups:
            check_choice("compression group", group, COMPRESS_GROUPS)
        fractions = tuple(float(f) for f in o.fractions)
        bad = [f for f in fractions if not 0.0 <= f < 1.0]
        if bad or 0.0 not in fractions:
            raise StudyError(f"compression fractions must lie in [0, 1) and include 0 (clean); got {list(fractions)}")
        if int(o.n_controls) < 1 or int(o.n_random_orders) < 1:
            raise StudyError("optimize.n_controls and optimize.n_random_orders must be >= 1")
        settings = SearchSettings(budget=budget, scale_range=tuple(float(x) for x in o.scale_range),
                                  grid=tuple(float(x) for x in o.scale_grid), sigma0=float(o.cma_sigma0),
                                  popsize=o.get("cma_popsize"), seed=int(cfg.seed), batch_size=int(cfg.eval.batch_size))
        return cls(k=k, settings=settings, methods=tuple(o.methods), groups=tuple(o.groups),
                   neuron_block=int(cfg.ablate.neuron_block), n_controls=int(o.n_controls),
                   compress_groups=tuple(o.compress_groups), fractions=tuple(sorted(set(fractions))),
                   n_random_orders=int(o.n_random_orders), n_resamples=int(o.n_resamples), seed=int(cfg.seed),
                   split=split_definition(cfg))

    @property
    def tag(self) -> str:
        """The search configuration in file names: cells of other k/budget/seed never collide."""
        return f"k{self.k}-b{self.settings.budget}-s{self.seed}"


def profile_path(results: Path, model: str, task: str, plan: Plan) -> Path:
    return results / STAGE / "profiles" / model / f"{task}-{plan.tag}.json"


def load_atlas(results: Path, split: dict) -> pd.DataFrame:
    """The atlas rows made on the current dev/test split: rows of another split would let documents
    that are test documents now steer the candidate ranking."""
    try:
        atlas = load_results("ablate", results, schema=row_schemas.ABLATE)
    except FileNotFoundError as e:
        raise StudyError(f"{e}; the profile search ranks its candidates by the atlas") from None
    same = np.ones(len(atlas), dtype=bool)
    for key, value in split.items():
        same &= (atlas[key] == value).to_numpy() if key in atlas else False
    if not same.any():
        raise StudyError(f"no atlas rows were made on the current dev/test split ({split}); rerun the ablate stage")
    return atlas[same]


def paired(clean: Scores, scored: Scores, plan: Plan) -> dict:
    """Statistics against the clean model on the same documents, and both per-document vectors."""
    return {**paired_row(clean, scored, plan.n_resamples, plan.seed), "ex_doc_ids": scored.doc_ids.tolist(),
            "ex_clean_correct": clean.correct.tolist(), "ex_clean_gold_ll": clean.gold_ll.tolist()}


class ModelJob:
    """One model's share of the grid: its documents, clean scores and cells."""

    def __init__(self, cfg: DictConfig, name: str, plan: Plan, results: Path, atlas: pd.DataFrame) -> None:
        self.cfg, self.name, self.plan, self.results, self.atlas = cfg, name, plan, results, atlas
        model, self.tokenizer = zoo.load(name, Path(cfg.paths.models), device=cfg.device)
        self.adapter: Adapter = get_adapter(model)
        self.digest = zoo.digest(model)
        self.units = search_units(self.adapter, plan.groups, plan.neuron_block)
        self._clean: dict[tuple[str, str], Scores] = {}
        self.cells = CellGrid(STAGE, ROWS, results)
        self.summary: dict[str, float] = {}

    def docs(self, task: str, split: str) -> tuple[Doc, ...]:
        return task_docs(self.cfg, task, split, self.tokenizer).docs

    def clean(self, task: str, split: str) -> Scores:
        if (task, split) not in self._clean:
            self._clean[(task, split)] = score(self.adapter.model, self.docs(task, split),
                                               self.plan.settings.batch_size)
        return self._clean[(task, split)]

    def scored(self, profile: Profile, task: str, split: str) -> Scores:
        with applied(self.adapter, profile, self.digest):
            return score(self.adapter.model, self.docs(task, split), self.plan.settings.batch_size)

    def _cell(self, kind: str, prefix: str, **spec: object) -> Cell:
        return self.cells.plan(prefix, kind=kind, digest=self.digest, seed=self.plan.seed, **self.plan.split,
                               n_resamples=self.plan.n_resamples, **spec)

    def _write(self, rows: list[dict], cell: Cell, kind: str, task: str) -> pd.DataFrame:
        meta = {"model": self.name, "digest": self.digest, "task": task, "kind": kind, "cell": cell.name}
        df = pd.DataFrame([{**meta, **row} for row in rows])
        self.cells.write(cell, df)
        return df

    # ------------------------------------------------------------------ cells

    def search(self, task: str) -> Profile:
        """Search every method on dev, choose one on dev, score that one on test; returns the selected profile."""
        plan = self.plan
        candidates = rank_candidates(self.atlas, self.digest, task, self.units)[: plan.k]
        cell = self._cell("search", f"search-{plan.tag}-", task=task, methods=plan.methods,
                               candidates=[u.name for u in candidates], settings=repr(plan.settings))
        df = self.cells.existing(cell)
        if df is None:
            dev = self.docs(task, "dev")
            found = [search_profile(self.adapter, dev, candidates, method, plan.settings, self.digest, task, self.name)
                     for method in plan.methods]
            chosen = select_on_dev(found)  # chosen before any test document is scored
            # only the chosen method is scored on test: a test number per method would invite choosing there
            rows = [self._search_row(result, result is chosen, task, split) for result in found for split in SPLITS
                    if result is chosen or split == "dev"]
            df = self._write(rows, cell, "search", task)
        for row in df[df.selected].itertuples(index=False):  # headline numbers for the W&B run
            self.summary[f"{self.name}/{task}/{row.split}_delta_acc"] = float(row.delta_acc)
        [profile_json] = set(df[df.selected].profile)
        profile = Profile.from_json(json.loads(profile_json))
        target = profile_path(self.results, self.name, task, plan)
        if not target.exists() or Profile.load(target) != profile:
            profile.save(target)
        return profile

    def _search_row(self, result: SearchResult, chosen: bool, task: str, split: str) -> dict:
        p = result.profile
        return {"split": split, "method": result.method, "selected": chosen, "config": self.plan.tag, "k": self.plan.k,
                "budget": self.plan.settings.budget, "evaluations": result.evaluations,
                "dev_fitness": result.dev_fitness, "n_factors": p.n_factors, "strength": p.strength,
                "profile": json.dumps(p.to_json(), sort_keys=True),
                **paired(self.clean(task, split), self.scored(p, task, split), self.plan),
                "ex_trace": list(result.trace)}

    def control(self, task: str, profile: Profile) -> None:
        plan = self.plan
        cell = self._cell("control", f"control-{plan.tag}-", task=task, profile=profile.to_json(),
                               n_controls=plan.n_controls, units=[u.name for u in self.units])
        if self.cells.done(cell):
            return
        controls = random_profiles(profile, self.units, plan.n_controls, plan.seed, plan.settings.scale_range)
        rows = [{"split": "test", "draw": i, "config": plan.tag, "k": plan.k, "budget": plan.settings.budget,
                 "n_factors": c.n_factors,
                 "strength": c.strength, "profile": json.dumps(c.to_json(), sort_keys=True),
                 **paired(self.clean(task, "test"), self.scored(c, task, "test"), plan)}
                for i, c in enumerate(controls)]
        self._write(rows, cell, "control", task)

    def transfer(self, task: str, profile: Profile, targets: list[str]) -> None:
        plan = self.plan
        cell = self._cell("transfer", f"transfer-{plan.tag}-", task=task, profile=profile.to_json(),
                               targets=targets)
        if self.cells.done(cell):
            return
        rows = [{"split": "test", "target_task": target, "config": plan.tag, "k": plan.k,
                 "budget": plan.settings.budget, "n_factors": profile.n_factors,
                 **paired(self.clean(target, "test"), self.scored(profile, target, "test"), plan)}
                for target in targets]
        self._write(rows, cell, "transfer", task)

    def compress(self, task: str, group: str) -> None:
        plan = self.plan
        units = search_units(self.adapter, (group,), plan.neuron_block)
        dev = self.docs(task, "dev")
        importance = importance_order(self.atlas, self.digest, task, units)
        cell = self._cell("compress", f"compress-s{plan.seed}-", task=task, group=group, fractions=plan.fractions,
                               n_random_orders=plan.n_random_orders, importance=[u.name for u in importance])
        if self.cells.done(cell):
            return
        orders: list[tuple[str, int, list[Unit]]] = [
            ("importance", -1, importance),
            ("magnitude", -1, ascending(units, magnitude_scores(self.adapter, units))),
            ("wanda", -1, ascending(units, wanda_scores(self.adapter, units, input_norms(
                self.adapter, dev, group, plan.settings.batch_size)))),
        ]
        orders += [("random", draw, random_order(units, plan.seed * 1000 + draw))
                   for draw in range(plan.n_random_orders)]
        rows = []
        for ordering, draw, order in tqdm(orders, desc=f"{task} {group} compression", leave=False):
            for fraction in plan.fractions:
                removed = order[: n_removed(fraction, len(units))]
                for split in SPLITS:
                    with apply(self.adapter, removal_specs(removed)):
                        scored = score(self.adapter.model, self.docs(task, split), plan.settings.batch_size)
                    rows.append({"split": split, "group": group, "ordering": ordering, "draw": draw,
                                 "fraction": fraction, "n_removed": len(removed), "n_units_total": len(units),
                                 "removed": json.dumps([u.name for u in removed]),
                                 **paired(self.clean(task, split), scored, plan)})
        self._write(rows, cell, "compress", task)


def run_grid(cfg: DictConfig, results: Path) -> dict[str, float]:
    """Compute every missing cell of this job; finished cells are found by key and skipped."""
    plan = Plan.from_cfg(cfg)
    models = selected(cfg, "model", cfg.optimize.models)
    tasks = selected(cfg, "task", atlas_tasks(cfg))  # searches start from the atlas; transfer scores every task
    for model in models:  # every input must exist before any work starts
        zoo.resolve(model, Path(cfg.paths.models))
    atlas = load_atlas(results, plan.split)
    summary: dict[str, float] = {}
    cells = CellGrid(STAGE, ROWS, results)  # every model's cells, for pruning and counts
    for model in models:
        job = ModelJob(cfg, model, plan, results, atlas)
        for task in tasks:  # the atlas must cover every task before any search starts
            rank_candidates(atlas, job.digest, task, job.units)
        for task in tasks:
            profile = job.search(task)
            job.control(task, profile)
            job.transfer(task, profile, list(cfg.tasks))
            for group in plan.compress_groups:
                job.compress(task, group)
            summary[f"{model}/{task}/n_factors"] = profile.n_factors
            log.info("%s %s: profile with %d factors (%s)", model, task, profile.n_factors, plan.tag)
        cells.planned |= job.cells.planned
        summary.update(job.summary)
        for k, v in job.cells.counts.items():
            cells.counts[k] += v
    counts = dict(cells.counts)
    if cfg.model is None and cfg.task is None:  # the full grid: this configuration's cells it no longer plans are stale
        counts["pruned"] = cells.prune(*(f"{kind}-{plan.tag}-*" for kind in ("search", "control", "transfer")),
                                       f"compress-s{plan.seed}-*")
    return {**counts, **summary}

