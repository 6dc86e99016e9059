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
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from paramscope.ablation.atlas import paired_row
from paramscope.data.splits import check_split
from paramscope.errors import StudyError, check_choice
from paramscope.evaluation.documents import Doc, Scores
from paramscope.evaluation.scorer import score
from paramscope.evaluation.tasks import split_definition, task_docs
from paramscope.models import zoo
from paramscope.stats import (
    MIN_RESAMPLES,
    bootstrap_ratio_ci,
    bootstrap_recovery_ci,
    paired_bootstrap_ci,
)
from paramscope.store import Cell, CellGrid, RowSchema
from paramscope.transplant.apply import export_transplant, transplanted
from paramscope.transplant.modules import Module, module_registry
from paramscope.transplant.select import (
    RANKINGS,
    layer_matched,
    module_activity,
    random_order,
    rank_modules,
)
from paramscope.transplant.vocabulary import compare_vocabularies

log = logging.getLogger(__name__)

# The version is part of every cell's key: bump it when rows change shape or meaning, so old cells are
# recomputed. Rows also carry the atlas's columns (group, layer, unit, n_units, op, value, unit_name) with
# transplant meanings (unit = replicate, n_units = k, value = alpha); readers use the named ones below.
ROWS = RowSchema(1, {"model": "str", "digest": "str", "task": "str", "split": "str", "cell": "str", "donor": "str",
                     "pair": "str", "kind": "str", "method": "str", "ranking": "str", "replicate": "int", "k": "int",
                     "n_modules": "int", "alpha": "float", "n": "int", "acc": "float", "acc_clean": "float",
                     "delta_acc": "float", "ci_low": "float", "ci_high": "float", "tir": "float", "gbr": "float",
                     "modules": "list", "ex_doc_ids": "list", "ex_correct": "list"})
WORKLOAD = "dev contexts, mean |output| at the last token"  # what selection measures (in the key)


@dataclass(frozen=True)
class Pair:
    models: tuple[str, str]
    kind: str

    @property
    def label(self) -> str:
        return f"{self.models[0]} vs {self.models[1]}"


def profile_pairs(cfg: DictConfig) -> list[Pair]:
    """The configured pairs whose two models are both in the profile's `models`."""
    known = set(cfg.models)
    pairs = [Pair(tuple(p.models), str(p.kind)) for p in cfg.transplant.pairs]
    return [p for p in pairs if set(p.models) <= known]


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


def check_request(cfg: DictConfig) -> tuple[int | float, float, list[Pair], list[str]]:
    """Everything the user can get wrong, checked before any model is loaded."""
    k = parse_k(cfg.k)
    try:
        alpha = float(cfg.alpha)
    except (TypeError, ValueError):
        alpha = float("nan")
    if not 0.0 < alpha <= 1.0:
        raise StudyError(f"alpha must lie in (0, 1] (1 = the paper's copy); got {cfg.alpha}")
    t = cfg.transplant
    for ranking in t.rankings:
        check_choice("ranking", ranking, RANKINGS)
    for split in (*t.splits, *t.control_splits):
        check_split(split)
    if int(t.n_seeds) < 0 or int(t.n_resamples) < MIN_RESAMPLES:
        raise StudyError(f"transplant.n_seeds must be >= 0 and transplant.n_resamples >= {MIN_RESAMPLES}; "
                         f"got {t.n_seeds} and {t.n_resamples}")
    pairs = profile_pairs(cfg)
    if cfg.pair is not None:
        wanted = [str(m) for m in cfg.pair] if not isinstance(cfg.pair, str) else [cfg.pair]
        pairs = [p for p in pairs if sorted(p.models) == sorted(wanted)]  # a pair is unordered
        if not pairs:
            check_choice("pair", f"[{','.join(wanted)}]", [f"[{','.join(p.models)}]" for p in profile_pairs(cfg)])
    if not pairs:
        raise StudyError(f"no transplant pair has both models in this profile's models ({', '.join(cfg.models)})")
    tasks = list(cfg.tasks) if cfg.task is None else [cfg.task]
    check_choice("task", tasks[0], cfg.tasks)
    return k, alpha, pairs, tasks


