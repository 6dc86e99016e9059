"""The transplant grid inside one job: every pair x task x split for one (k, alpha).

Per pair and task the donor is the model with the higher accuracy on the task's *dev* split (ties:
lower dev loss, then pair order), and modules are selected from dev prompts only; test documents are
scored only to report. A cell is one (pair, task, split, K, alpha) with one row per transplant: the
selected top-K of each ranking, and the controls (random-K and layer-matched random-K, several seeds
each); copy-all is its own cell per (pair, task, split, alpha), shared by every K. Cells are keyed by
content (both models' digests, task, split, K, alpha, settings), so an interrupted grid resumes, and
a k that resolves to an already computed K (a fraction, or a count) finds its cell written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from paramscope.ablation.atlas import paired_row
from paramscope.errors import StudyError
from paramscope.evaluation.documents import Doc, Scores
from paramscope.evaluation.scorer import score
from paramscope.evaluation.tasks import task_docs
from paramscope.models import zoo
from paramscope.row_schemas import TRANSPLANT as ROWS
from paramscope.stats import bootstrap_ratio_ci, bootstrap_recovery_ci, paired_bootstrap_ci
from paramscope.store import Cell, CellGrid
from paramscope.transplant.apply import export_transplant, transplanted
from paramscope.transplant.modules import Module, module_registry
from paramscope.transplant.plan import Pair, Plan, resolve_k
from paramscope.transplant.select import (
    layer_matched,
    module_activity,
    random_order,
    rank_modules,
)
from paramscope.transplant.vocabulary import compare_vocabularies

log = logging.getLogger(__name__)

WORKLOAD = "dev contexts, mean |output| at the last token"  # what selection measures (in the key)
# (task, split, tokenizer) -> that split's documents: the one place the grid reads files through the config
Documents = Callable[[str, str, object], tuple[Doc, ...]]


class PairTask:
    """One pair on one task: who donates (chosen on dev), clean scores, activities; computed lazily.

    Nothing here runs until a missing cell needs it, so a rerun of a finished grid scores nothing.
    """

    def __init__(self, plan: Plan, pair: Pair, task: str, loaded: dict, digests: dict[str, str],
                 modules: list[Module], documents: Documents) -> None:
        self.plan, self.pair, self.task, self.modules = plan, pair, task, modules
        self.loaded, self.digests, self.documents = loaded, digests, documents
        self._scores: dict[tuple, Scores] = {}
        self._gaps: dict[str, dict[str, float]] = {}

    def docs(self, split: str) -> tuple[Doc, ...]:
        tokenizer = self.loaded[self.pair.models[0]][1]
        return self.documents(self.task, split, tokenizer)

    def clean(self, name: str, split: str) -> Scores:
        key = ("clean", name, split)
        if key not in self._scores:
            self._scores[key] = score(self.loaded[name][0], self.docs(split), self.plan.eval_batch_size)
        return self._scores[key]

    @cached_property
    def roles(self) -> tuple[str, str, str]:
        """(donor, target, rule): the stronger model on dev is the donor."""
        a, b = self.pair.models
        sa, sb = self.clean(a, "dev").summary(), self.clean(b, "dev").summary()
        if sa["acc"] != sb["acc"]:
            rule, a_first = "dev acc", sa["acc"] > sb["acc"]
        elif sa["loss"] != sb["loss"]:
            rule, a_first = "dev loss (dev acc tied)", sa["loss"] < sb["loss"]
        else:
            rule, a_first = "pair order (dev acc and loss tied)", True
        return (a, b, rule) if a_first else (b, a, rule)

    @cached_property
    def activity(self) -> tuple[np.ndarray, np.ndarray]:
        """Module activities of (donor, target) over the dev workload: one pass per model."""
        donor, target, _ = self.roles
        workload = self.docs("dev")
        batch = self.plan.batch_size
        return (module_activity(self.loaded[donor][0], self.modules, workload, batch),
                module_activity(self.loaded[target][0], self.modules, workload, batch))

    def ranked(self, ranking: str) -> np.ndarray:
        return rank_modules(*self.activity, ranking)

    def transplanted_scores(self, indices: np.ndarray, alpha: float, split: str) -> Scores:
        """Scores of the target with ``indices`` transplanted; equal module sets are scored once."""
        key = ("transplant", tuple(sorted(int(i) for i in indices)), alpha, split)
        if key not in self._scores:
            donor, target, _ = self.roles
            names = [self.modules[i].name for i in key[1]]
            with transplanted(self.loaded[target][0], self.loaded[donor][0], names, alpha) as model:
                self._scores[key] = score(model, self.docs(split), self.plan.eval_batch_size)
        return self._scores[key]

    def gap(self, split: str) -> dict[str, float]:
        """Donor minus target accuracy on ``split`` with its CI (the same for every row of the split)."""
        if split not in self._gaps:
            donor, target, _ = self.roles
            t, d = self.clean(target, split).correct, self.clean(donor, split).correct
            gap, low, high = paired_bootstrap_ci(t, d, self.plan.n_resamples, seed=self.plan.seed)
            self._gaps[split] = {"acc_target": float(t.mean()), "acc_donor": float(d.mean()),
                                 "gap": gap, "gap_ci_low": low, "gap_ci_high": high}
        return self._gaps[split]


@dataclass(frozen=True)
class Transplant:
    """One row of a cell: which modules, chosen how."""

    method: str  # selected, random, layer_random, all
    ranking: str  # abs / signed for selected and layer_random; "" otherwise
    replicate: int  # seed replicate of a random control; 0 otherwise
    indices: tuple[int, ...]

    @property
    def label(self) -> str:
        k = len(self.indices)
        return {"selected": f"top-{k} ({self.ranking})", "random": f"random-{k} #{self.replicate}",
                "layer_random": f"layer-matched random-{k} ({self.ranking}) #{self.replicate}",
                "all": f"all {k}"}[self.method]


def transplants(state: PairTask, k: int, split: str) -> list[Transplant]:
    """The rows of a K cell on ``split``: selected sets where asked, controls where asked."""
    plan, seed = state.plan, state.plan.seed
    rows: list[Transplant] = []
    tops = {r: state.ranked(r)[:k] for r in plan.rankings} if split in plan.k_splits else {}
    if split in plan.splits:
        rows += [Transplant("selected", r, 0, tuple(sorted(int(i) for i in top))) for r, top in tops.items()]
    if split in plan.control_splits:
        n = len(state.modules)
        for rep in range(plan.n_seeds):
            rows.append(Transplant("random", "", rep, tuple(sorted(int(i) for i in random_order(n, seed, rep)[:k]))))
            rows += [Transplant("layer_random", r, rep,
                                tuple(int(i) for i in layer_matched(state.modules, top, seed, rep)))
                     for r, top in tops.items()]
    return rows


def transplant_row(state: PairTask, tp: Transplant, alpha: float, split: str) -> dict:
    """Statistics of one transplant on ``split``, paired with the target (and donor) on the same documents."""
    donor, target, rule = state.roles
    n_resamples, seed = state.plan.n_resamples, state.plan.seed
    clean_t, clean_d = state.clean(target, split), state.clean(donor, split)
    moved = state.transplanted_scores(np.array(tp.indices, dtype=int), alpha, split)
    tir = bootstrap_ratio_ci(clean_t.correct, moved.correct, n_resamples, seed=seed)
    gbr = bootstrap_recovery_ci(clean_t.correct, clean_d.correct, moved.correct, n_resamples, seed=seed)
    chosen = [state.modules[i] for i in tp.indices]
    return {
        "label": tp.label, "method": tp.method, "ranking": tp.ranking, "replicate": tp.replicate, "k": len(tp.indices),
        "n_modules": len(state.modules), "k_frac": len(tp.indices) / len(state.modules), "alpha": alpha,
        "donor_rule": rule,
        **paired_row(clean_t, moved, n_resamples, seed),
        **state.gap(split),
        "p_gap": gbr.p_gap,
        "tir": tir.point, "tir_ci_low": tir.low, "tir_ci_high": tir.high, "tir_n_dropped": tir.n_dropped,
        # raw recovery: report it only where the donor-target gap is significant (see metrics)
        "gbr": gbr.point, "gbr_ci_low": gbr.low, "gbr_ci_high": gbr.high, "gbr_n_dropped": gbr.n_dropped,
        "modules": [m.name for m in chosen], "module_layers": [m.layer for m in chosen],
        "module_kinds": [m.kind for m in chosen], "module_roles": [m.role for m in chosen],
        # the whole selection, so reports can show every module's activity and rank
        "registry": [m.name for m in state.modules],
        "activity_donor": state.activity[0].tolist(), "activity_target": state.activity[1].tolist(),
        "ex_doc_ids": clean_t.doc_ids.tolist(),
        "ex_correct_target": clean_t.correct.tolist(), "ex_correct_donor": clean_d.correct.tolist(),
    }


def _write(state: PairTask, rows: list[Transplant], alpha: float, split: str, cells: CellGrid, cell: Cell) -> None:
    donor, target, _ = state.roles
    body = pd.DataFrame([transplant_row(state, tp, alpha, split) for tp in rows])
    meta = {"model": target, "digest": state.digests[target], "task": state.task, "split": split, "cell": cell.name,
            "donor": donor, "donor_digest": state.digests[donor], "pair": state.pair.label, "kind": state.pair.kind}
    cells.write(cell, pd.concat([pd.DataFrame([meta] * len(body)), body], axis=1))
    best = body.loc[body.method.isin(["selected", "all"])]
    if len(best):
        log.info("%s <- %s %s/%s K=%d alpha=%g: acc %.3f (target %.3f, donor %.3f)", target, donor, state.task,
                 split, body.k.iloc[0], alpha, best.acc.max(), body.acc_clean.iloc[0], body.acc_donor.iloc[0])


def _export(folder: Path, state: PairTask, k: int, alpha: float) -> int:
    """Save this job's selected transplants as Hugging Face directories; existing ones are kept."""
    donor, target, _ = state.roles
    made = 0
    for ranking in state.plan.rankings:
        path = folder / f"{target}-from-{donor}-{state.task}-{ranking}-k{k}-a{alpha:g}"
        if path.exists():
            continue
        names = [state.modules[i].name for i in sorted(state.ranked(ranking)[:k])]
        export_transplant(state.loaded[target][0], state.loaded[target][1], state.loaded[donor][0], names, alpha,
                          path, {"target": target, "donor": donor, "task": state.task, "ranking": ranking,
                                 "target_digest": state.digests[target], "donor_digest": state.digests[donor]})
        made += 1
    return made


