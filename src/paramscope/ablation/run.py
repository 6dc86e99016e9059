"""The ablation grid inside one job: every selected model x task x split map for one group/op/value."""

from __future__ import annotations

import logging
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
from paramscope.selection import selected
from paramscope.store import CellGrid, RowSchema

log = logging.getLogger(__name__)

# The version is part of every cell's key: bump it when a map's rows change shape or meaning, so that
# cells made by older code are recomputed instead of being mixed into new tables.
ROWS = RowSchema(5, {"model": "str", "digest": "str", "task": "str", "split": "str", "cell": "str", "group": "str",
                     "layer": "int", "unit": "int", "n_units": "int", "op": "str", "value": "float", "n": "int",
                     "acc_clean": "float", "acc": "float", "delta_acc": "float", "ci_low": "float",
                     "ci_high": "float", "p_mcnemar": "float", "delta_loss": "float", "ex_correct": "list"})
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


def check_request(cfg: DictConfig) -> None:
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


def run_grid(cfg: DictConfig, results: Path) -> dict[str, int]:
    """Compute every missing map of this job; finished maps are found by key and skipped."""
    if cfg.group in GROUP_ALIASES:  # one name in keys and rows, whichever the user typed
        cfg = OmegaConf.merge(cfg, {"group": GROUP_ALIASES[cfg.group]})
    check_request(cfg)
    left_out = profile_leaves_out(cfg)
    if left_out:
        log.warning("%s; nothing computed", left_out)
        return {"computed": 0, "skipped": 0, "left_out": 1}
    models = selected(cfg, "model", cfg.ablate.models)
    tasks = selected(cfg, "task", atlas_tasks(cfg))
    value = float(cfg.value)
    bins = int(cfg.ablate.matrix_magnitude_bins if cfg.group == "magnitude_matrix" else cfg.ablate.magnitude_bins)
    prefix = f"{cfg.group}-{cfg.op}-{value:g}-"  # lets a job find its own cells among all others
    max_docs = atlas_max_docs(cfg)
    exact_units = cfg.ablate.get("exact_units")  # screened heads/neuron maps (atlas.screened_specs)
    cells = CellGrid("ablate", ROWS, results)
    for name in models:  # every model must exist before any work starts
        zoo.resolve(name, Path(cfg.paths.models))
    for name in models:
        model, tokenizer = zoo.load(name, Path(cfg.paths.models), device=cfg.device)
        adapter = get_adapter(model)
        digest = zoo.digest(model)
        for task in tasks:
            for split in cfg.ablate.splits:
                spec = {"group": cfg.group, "op": cfg.op, "value": value, "neuron_block": cfg.ablate.neuron_block}
                if cfg.group in WEIGHT_GROUPS:
                    spec["magnitude_bins"] = bins
                if cfg.group == "pairs":
                    spec.update(pair_group=cfg.ablate.pair_group, pair_top_k=int(cfg.ablate.pair_top_k),
                                selected_on="dev")
                if cfg.op in STAT_OPS:
                    spec["reference"] = REFERENCE[cfg.op]
                if cfg.op == "resample":
                    spec["pool_docs"] = POOL_DOCS
                if cfg.group == "single_neurons":
                    spec.update(single_neuron_units=int(cfg.ablate.single_neuron_units), selected_on="dev")
                if cfg.group == "neuron_clusters":
                    spec.update(clustering="k-means of standardised dev activations, last context position",
                                selected_on="dev")
                if max_docs is not None:  # only where set, so that uncapped cells keep their keys
                    spec["max_docs"] = max_docs
                screened = exact_units is not None and cfg.op == "zero" and cfg.group in SCREENED_GROUPS
                if screened:
                    spec.update(exact_units=exact_units, selected_on="dev")
                cell = cells.plan(prefix, digest=digest, task=task, split=split, **split_definition(cfg),
                                  seed=cfg.seed, n_resamples=cfg.ablate.n_resamples, **spec)
                if cells.done(cell):
                    continue
                docs = capped(task_docs(cfg, task, split, tokenizer).docs, max_docs, cfg.seed)
                clean = score(model, docs, cfg.eval.batch_size)
                reference = (capped(task_docs(cfg, task, "dev", tokenizer).docs, max_docs, cfg.seed)
                             if cfg.op in STAT_OPS or cfg.group in ("pairs", *NEURON_GROUPINGS) or screened else None)
                if cfg.group == "pairs":
                    df = pair_map(adapter, reference, docs, clean, cfg.ablate.pair_group, int(cfg.ablate.pair_top_k),
                                  cfg.ablate.n_resamples, cfg.seed, cfg.eval.batch_size, cfg.ablate.neuron_block)
                else:
                    df = ablation_map(adapter, docs, cfg.group, cfg.op, value, clean, cfg.ablate.n_resamples,
                                      cfg.seed, cfg.eval.batch_size, cfg.ablate.neuron_block, reference, bins,
                                      exact_units if screened else None, int(cfg.ablate.single_neuron_units))
                meta = {"model": name, "digest": digest, "task": task, "split": split, "cell": cell.name,
                        **split_definition(cfg)}
                cells.write(cell, pd.concat([pd.DataFrame([meta] * len(df)), df], axis=1))
                log.info("%s %s/%s %s: worst delta_acc %.3f", name, task, split, cfg.group, df.delta_acc.min())
    counts = dict(cells.counts)
    if cfg.model is None and cfg.task is None:  # the full grid: this job's cells it no longer plans are stale
        counts["pruned"] = cells.prune(f"{prefix}*")
    return counts
