"""The VPS grid inside one job: dev grid -> choice on dev -> test once, paired with the base model.

For every model x task: the base model and every grid configuration are scored on `dev` (one cell
each); the configuration with the best dev accuracy (ties: higher mean gold log-likelihood, then the
grid's order) is scored once on `test` beside the base model, with the latency and memory overhead
measured against the base model in the same run. Tasks with checkable answers (``vps.verify.tasks``)
also run the verification loop on `test` with the chosen configuration, and its gamma = 0 control.
Test documents are never scored while choosing.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, ListConfig
from tqdm import tqdm

from paramscope.errors import StudyError, check_choice, number
from paramscope.evaluation.documents import Doc, Scores
from paramscope.evaluation.scorer import score
from paramscope.evaluation.tasks import split_definition, task_docs
from paramscope.models import zoo
from paramscope.models.adapters import get_adapter
from paramscope.row_schemas import VPS as ROWS
from paramscope.selection import selected
from paramscope.store import CellGrid
from paramscope.vps.overhead import measure
from paramscope.vps.policy import MODES
from paramscope.vps.selection import BUILDERS
from paramscope.vps.verify import LoopSettings, verification_loop
from paramscope.vps.wrapper import LAYER_SETS, VPSConfig, projection_names, sharpen

log = logging.getLogger(__name__)

SETTINGS = ("tau", "clamp", "ridge", "lo_ratio")  # fixed per job, recorded in every VPS row
AXES = ("gamma", "rank", "builder", "layer_set", "policy")
PHASES = ("all", "dev")  # dev: the grid only (e.g. for multirun jobs), no test scoring
VERIFIABLE = ("arith",)


def axis(cfg: DictConfig, name: str) -> list:
    """A grid axis: a list in conf, or one value from a multirun override such as ``gamma=0.1``."""
    value = cfg[name]
    return list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]


def grid(cfg: DictConfig) -> tuple[VPSConfig, ...]:
    # tau and clamp as written: every cell's key holds them
    fixed = {"tau": cfg.vps.tau, "clamp": cfg.vps.clamp, "ridge": float(cfg.vps.ridge),
             "lo_ratio": float(cfg.vps.lo_ratio)}
    return tuple(VPSConfig(gamma=float(g), rank=int(r), builder=b, layer_set=s, policy=p, **fixed)
                 for g, r, b, s, p in itertools.product(*(axis(cfg, a) for a in AXES)))


def _check(cfg: DictConfig) -> None:
    """Every grid axis holds values the stage knows, and verification runs only where answers are checkable."""
    check_choice("phase", cfg.phase, PHASES)
    for b in axis(cfg, "builder"):
        check_choice("builder", b, BUILDERS)
    for p in axis(cfg, "policy"):
        check_choice("policy", p, MODES)
    for g in axis(cfg, "gamma"):
        if not number("gamma", g, example="0.3") > 0:
            raise StudyError(f"gamma must be > 0 (gamma = 0 is the base model, which every cell is paired with); "
                             f"got {g}")
    for r in axis(cfg, "rank"):
        if number("rank", r, int, example="2") < 1:
            raise StudyError(f"rank must be a positive integer; got {r}")
    if cfg.vps.tau is not None and float(cfg.vps.tau) <= 0:
        raise StudyError(f"vps.tau must be > 0 or null (no clip); got {cfg.vps.tau}")
    for t in cfg.vps.verify.tasks:
        check_choice("verification task", t, VERIFIABLE)
        if cfg.get("suite") is None:
            raise StudyError("the verification loop needs the synthetic suite; "
                             "set vps.verify.tasks=[] for this profile")


@dataclass(frozen=True)
class Plan:
    """Everything from the config that decides this job's cells, checked before any work."""

    phase: str
    models: tuple[str, ...]
    tasks: tuple[str, ...]
    configs: tuple[VPSConfig, ...]  # the grid, in its order (which breaks ties on dev)
    layer_sets: tuple[str, ...]  # checked against each model's projections once it is loaded
    verify_tasks: tuple[str, ...]
    loop: LoopSettings | None  # the verification loop's settings, where a task runs it
    modulus: int | None  # the synthetic suite's modulus, which the loop checks answers with
    overhead_repeats: int
    seed: int
    batch_size: int
    split: dict  # which documents are dev and test (`split_definition`)
    whole_grid: bool  # every model and task, not a multirun: any cell it does not plan is stale
    models_dir: Path
    device: str

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> Plan:
        _check(cfg)
        models = selected(cfg, "model", cfg.vps.models)
        tasks = selected(cfg, "task", cfg.tasks)
        verify_tasks = tuple(str(t) for t in cfg.vps.verify.tasks)
        return cls(phase=str(cfg.phase), models=tuple(models), tasks=tuple(tasks), configs=grid(cfg),
                   layer_sets=tuple(axis(cfg, "layer_set")), verify_tasks=verify_tasks,
                   loop=LoopSettings(**cfg.vps.verify.loop) if verify_tasks else None,
                   modulus=int(cfg.suite.modulus) if verify_tasks else None,
                   overhead_repeats=int(cfg.vps.overhead_repeats), seed=int(cfg.seed),
                   batch_size=int(cfg.eval.batch_size), split=split_definition(cfg), whole_grid=whole_grid(cfg),
                   models_dir=Path(cfg.paths.models), device=str(cfg.device))