def _check_same_reading(documents: Documents, pair: Pair, tok_a, tok_b, tasks: tuple[str, ...],
                        splits: tuple[str, ...]) -> None:
    """Both models must see each document as the same token ids (their documents are encoded once, with
    the first model's tokenizer): one base vocabulary, and no differing added token in the text."""
    a, b = pair.models
    added = compare_vocabularies(a, tok_a, b, tok_b)
    if not added:
        return
    log.warning("%s: the base vocabularies are equal; the added tokens differ: %s", pair.label, added.describe(a, b))
    for task in tasks:
        for split in splits:
            if documents(task, split, tok_a) != documents(task, split, tok_b):
                raise StudyError(f"cannot transplant between {a} and {b} on task '{task}': its {split} documents "
                                 f"encode differently under the two tokenizers ({added.describe(a, b)})")


def _documents(cfg: DictConfig) -> Documents:
    """The data layer's reader of task documents, bound to the config that says where they are."""
    def documents(task: str, split: str, tokenizer) -> tuple[Doc, ...]:
        return task_docs(cfg, task, split, tokenizer).docs
    return documents


def _load(cfg: DictConfig, plan: Plan) -> tuple[dict, dict[str, str]]:
    """Every model of the plan's pairs and its digest; all must exist before any is loaded."""
    root = Path(cfg.paths.models)
    names = sorted({m for p in plan.pairs for m in p.models})
    for name in names:
        zoo.resolve(name, root)
    loaded = {name: zoo.load(name, root, device=cfg.device) for name in names}
    return loaded, {name: zoo.digest(model) for name, (model, _) in loaded.items()}