class PairTask:
    """One pair on one task: who donates (chosen on dev), clean scores, activities; computed lazily.

    Nothing here runs until a missing cell needs it, so a rerun of a finished grid scores nothing.
    """

    def __init__(self, cfg: DictConfig, pair: Pair, task: str, loaded: dict, digests: dict[str, str],
                 modules: list[Module]) -> None:
        self.cfg, self.pair, self.task, self.modules = cfg, pair, task, modules
        self.loaded, self.digests = loaded, digests
        self._scores: dict[tuple, Scores] = {}
        self._gaps: dict[str, dict[str, float]] = {}

    def docs(self, split: str) -> tuple[Doc, ...]:
        tokenizer = self.loaded[self.pair.models[0]][1]
        return task_docs(self.cfg, self.task, split, tokenizer).docs

    def clean(self, name: str, split: str) -> Scores:
        key = ("clean", name, split)
        if key not in self._scores:
            self._scores[key] = score(self.loaded[name][0], self.docs(split), self.cfg.eval.batch_size)
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
        batch = int(self.cfg.transplant.batch_size)
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
                self._scores[key] = score(model, self.docs(split), self.cfg.eval.batch_size)
        return self._scores[key]

    def gap(self, split: str) -> dict[str, float]:
        """Donor minus target accuracy on ``split`` with its CI (the same for every row of the split)."""
        if split not in self._gaps:
            donor, target, _ = self.roles
            t, d = self.clean(target, split).correct, self.clean(donor, split).correct
            gap, low, high = paired_bootstrap_ci(t, d, int(self.cfg.transplant.n_resamples), seed=int(self.cfg.seed))
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
    t = state.cfg.transplant
    seed = int(state.cfg.seed)
    rows: list[Transplant] = []
    tops = {r: state.ranked(r)[:k] for r in t.rankings} if split in (*t.splits, *t.control_splits) else {}
    if split in t.splits:
        rows += [Transplant("selected", r, 0, tuple(sorted(int(i) for i in top))) for r, top in tops.items()]
    if split in t.control_splits:
        n = len(state.modules)
        for rep in range(int(t.n_seeds)):
            rows.append(Transplant("random", "", rep, tuple(sorted(int(i) for i in random_order(n, seed, rep)[:k]))))
            rows += [Transplant("layer_random", r, rep,
                                tuple(int(i) for i in layer_matched(state.modules, top, seed, rep)))
                     for r, top in tops.items()]
    return rows


