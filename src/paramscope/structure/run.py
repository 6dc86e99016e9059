"""The structure grid of one job: null tests, Weibull fits, annealing and substructures per model.

Cells (one Parquet file each, keyed by content; an existing cell is skipped):

- ``tests``: per matrix (``row_type=matrix``) and per (layer, unit kind) edge group (``row_type=edges``),
  the fractions indistinguishable from initialisation under the value test (step-0 null), the drift test
  (noise-twin null) and both (`null_test`).
- ``weibull``: per 2-D weight matrix of a model (`weibull`); ``step=step0`` for a null model,
  ``trained`` otherwise.
- ``anneal``: the dev curve of annealing and its magnitude control (one row per method, step and task,
  with per-document lists), the chosen states re-scored on dev and test (`anneal`).
- ``components``: the dependency graph of the accepted annealing mask and of the indistinguishable set,
  per block and across the network, with the network's components run apart and recombined against the masked model
  (`components`).

Every choice (where annealing stops) is made on dev; test documents are only scored for the states
chosen there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from scipy import stats

from paramscope.errors import StudyError, number
from paramscope.evaluation.documents import Doc, Scores
from paramscope.evaluation.scorer import score
from paramscope.evaluation.tasks import split_definition, task_docs
from paramscope.models import zoo
from paramscope.models.adapters import Adapter, get_adapter, weight_in_out
from paramscope.row_schemas import STRUCTURE as ROWS
from paramscope.selection import selected
from paramscope.store import CellGrid
from paramscope.structure.anneal import (
    Annealing,
    Masks,
    anneal,
    loss_and_acc,
    magnitude_masks,
    masked,
    n_removed,
    threshold_masks,
)
from paramscope.structure.components import (
    NodeIndex,
    block_table,
    component_summary,
    component_table,
    dependency_graph,
    matrix_blocks,
    substructure_logits,
)
from paramscope.structure.null_test import (
    EntryTests,
    Weights,
    edge_tests,
    entry_tests,
    matrix_table,
)
from paramscope.structure.units import KINDS, MatrixRole, matrix_roles, n_units
from paramscope.structure.weibull import fit_weibull

log = logging.getLogger(__name__)



SPLITS = ("dev", "test")
# A model's documents of one task and split, as its tokenizer encodes them: the data layer finds them through
# the config (paths, dev fraction, metric), so the study only asks for them.
Documents = Callable[[str, str, object], list[Doc]]


@dataclass(frozen=True)
class Plan:
    """Everything from the config that decides the structure grid's numbers, checked before any work."""

    models: tuple[str, ...]  # after `model=NAME`
    tasks: tuple[str, ...]  # after `task=NAME`
    fdr: float
    tolerance: float
    thresholds: tuple[float, ...]
    null_models: dict[str, str]  # model -> its step-0 checkpoint
    drift_references: dict[str, str | None]  # model -> its noise twin (None: the value test alone)
    batch_size: int
    decompose_docs: int
    seed: int
    models_root: Path
    device: str
    full_grid: bool  # no `model=`/`task=` narrowing: the job may prune its scope
    split: dict = field(default_factory=dict)  # which documents are dev and test (`split_definition`)

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> Plan:
        s = cfg.structure
        models = selected(cfg, "model", s.models)
        tasks = selected(cfg, "task", cfg.tasks)
        fdr = number("fdr", cfg.fdr, example="0.05")
        if not 0.0 < fdr < 1.0:
            raise StudyError(f"fdr must lie in (0, 1), got {cfg.fdr}; e.g. fdr=0.05")
        tolerance = number("tolerance", cfg.tolerance, example="0.1")
        if tolerance < 0.0:
            raise StudyError(f"tolerance must be >= 0 (nats of task-averaged dev loss), got {cfg.tolerance}")
        thresholds = [float(t) for t in s.thresholds]
        if (not thresholds or any(not 0.0 <= t < 1.0 for t in thresholds)
                or any(b >= a for a, b in pairwise(thresholds))):
            raise StudyError(f"structure.thresholds must be p-values in [0, 1) that decrease strictly, "
                             f"got {thresholds}")
        missing = [m for m in models if m not in s.null_models]
        if missing:
            raise StudyError(f"no step-0 null model for {', '.join(missing)}; set structure.null_models.<model>; "
                             f"valid models with a null: {', '.join(s.null_models)}")
        missing = [m for m in models if m not in s.drift_references]
        if missing:
            raise StudyError(f"no drift reference for {', '.join(missing)}; set structure.drift_references.<model> "
                             f"to its noise twin, or to null for the value test alone; models with an entry: "
                             f"{', '.join(s.drift_references)}")
        nulls = {m: str(s.null_models[m]) for m in models}
        references = {m: None if s.drift_references[m] is None else str(s.drift_references[m]) for m in models}
        root = Path(cfg.paths.models)
        for name in {*models, *nulls.values(), *(r for r in references.values() if r is not None)}:
            zoo.resolve(name, root)
        return cls(models=tuple(models), tasks=tuple(tasks), fdr=fdr, tolerance=tolerance,
                   thresholds=tuple(thresholds), null_models=nulls, drift_references=references,
                   batch_size=int(s.batch_size), decompose_docs=int(s.decompose_docs), seed=int(cfg.seed),
                   models_root=root, device=str(cfg.device),
                   full_grid=cfg.get("task") is None and cfg.get("model") is None, split=split_definition(cfg))

    @property
    def nulls(self) -> list[str]:
        """The step-0 checkpoints of the plan's models, each once."""
        return sorted(set(self.null_models.values()))

    @property
    def spec(self) -> dict[str, object]:
        """The settings an annealing or component cell depends on, as its key carries them (lists, not tuples,
        as they always were; the key's JSON writes both alike)."""
        return {"fdr": self.fdr, "tolerance": self.tolerance, "thresholds": list(self.thresholds),
                "tasks": list(self.tasks), "seed": self.seed, "decompose_docs": self.decompose_docs, **self.split}