def _registries(plan: Plan, loaded: dict, documents: Documents) -> dict[Pair, list[Module]]:
    """Each pair's transplantable modules; a mismatched pair is refused before anything is written."""
    registries = {}
    for pair in plan.pairs:
        (a, tok_a), (b, tok_b) = loaded[pair.models[0]], loaded[pair.models[1]]
        registries[pair] = module_registry(a, b, pair.models)
        _check_same_reading(documents, pair, tok_a, tok_b, plan.tasks, plan.k_splits)
    return registries


def _resolved_k(plan: Plan, pair: Pair, n_modules: int) -> int | None:
    """The pair's K for the plan's request; None (with a warning) where the request exceeds its modules."""
    k = resolve_k(plan.k, n_modules)
    if k is None:
        log.warning("k=%s exceeds the %d transplantable modules of %s: no K cell (copy-all still runs)",
                    plan.k, n_modules, pair.label)
    elif k == n_modules:
        log.info("k=%s is every module of %s: the copy-all cell covers it", plan.k, pair.label)
    return k


CellPlan = tuple[str, int, list[Transplant] | None, str]  # (kind, K, rows or None = `transplants`, split)


def _cell_plans(plan: Plan, n_modules: int, k: int | None) -> list[CellPlan]:
    """Copy-all on every selection split, shared by every K; the K cell where K is not every module."""
    cells: list[CellPlan] = [("all", n_modules, [Transplant("all", "", 0, tuple(range(n_modules)))], s)
                             for s in plan.splits]
    if k is not None and k < n_modules:
        cells += [("k", k, None, s) for s in plan.k_splits]
    return cells