def check_layer_sets(layer_sets: Sequence[str], adapter) -> None:
    valid = [*LAYER_SETS, *projection_names(adapter)]
    for s in layer_sets:
        check_choice("layer_set", s, valid)


def rows(meta: dict, scores: Scores, **extra: object) -> pd.DataFrame:
    """One tidy row with the per-document lists that reports pair by document id."""
    summary = scores.summary()
    return pd.DataFrame([{**meta, "schema": ROWS.version, **extra, "n": summary["n"], "acc": summary["acc"],
                          "loss": summary["loss"],
                          "ex_doc_ids": scores.doc_ids.tolist(), "ex_correct": scores.correct.tolist(),
                          "ex_gold_ll": scores.gold_ll.tolist()}])


def config_columns(config: VPSConfig | None) -> dict:
    if config is None:
        return {a: None for a in (*AXES, *SETTINGS)}
    return {a: getattr(config, a) for a in (*AXES, *SETTINGS)}


def choose(dev: Sequence[tuple[VPSConfig, pd.Series]]) -> tuple[VPSConfig, pd.Series]:
    """Best dev accuracy; ties broken by higher mean gold log-likelihood, then by grid order."""
    best = max(range(len(dev)), key=lambda i: (dev[i][1].acc, -dev[i][1].loss, -i))
    return dev[best]


class Job:
    """One model's cells; finished cells are read back instead of recomputed. Documents are found through
    `cfg` (the data layer's paths); everything else comes from the plan."""

    def __init__(self, cfg: DictConfig, plan: Plan, results: Path, name: str) -> None:
        self.cfg, self.plan, self.results, self.name = cfg, plan, results, name
        self.model, self.tokenizer = zoo.load(name, plan.models_dir, device=plan.device)
        self.adapter = get_adapter(self.model)
        self.digest = zoo.digest(self.model)
        self.batch = plan.batch_size
        self.cells = CellGrid("vps", ROWS, results)

    def cell(self, task: str, split: str, condition: str, compute, **spec: object) -> pd.DataFrame:
        cell = self.cells.plan(digest=self.digest, task=task, split=split, seed=self.plan.seed,
                               **self.plan.split, condition=condition, **spec)
        df = self.cells.existing(cell)
        if df is None:
            meta = {"model": self.name, "digest": self.digest, "task": task, "split": split, "condition": condition,
                    "cell": cell.name}
            df = compute(meta)
            self.cells.write(cell, df)
        return df

    def score(self, docs: Sequence[Doc], config: VPSConfig | None = None) -> Scores:
        with sharpen(self.model, config or VPSConfig(enabled=False), self.adapter):
            return score(self.model, docs, self.batch, share_context=False)  # VPS statistics span a sequence

    def dev_grid(self, task: str, configs: Sequence[VPSConfig]) -> list[tuple[VPSConfig, pd.Series]]:
        docs = task_docs(self.cfg, task, "dev", self.tokenizer).docs
        self.cell(task, "dev", "base", lambda m: rows(m, self.score(docs), **config_columns(None)))
        out = []
        for config in tqdm(configs, desc=f"vps {self.name}/{task} dev", leave=False):
            df = self.cell(task, "dev", "grid", lambda m, c=config: rows(m, self.score(docs, c), **config_columns(c)),
                           config=config.as_dict())
            out.append((config, df.iloc[0]))
        return out

    def test(self, task: str, configs: Sequence[VPSConfig],
             dev: list[tuple[VPSConfig, pd.Series]]) -> tuple[pd.Series, pd.Series]:
        """(chosen configuration's test row, base model's test row)."""
        config, dev_row = choose(dev)
        docs = task_docs(self.cfg, task, "test", self.tokenizer).docs
        grid_spec = {"grid": sorted(str(c.as_dict()) for c in configs)}
        base = self.cell(task, "test", "base", lambda m: rows(m, self.score(docs), **config_columns(None))).iloc[0]

        def selected_row(meta: dict) -> pd.DataFrame:
            n_tokens = sum(len(d.context) for d in docs)
            cost = measure(lambda: self.score(docs), lambda: self.score(docs, config), n_tokens,
                           self.plan.overhead_repeats, self.plan.device)
            return rows(meta, self.score(docs, config), **config_columns(config), grid_size=len(configs),
                        dev_acc=float(dev_row.acc), dev_loss=float(dev_row.loss), n_tokens=n_tokens, **cost)

        row = self.cell(task, "test", "selected", selected_row, config=config.as_dict(), **grid_spec).iloc[0]
        if task in self.plan.verify_tasks:
            self.verify(task, docs, config, grid_spec, row.cell)
        return row, base

    def verify(self, task: str, docs: Sequence[Doc], config: VPSConfig, grid_spec: dict, selected_cell: str) -> None:
        """The loop with the chosen configuration and its gamma = 0 control, tied to the chosen cell."""
        settings, modulus = self.plan.loop, self.plan.modulus
        for condition, cfg_ in (("verify", config), ("verify_control", dataclasses.replace(config, gamma=0.0))):
            def compute(meta: dict, c: VPSConfig = cfg_) -> pd.DataFrame:
                result = verification_loop(self.model, self.tokenizer, list(docs), c, modulus, settings, self.batch)
                gold = np.array([d.gold for d in docs])
                correct = (result.prediction == gold).astype(np.int8)  # gold is read here, after the loop
                return pd.DataFrame([{**meta, "schema": ROWS.version, **config_columns(c),
                                      **dataclasses.asdict(settings),
                                      "selected_cell": selected_cell, "n": len(docs), "acc": float(correct.mean()),
                                      "loss": np.nan, "verified": float(result.verified.mean()),
                                      "mean_rounds": float(result.rounds_used.mean()),
                                      "ex_doc_ids": [d.doc_id for d in docs], "ex_correct": correct.tolist(),
                                      "ex_gold_ll": [np.nan] * len(docs)}])
            self.cell(task, "test", condition, compute, config=config.as_dict(), loop=dataclasses.asdict(settings),
                      selected=selected_cell, **grid_spec)