def projection_weights(adapter: Adapter) -> dict[str, np.ndarray]:
    """Every attention/MLP projection as a float32 (d_out, d_in) array (a copy: masks never touch it)."""
    return {n: weight_in_out(m).detach().float().cpu().numpy().copy() for n, m in adapter.linear_modules().items()}


def weibull_rows(model: torch.nn.Module, adapter: Adapter, roles: Mapping[str, MatrixRole], step: str) -> pd.DataFrame:
    """The Weibull diagnostic of every 2-D weight of the model, with its matrix class."""
    classes = {id(m.weight): roles[n] for n, m in adapter.linear_modules().items()}
    special = {id(adapter.embeddings().weight): "embed", id(adapter.unembedding().weight): "unembed"}
    rows = []
    for name, param in model.named_parameters():
        if param.ndim != 2:
            continue
        role = classes.get(id(param))
        matrix_class = role.matrix_type if role else special.get(id(param), "embed")  # e.g. GPT-2's positions
        fit = fit_weibull(param.detach().float().cpu().numpy())
        rows.append({"matrix": name, "layer": role.layer if role else -1, "matrix_class": matrix_class,
                     "step": step, **fit.as_dict()})
    return pd.DataFrame(rows)


def _score_rows(scores: Mapping[str, Scores], **meta: object) -> list[dict]:
    loss, acc = loss_and_acc(scores)
    return [{**meta, "task": task, "loss": loss, "acc": acc, "task_loss": float(-s.gold_ll.mean()),
             "task_acc": float(s.correct.mean()), "ex_doc_ids": s.doc_ids.tolist(),
             "ex_correct": s.correct.tolist(), "ex_gold_ll": s.gold_ll.tolist()} for task, s in scores.items()]


def _jaccard(a: Masks, b: Masks) -> float:
    """|A & B| / |A | B| of two sets of removed entries (NaN when both are empty)."""
    both = sum(int((a[n] & b[n]).sum()) for n in a if n in b)
    union = n_removed(a) + n_removed(b) - both
    return both / union if union else float("nan")