def transplant_row(state: PairTask, tp: Transplant, alpha: float, split: str) -> dict:
    """Statistics of one transplant on ``split``, paired with the target (and donor) on the same documents."""
    donor, target, rule = state.roles
    n_resamples, seed = int(state.cfg.transplant.n_resamples), int(state.cfg.seed)
    clean_t, clean_d = state.clean(target, split), state.clean(donor, split)
    moved = state.transplanted_scores(np.array(tp.indices, dtype=int), alpha, split)
    tir = bootstrap_ratio_ci(clean_t.correct, moved.correct, n_resamples, seed=seed)
    gbr = bootstrap_recovery_ci(clean_t.correct, clean_d.correct, moved.correct, n_resamples, seed=seed)
    chosen = [state.modules[i] for i in tp.indices]
    return {
        "group": "modules", "layer": -1, "unit": tp.replicate, "n_units": len(tp.indices), "op": "transplant",
        "value": alpha, "unit_name": tp.label,
        "method": tp.method, "ranking": tp.ranking, "replicate": tp.replicate, "k": len(tp.indices),
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


def _export(cfg: DictConfig, state: PairTask, k: int, alpha: float) -> int:
    """Save this job's selected transplants as Hugging Face directories; existing ones are kept."""
    donor, target, _ = state.roles
    made = 0
    for ranking in cfg.transplant.rankings:
        path = Path(cfg.export) / f"{target}-from-{donor}-{state.task}-{ranking}-k{k}-a{alpha:g}"
        if path.exists():
            continue
        names = [state.modules[i].name for i in sorted(state.ranked(ranking)[:k])]
        export_transplant(state.loaded[target][0], state.loaded[target][1], state.loaded[donor][0], names, alpha,
                          path, {"target": target, "donor": donor, "task": state.task, "ranking": ranking,
                                 "target_digest": state.digests[target], "donor_digest": state.digests[donor]})
        made += 1
    return made


def _check_same_reading(cfg: DictConfig, pair: Pair, tok_a, tok_b, tasks: list[str], splits: list[str]) -> None:
    """Both models must see each document as the same token ids (their documents are encoded once, with
    the first model's tokenizer): one base vocabulary, and no differing added token in the text."""
    a, b = pair.models
    added = compare_vocabularies(a, tok_a, b, tok_b)
    if not added:
        return
    log.warning("%s: the base vocabularies are equal; the added tokens differ: %s", pair.label, added.describe(a, b))
    for task in tasks:
        for split in splits:
            if task_docs(cfg, task, split, tok_a).docs != task_docs(cfg, task, split, tok_b).docs:
                raise StudyError(f"cannot transplant between {a} and {b} on task '{task}': its {split} documents "
                                 f"encode differently under the two tokenizers ({added.describe(a, b)})")


def run_grid(cfg: DictConfig, results: Path) -> dict[str, int]:
    """Compute every missing cell of this job's (k, alpha); finished cells are found by key and skipped."""
    k_request, alpha, pairs, tasks = check_request(cfg)
    root = Path(cfg.paths.models)
    names = sorted({m for p in pairs for m in p.models})
    for name in names:  # every model must exist before any work starts
        zoo.resolve(name, root)
    loaded = {name: zoo.load(name, root, device=cfg.device) for name in names}
    digests = {name: zoo.digest(model) for name, (model, _) in loaded.items()}
    t = cfg.transplant
    splits = [s for s in ("dev", "test") if s in (*t.splits, *t.control_splits)]
    registries = {}
    for pair in pairs:  # refuse a mismatched pair before anything is written
        (a, tok_a), (b, tok_b) = loaded[pair.models[0]], loaded[pair.models[1]]
        registries[pair] = module_registry(a, b, pair.models)
        _check_same_reading(cfg, pair, tok_a, tok_b, tasks, splits)
    settings = {"seed": cfg.seed, "n_resamples": t.n_resamples, "workload": WORKLOAD, "alpha": alpha,
                **split_definition(cfg)}
    grid = CellGrid("transplant", ROWS, results)
    counts = {"k_too_large": 0, "exported": 0}
    prefixes: set[str] = set()
    for pair in pairs:
        modules = registries[pair]
        k = resolve_k(k_request, len(modules))
        if k is None:
            log.warning("k=%s exceeds the %d transplantable modules of %s: no K cell (copy-all still runs)",
                        cfg.k, len(modules), pair.label)
            counts["k_too_large"] += 1
        elif k == len(modules):
            log.info("k=%s is every module of %s: the copy-all cell covers it", cfg.k, pair.label)
        pair_digests = [digests[m] for m in pair.models]
        for task in tasks:
            state = PairTask(cfg, pair, task, loaded, digests, modules)
            cells = [("all", len(modules), [Transplant("all", "", 0, tuple(range(len(modules))))], s)
                     for s in t.splits]
            if k is not None and k < len(modules):
                cells += [("k", k, None, s) for s in splits]
            for kind, size, rows, split in cells:
                spec = dict(settings, kind=kind, k=size, digests=pair_digests, task=task, split=split)
                if kind == "k":
                    spec.update(rankings=list(t.rankings), n_seeds=int(t.n_seeds),
                                selected=split in t.splits, controls=split in t.control_splits)
                prefix = f"{kind}{size}-a{alpha:g}-"
                cell = grid.plan(prefix, **spec)
                prefixes.add(prefix)
                if grid.done(cell):
                    continue
                _write(state, rows if rows is not None else transplants(state, size, split), alpha, split, grid, cell)
            if cfg.export and k is not None:
                counts["exported"] += _export(cfg, state, k, alpha)
    counts = {**grid.counts, **counts}
    if cfg.pair is None and cfg.task is None:  # the full grid: cells of this job's kinds it no longer plans are stale
        counts["pruned"] = grid.prune(*(f"{prefix}*" for prefix in sorted(prefixes)))
    return counts