def run_vps(cfg: DictConfig, results: Path) -> dict[str, float]:
    """Compute every missing cell of this job; returns counts and the chosen test deltas for W&B."""
    plan = Plan.from_cfg(cfg)
    configs = plan.configs
    for name in plan.models:  # every model must exist before any work starts
        zoo.resolve(name, plan.models_dir)
    cells = CellGrid("vps", ROWS, results)  # every model's cells, for pruning and counts
    # cells of another row schema go first, whatever the job: a report must never mix them in
    summary: dict[str, float] = {"computed": 0, "skipped": 0, "grid_size": len(configs),
                                 "pruned": cells.prune_invalid()}
    jobs = [Job(cfg, plan, results, name) for name in plan.models]
    summary["pruned"] += prune_other_weights(results, {job.name: job.digest for job in jobs})
    for job in jobs:
        name = job.name
        check_layer_sets(plan.layer_sets, job.adapter)
        for task in plan.tasks:
            dev = job.dev_grid(task, configs)
            if plan.phase == "dev":
                continue
            row, base = job.test(task, configs, dev)
            summary[f"{name}/{task}/test_delta_acc"] = float(row.acc - base.acc)
            summary[f"{name}/{task}/latency_ratio"] = float(row.latency_ratio)
            log.info("%s %s: chose %s %s r=%d gamma=%g %s on dev (acc %.3f); test acc %.3f vs base %.3f; "
                     "latency x%.2f", name, task, row.builder, row.layer_set, row["rank"], row.gamma, row.policy,
                     row.dev_acc, row.acc, base.acc, row.latency_ratio)
        for k, v in job.cells.counts.items():
            summary[k] += v
        cells.planned |= job.cells.planned
    if plan.whole_grid and plan.phase != "dev":  # it plans every cell there is: any other cell is stale
        summary["pruned"] += cells.prune("*")
    return summary


def whole_grid(cfg: DictConfig) -> bool:
    """A plain run over every model and task (what `dvc repro` runs): it plans every cell there is, so
    any other cell is stale. A multirun job sees only its sub-grid and prunes nothing."""
    try:
        from hydra.core.hydra_config import HydraConfig

        multirun = HydraConfig.get().mode.name == "MULTIRUN"
    except ValueError:  # not under @hydra.main
        multirun = False
    return not multirun and cfg.get("model") is None and cfg.get("task") is None


def prune_other_weights(results: Path, digests: dict[str, str]) -> int:
    """Drop the cells of these models made for other weights (a retrained model): the report pairs
    every cell with its model's base cells, so two checkpoints' cells must never mix."""
    stale = []
    for path in (results / "vps").glob("*.parquet"):
        row = pd.read_parquet(path, columns=["model", "digest"]).iloc[0]
        if row.model in digests and row.digest != digests[row.model]:
            stale.append(path)
    for path in stale:
        path.unlink()
    return len(stale)
