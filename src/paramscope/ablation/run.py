"""The ablation grid inside one job: every selected model x task x split map for one group/op/value."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from paramscope.ablation.atlas import MAP_GROUPS, MAP_OPS, SCREENED_GROUPS, STAT_OPS, ablation_map
from paramscope.ablation.neuron_groups import NEURON_GROUPINGS
from paramscope.ablation.pairs import PAIR_GROUPS, pair_map
from paramscope.ablation.reference import POOL_DOCS
from paramscope.ablation.weights import WEIGHT_GROUPS, WEIGHT_OPS
from paramscope.errors import StudyError, check_choice, number
from paramscope.evaluation.scorer import score
from paramscope.evaluation.tasks import atlas_tasks, split_definition, task_docs
from paramscope.models import zoo
from paramscope.models.adapters import get_adapter
from paramscope.row_schemas import ABLATE as ROWS
from paramscope.selection import selected
from paramscope.store import CellGrid

log = logging.getLogger(__name__)

# Part of the key of maps built on dev statistics: which statistic each op writes or matches
# (`reference`), so that changing one recomputes that op's maps and nothing else.
REFERENCE = {
    "mean": "dev/end-aligned-position-mean",
    "resample": "dev/donor-at-end-aligned-position",
    "noise": "dev/last-context-position",
}


def profile_leaves_out(cfg: DictConfig) -> str | None:
    """Why this job's map is not part of the profile's atlas (`ablate.leave_out`: groups, ops and
    group/op maps a profile does not run, e.g. the real profile's maps that do not fit a CPU), or None.
    The grid in params.yaml is
    one for every profile; this is where a profile narrows it, visibly."""
    leave_out = cfg.ablate.get("leave_out") or {}
    for kind, name in (("groups", cfg.group), ("ops", cfg.op), ("maps", f"{cfg.group}/{cfg.op}")):
        if name in (leave_out.get(kind) or []):
            return (f"profile '{cfg.get('profile_name')}' leaves out {kind[:-1]} '{name}' "
                    f"(ablate.leave_out.{kind}; override with ablate.leave_out.{kind}=[])")
    return None


def atlas_max_docs(cfg: DictConfig) -> int | None:
    """`ablate.max_docs`: the atlas reads at most N documents of each split (all where null), so that a
    large model's maps fit the machine."""
    value = cfg.ablate.get("max_docs")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise StudyError(f"ablate.max_docs must be a positive integer or null (every document); got {value!r}")
    return value


def capped(docs: tuple, max_docs: int | None, seed: int) -> tuple:
    """At most `max_docs` of `docs`, drawn by the seed and kept in document order (a task's documents can
    come grouped by subtask, so the first N would not be a sample); all of them where None."""
    if max_docs is None or len(docs) <= max_docs:
        return docs
    keep = np.sort(np.random.default_rng(seed).permutation(len(docs))[:max_docs])
    return tuple(docs[i] for i in keep)


# `pairs`: every pair of the top units of a zero map (chosen on dev), ablated jointly (non-additivity).
GRID_GROUPS = (*MAP_GROUPS, "pairs")
GROUP_ALIASES = {"ffn": "neurons"}  # `group=heads,ffn`: the FFN neuron blocks under their everyday name


def _check(cfg: DictConfig) -> None:
    """The job's map exists: a known group and op, and a value that op takes."""
    check_choice("group", cfg.group, GRID_GROUPS)
    check_choice("op", cfg.op, MAP_OPS)
    if cfg.group == "pairs":
        check_choice("ablate.pair_group", cfg.ablate.pair_group, PAIR_GROUPS)
        if cfg.op != "zero":
            raise StudyError(f"group 'pairs' is built from zero ablations; got op '{cfg.op}' (use op=zero)")
    if cfg.group in NEURON_GROUPINGS and cfg.op != "zero":
        raise StudyError(f"group '{cfg.group}' is chosen on dev for zero ablation; got op '{cfg.op}' (use op=zero)")
    number("value", cfg.value, example="0.5")
    if cfg.op in ("zero", "mean", "resample") and float(cfg.value) != 0.0:
        hint = f"; use op=scale value={cfg.value}" if cfg.op == "zero" else ""
        raise StudyError(f"op '{cfg.op}' takes no value (got {cfg.value}){hint}")
    if cfg.op == "noise" and float(cfg.value) <= 0.0:
        raise StudyError(f"op 'noise' needs value > 0, the noise std as a multiple of the unit's dev std "
                         f"(got {cfg.value}); e.g. op=noise value=1")
    if cfg.group in WEIGHT_GROUPS and cfg.op not in WEIGHT_OPS:
        raise StudyError(f"op '{cfg.op}' does not apply to weight group '{cfg.group}'; "
                         f"valid: {', '.join(WEIGHT_OPS)}")


@dataclass(frozen=True)
class Plan:
    """Everything from the config that decides this job's maps, checked before any work. A job the
    profile leaves out (`left_out`) reads nothing more: it has no models, tasks or documents to find."""

    group: str
    op: str
    value: float
    left_out: str | None = None
    models: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()
    splits: tuple[str, ...] = ()
    neuron_block: int = 0
    bins: int = 0  # |w| bins of the weight groups (`magnitude_bins`, or `matrix_magnitude_bins` within a matrix)
    pair_group: str = ""
    pair_top_k: int = 0
    single_neuron_units: int = 0
    max_docs: int | None = None
    exact_units: int | None = None
    n_resamples: int = 0
    seed: int = 0
    batch_size: int = 0
    split: dict = field(default_factory=dict)  # which documents are dev and test (`split_definition`)
    full_grid: bool = False  # model and task not narrowed: cells the job no longer plans are stale
    models_dir: Path = Path()
    device: str = ""

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> Plan:
        group = GROUP_ALIASES.get(cfg.group, cfg.group)  # one name in keys and rows, whichever the user typed
        if group != cfg.group:
            cfg = OmegaConf.merge(cfg, {"group": group})
        _check(cfg)
        request = {"group": str(group), "op": str(cfg.op), "value": float(cfg.value)}
        left_out = profile_leaves_out(cfg)
        if left_out:
            return cls(**request, left_out=left_out)
        a = cfg.ablate
        models = selected(cfg, "model", a.models)
        tasks = selected(cfg, "task", atlas_tasks(cfg))
        bins = int(a.matrix_magnitude_bins if group == "magnitude_matrix" else a.magnitude_bins)
        max_docs = atlas_max_docs(cfg)
        exact_units = a.get("exact_units")  # screened heads/neuron maps (atlas.screened_specs)
        return cls(**request, models=tuple(models), tasks=tuple(tasks), splits=tuple(str(s) for s in a.splits),
                   neuron_block=int(a.neuron_block), bins=bins, pair_group=str(a.pair_group),
                   pair_top_k=int(a.pair_top_k), single_neuron_units=int(a.single_neuron_units), max_docs=max_docs,
                   exact_units=None if exact_units is None else int(exact_units), n_resamples=int(a.n_resamples),
                   seed=int(cfg.seed), batch_size=int(cfg.eval.batch_size), split=split_definition(cfg),
                   full_grid=cfg.model is None and cfg.task is None, models_dir=Path(cfg.paths.models),
                   device=str(cfg.device))

    @property
    def prefix(self) -> str:
        """Lets a job find its own cells among all others."""
        return f"{self.group}-{self.op}-{self.value:g}-"

    @property
    def screened(self) -> bool:
        """A zero map of heads or neurons that computes only the dev screen's top units and random others."""
        return self.exact_units is not None and self.op == "zero" and self.group in SCREENED_GROUPS

    @property
    def needs_dev(self) -> bool:
        """The map reads the task's dev documents: statistics, donors, or units chosen on dev."""
        return self.op in STAT_OPS or self.group in ("pairs", *NEURON_GROUPINGS) or self.screened

    def spec(self) -> dict[str, object]:
        """What decides a map besides its documents: part of every cell's key."""
        spec: dict[str, object] = {"group": self.group, "op": self.op, "value": self.value,
                                   "neuron_block": self.neuron_block}
        if self.group in WEIGHT_GROUPS:
            spec["magnitude_bins"] = self.bins
        if self.group == "pairs":
            spec.update(pair_group=self.pair_group, pair_top_k=self.pair_top_k, selected_on="dev")
        if self.op in STAT_OPS:
            spec["reference"] = REFERENCE[self.op]
        if self.op == "resample":
            spec["pool_docs"] = POOL_DOCS
        if self.group == "single_neurons":
            spec.update(single_neuron_units=self.single_neuron_units, selected_on="dev")
        if self.group == "neuron_clusters":
            spec.update(clustering="k-means of standardised dev activations, last context position",
                        selected_on="dev")
        if self.max_docs is not None:  # only where set, so that uncapped cells keep their keys
            spec["max_docs"] = self.max_docs
        if self.screened:
            spec.update(exact_units=self.exact_units, selected_on="dev")
        return spec


def run_grid(cfg: DictConfig, results: Path) -> dict[str, int]:
    """Compute every missing map of this job; finished maps are found by key and skipped."""
    plan = Plan.from_cfg(cfg)
    if plan.left_out:
        log.warning("%s; nothing computed", plan.left_out)
        return {"computed": 0, "skipped": 0, "left_out": 1}
    cells = CellGrid("ablate", ROWS, results)
    for name in plan.models:  # every model must exist before any work starts
        zoo.resolve(name, plan.models_dir)
    for name in plan.models:
        model, tokenizer = zoo.load(name, plan.models_dir, device=plan.device)
        adapter = get_adapter(model)
        digest = zoo.digest(model)
        for task in plan.tasks:
            for split in plan.splits:
                cell = cells.plan(plan.prefix, digest=digest, task=task, split=split, **plan.split, seed=plan.seed,
                                  n_resamples=plan.n_resamples, **plan.spec())
                if cells.done(cell):
                    continue
                docs = capped(task_docs(cfg, task, split, tokenizer).docs, plan.max_docs, plan.seed)
                clean = score(model, docs, plan.batch_size)
                reference = (capped(task_docs(cfg, task, "dev", tokenizer).docs, plan.max_docs, plan.seed)
                             if plan.needs_dev else None)
                df = map_rows(plan, adapter, docs, clean, reference)
                meta = {"model": name, "digest": digest, "task": task, "split": split, "cell": cell.name, **plan.split}
                cells.write(cell, pd.concat([pd.DataFrame([meta] * len(df)), df], axis=1))
                log.info("%s %s/%s %s: worst delta_acc %.3f", name, task, split, plan.group, df.delta_acc.min())
    counts = dict(cells.counts)
    if plan.full_grid:  # the full grid: this job's cells it no longer plans are stale
        counts["pruned"] = cells.prune(f"{plan.prefix}*")
    return counts


def map_rows(plan: Plan, adapter, docs: tuple, clean, reference: tuple | None) -> pd.DataFrame:
    """One map's rows: every pair of top units for `pairs`, else one row per unit."""
    if plan.group == "pairs":
        return pair_map(adapter, reference, docs, clean, plan.pair_group, plan.pair_top_k, plan.n_resamples,
                        plan.seed, plan.batch_size, plan.neuron_block)
    return ablation_map(adapter, docs, plan.group, plan.op, plan.value, clean, plan.n_resamples, plan.seed,
                        plan.batch_size, plan.neuron_block, reference, plan.bins,
                        plan.exact_units if plan.screened else None, plan.single_neuron_units)