class ModelStudy:
    """Everything the cells of one model need, computed once: weights, roles, tests, evaluators."""

    def __init__(self, plan: Plan, name: str, documents: Documents) -> None:
        self.plan, self.name = plan, name
        self.null_name = plan.null_models[name]
        self.drift_reference = plan.drift_references[name]
        root = plan.models_root
        self.model, tokenizer = zoo.load(name, root, device=plan.device)
        null_model, _ = zoo.load(self.null_name, root, device="cpu")
        self.adapter = get_adapter(self.model)
        self.roles = matrix_roles(self.adapter)
        self.weights = projection_weights(self.adapter)
        self.init = projection_weights(get_adapter(null_model))
        self.digest, self.null_digest = zoo.digest(self.model), zoo.digest(null_model)
        noise_twin = None
        if self.drift_reference is None:
            log.warning("%s: no drift reference (structure.drift_references); the value test decides alone", name)
            self.drift_reference_digest = "none"
        else:
            twin_model, _ = zoo.load(self.drift_reference, root, device="cpu")
            noise_twin = projection_weights(get_adapter(twin_model))
            self.drift_reference_digest = zoo.digest(twin_model)
        self.checkpoints = Weights(self.weights, self.init, noise_twin)
        self.units = {(layer, kind): n_units(self.adapter, layer, kind)
                      for layer in range(self.adapter.n_layers) for kind in KINDS}
        self.docs = {split: {t: documents(t, split, tokenizer) for t in plan.tasks} for split in SPLITS}
        self._tests: EntryTests | None = None
        self._annealing: Annealing | None = None

    @property
    def meta(self) -> dict[str, str]:
        return {"model": self.name, "digest": self.digest, "null_model": self.null_name,
                "null_digest": self.null_digest, "drift_reference": self.drift_reference or "none",
                "drift_reference_digest": self.drift_reference_digest}

    @property
    def tests(self) -> EntryTests:
        if self._tests is None:
            self._tests = entry_tests(self.checkpoints, self.plan.fdr)
        return self._tests

    @property
    def total(self) -> int:
        return sum(w.size for w in self.weights.values())

    def evaluate(self, split: str):
        def run() -> dict[str, Scores]:
            return {t: score(self.model, docs, self.plan.batch_size) for t, docs in self.docs[split].items()}
        return run

    def test_rows(self) -> pd.DataFrame:
        matrices = matrix_table(self.tests, self.checkpoints, self.roles).assign(row_type="matrix")
        edges = edge_tests(self.tests, self.checkpoints, self.roles, self.adapter.d_model, self.units)
        names = list(self.weights)
        evidence = np.concatenate([-np.log10(self.tests.combined(n)).ravel() for n in names])
        magnitude = np.concatenate([np.abs(self.weights[n]).ravel() for n in names])
        # how far the criterion's ranking of entries is from plain magnitude ranking
        ranking = pd.DataFrame([{"row_type": "ranking",
                                 "spearman_magnitude": float(stats.spearmanr(evidence, magnitude).statistic)}])
        return pd.concat([matrices, edges.assign(row_type="edges"), ranking], ignore_index=True)

    @property
    def annealing(self) -> Annealing:
        if self._annealing is None:
            combined = {n: self.tests.combined(n) for n in self.weights}
            self._annealing = anneal(self.adapter, combined, self.weights, list(self.plan.thresholds),
                                     self.evaluate("dev"), self.plan.tolerance)
        return self._annealing

    def states(self) -> dict[str, Masks]:
        """The chosen masks: annealing's accepted step, the indistinguishable set, and their magnitude twins."""
        chosen = self.annealing.accepted("anneal")
        combined = {n: self.tests.combined(n) for n in self.weights}
        removed = threshold_masks(combined, chosen.threshold) if chosen else {}
        indist = {n: self.tests.indistinguishable(n) for n in self.weights}
        return {
            "dense": {},
            "anneal": removed,
            "magnitude": magnitude_masks(self.weights, n_removed(removed)) if removed else {},
            "indist": indist,
            "indist-magnitude": magnitude_masks(self.weights, n_removed(indist)),
        }

    def anneal_rows(self) -> pd.DataFrame:
        result = self.annealing
        accepted = {m: result.accepted(m) for m in ("anneal", "magnitude")}
        rows = _score_rows(result.dense, row_type="curve", method="dense", split="dev", step=-1,
                           threshold=np.nan, n_removed=0, sparsity=0.0, accepted=False)
        for step in result.steps:
            rows += _score_rows(step.scores, row_type="curve", method=step.method, split="dev", step=step.step,
                                threshold=step.threshold, n_removed=step.n_removed, sparsity=step.sparsity,
                                accepted=step is accepted[step.method])
        states = self.states()
        twins = {"anneal": "magnitude", "magnitude": "anneal",
                 "indist": "indist-magnitude", "indist-magnitude": "indist"}
        for method, masks in states.items():
            count = n_removed(masks) if masks else 0
            overlap = _jaccard(masks, states[twins[method]]) if method in twins else np.nan
            for split in SPLITS:
                with masked(self.adapter, masks):
                    scores = self.evaluate(split)()
                rows += _score_rows(scores, row_type="state", method=method, split=split, step=-1, threshold=np.nan,
                                    n_removed=count, sparsity=count / self.total, accepted=True,
                                    overlap_with_twin=overlap)
        return pd.DataFrame(rows)

    def component_rows(self) -> pd.DataFrame:
        nodes = NodeIndex.build(self.adapter.d_model, self.units)
        shapes = {n: w.shape for n, w in self.weights.items()}
        frames = []
        for method, masks in self.states().items():
            if method not in ("dense", "anneal", "indist"):
                continue
            kept = {n: ~masks[n] if masks else np.ones(shapes[n], dtype=bool) for n in shapes}
            graph = component_table(self.roles, kept, nodes, self.adapter.n_layers)
            with masked(self.adapter, masks):
                reference, apart, n_parts = substructure_logits(self.adapter, self.roles, kept, nodes, self._contexts())
                blocks = {n: matrix_blocks(weight_in_out(m)) for n, m in self.adapter.linear_modules().items()}
            gap = float(max((a - b).abs().max().item() for a, b in zip(reference, apart)))
            scale = float(max(a.abs().max().item() for a in reference))
            # how often the components run apart still predict the masked model's next token
            agree = float(np.mean(np.concatenate([(a.argmax(-1) == b.argmax(-1)).numpy()
                                                  for a, b in zip(reference, apart)])))
            check = {"method": method, "logits_max_abs_diff": gap, "logits_max_abs": scale,
                     "n_substructures": n_parts, "argmax_agreement": agree}
            frames += [graph.assign(row_type="graph", **check),
                       block_table(blocks, self.roles, shapes).assign(row_type="blocks", **check)]
        frames.append(self._curve_components(nodes))
        return pd.concat(frames, ignore_index=True)

    def _curve_components(self, nodes: NodeIndex) -> pd.DataFrame:
        """Network components after every annealing step and its magnitude twin: when does structure split?"""
        combined = {n: self.tests.combined(n) for n in self.weights}
        every = np.arange(nodes.n_nodes)
        rows = []
        for step in self.annealing.steps:
            removed = (threshold_masks(combined, step.threshold) if step.method == "anneal"
                       else magnitude_masks(self.weights, step.n_removed))
            graph = dependency_graph(self.roles, {n: ~m for n, m in removed.items()}, nodes)
            rows.append({"row_type": "curve", "scope": "network", "layer": -1, "method": step.method, "step": step.step,
                         "sparsity": step.sparsity, **component_summary(graph, nodes, every)})
        return pd.DataFrame(rows)

    def _contexts(self) -> list[torch.Tensor]:
        """The first dev contexts of every task (1 x T ids each): where components run apart are compared."""
        device = next(self.model.parameters()).device
        return [torch.tensor([doc.context], device=device) for docs in self.docs["dev"].values()
                for doc in docs[: self.plan.decompose_docs]]