def _cell_spec(plan: Plan, kind: str, size: int, split: str) -> dict:
    """What a cell's key carries besides its pair and task: the job's settings, and a K cell's rows."""
    spec = {"seed": plan.seed, "n_resamples": plan.n_resamples, "workload": WORKLOAD, "alpha": plan.alpha,
            **plan.split, "kind": kind, "k": size, "split": split}
    if kind == "k":
        spec.update(rankings=list(plan.rankings), n_seeds=plan.n_seeds, selected=split in plan.splits,
                    controls=split in plan.control_splits)
    return spec


def run_grid(cfg: DictConfig, results: Path) -> dict[str, int]:
    """Compute every missing cell of this job's (k, alpha); finished cells are found by key and skipped."""
    plan = Plan.from_cfg(cfg)
    documents = _documents(cfg)
    loaded, digests = _load(cfg, plan)
    registries = _registries(plan, loaded, documents)
    grid = CellGrid("transplant", ROWS, results)
    counts = {"k_too_large": 0, "exported": 0}
    prefixes: set[str] = set()
    for pair in plan.pairs:
        modules = registries[pair]
        k = _resolved_k(plan, pair, len(modules))
        counts["k_too_large"] += int(k is None)
        pair_digests = [digests[m] for m in pair.models]
        for task in plan.tasks:
            state = PairTask(plan, pair, task, loaded, digests, modules, documents)
            for kind, size, rows, split in _cell_plans(plan, len(modules), k):
                prefix = f"{kind}{size}-a{plan.alpha:g}-"
                cell = grid.plan(prefix, **_cell_spec(plan, kind, size, split), digests=pair_digests, task=task)
                prefixes.add(prefix)
                if grid.done(cell):
                    continue
                _write(state, rows if rows is not None else transplants(state, size, split), plan.alpha, split,
                       grid, cell)
            if plan.export is not None and k is not None:
                counts["exported"] += _export(plan.export, state, k, plan.alpha)
    counts = {**grid.counts, **counts}
    if plan.full_grid:  # cells of this job's kinds that the full grid no longer plans are stale
        counts["pruned"] = grid.prune(*(f"{prefix}*" for prefix in sorted(prefixes)))
    return counts