def run_grid(cfg: DictConfig, results: Path) -> dict[str, float]:
    """Compute every missing cell of the selected models; existing cells are skipped."""
    plan = Plan.from_cfg(cfg)

    def documents(task: str, split: str, tokenizer: object) -> list[Doc]:
        return task_docs(cfg, task, split, tokenizer).docs

    return run_plan(plan, results, documents)


def run_plan(plan: Plan, results: Path, documents: Documents) -> dict[str, float]:
    """The grid of a checked plan; ``documents`` is the data layer's (it alone reads the config)."""
    summary: dict[str, float] = {}
    job = f"fdr{plan.fdr:g}-tol{plan.tolerance:g}-"
    spec = plan.spec

    cells = CellGrid("structure", ROWS, results)
    # A cell's name starts with its kind and the settings it depends on, so that a job can find its own.
    prefixes = {"weibull": "weibull-", "tests": f"tests-fdr{plan.fdr:g}-", "anneal": f"anneal-{job}",
                "components": f"components-{job}"}

    nulls = plan.nulls
    for name in [*plan.models, *[n for n in nulls if n not in plan.models]]:  # Weibull of every model and null
        model, _ = zoo.load(name, plan.models_root, device="cpu")
        step = "step0" if name in nulls else "trained"
        cell = cells.plan(prefixes["weibull"], kind="weibull", digest=zoo.digest(model), step=step)
        if cells.done(cell):
            continue
        adapter = get_adapter(model)
        df = weibull_rows(model, adapter, matrix_roles(adapter), step)
        cells.write(cell, df.assign(model=name, digest=zoo.digest(model), kind="weibull", cell=cell.name))
        log.info("%s (%s): Weibull k median %.3f over %d matrices", name, step, df.k.median(), len(df))

    for name in plan.models:
        study = ModelStudy(plan, name, documents)
        refs = {"digest": study.digest, "null": study.null_digest, "drift_reference": study.drift_reference_digest}
        jobs = {
            "tests": (cells.plan(prefixes["tests"], kind="tests", **refs, fdr=plan.fdr), study.test_rows),
            "anneal": (cells.plan(prefixes["anneal"], kind="anneal", **refs, **spec), study.anneal_rows),
            "components": (cells.plan(prefixes["components"], kind="components", **refs, **spec), study.component_rows),
        }
        for kind, (cell, make) in jobs.items():
            if cells.done(cell):
                continue
            df = make()
            settings = {"fdr": plan.fdr} if kind == "tests" else {"fdr": plan.fdr, "tolerance": plan.tolerance}
            cells.write(cell, df.assign(**study.meta, **settings, kind=kind, cell=cell.name))
            if kind == "tests":
                m = df[df.row_type == "matrix"]
                frac = {test: float(np.average(m[f"frac_indist{test}"], weights=m.n))
                        for test in ("", "_value", "_drift")}
                summary.update({f"{name}/indistinguishable{test}": f for test, f in frac.items()})
                log.info("%s: %.1f%% of projection entries indistinguishable from initialisation (value test against "
                         "%s: %.1f%%; drift test against %s: %.1f%%)", name, 100 * frac[""], study.null_name,
                         100 * frac["_value"], study.drift_reference or "none", 100 * frac["_drift"])
            elif kind == "anneal":
                chosen = study.annealing.accepted("anneal")
                summary[f"{name}/anneal_sparsity"] = chosen.sparsity if chosen else 0.0
                log.info("%s: annealing keeps dev loss within %g up to sparsity %.3f", name, plan.tolerance,
                         chosen.sparsity if chosen else 0.0)
            else:
                gap = float(df.logits_max_abs_diff.max())
                summary[f"{name}/substructures_max_abs_logit_diff"] = gap
                log.info("%s: components run apart vs masked logits differ by at most %.3g", name, gap)
    counts = dict(cells.counts)
    if plan.full_grid:
        # The full grid prunes within its settings: Weibull cells depend on a model only, tests cells on the
        # FDR level, annealing and component cells on FDR and tolerance; another `-m tolerance=...` job's
        # cells are left alone.
        counts["pruned"] = cells.prune(*(f"{prefix}*" for prefix in prefixes.values()))
    return {**counts, **summary}
