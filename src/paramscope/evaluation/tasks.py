"""From the study's task names to lm-eval tasks and their tokenised dev/test documents."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

from omegaconf import DictConfig

from paramscope.data.bigbench import lm_eval_name
from paramscope.errors import check_choice
from paramscope.evaluation.chosen import kept_tasks
from paramscope.evaluation.documents import METRICS, TaskDocs
from paramscope.evaluation.local_data import data_spec
from paramscope.evaluation.requests import build_docs


def lm_eval_task(cfg: DictConfig, task: str) -> tuple[str, str | None]:
    """(lm-eval task name, include path): synthetic tasks live in the prepared task folder; a BIG-bench
    task is lm-eval's `bigbench_<task>_multiple_choice`."""
    if cfg.get("suite") is not None:
        return f"ps_{task}", str(Path(cfg.paths.tasks))
    if task in bigbench_tasks(cfg):
        return lm_eval_name(task), None
    return task, None


def bigbench_tasks(cfg: DictConfig) -> list[str]:
    """The BIG-bench tasks the prepare stage converts from the pinned archive (the profile's candidates)."""
    return list((cfg.get("bigbench") or {}).get("candidates") or [])


def bigbench_file(cfg: DictConfig, task: str) -> Path:
    return Path(cfg.paths.data) / "bigbench" / f"{task}.jsonl"


def task_data(cfg: DictConfig, task: str) -> str | None:
    """`task_data.<task>` (local files in place of the hub dataset) in its canonical form; None for the hub
    or a synthetic task. A BIG-bench task reads the documents the prepare stage converted."""
    if task in bigbench_tasks(cfg):
        return data_spec(task, "json", {"default": str(bigbench_file(cfg, task))})
    spec = (cfg.get("task_data") or {}).get(task)
    return data_spec(task, spec.get("format", "json"), dict(spec.get("files") or {})) if spec else None


_DOCS: dict[tuple, TaskDocs] = {}


def tokenizer_fingerprint(tokenizer) -> str:
    """What decides how a tokenizer encodes: its whole serialised pipeline (vocabulary, merges,
    normalisation, special tokens). Models saved with identical tokenizers share one fingerprint, so a
    task's documents are built once per process, not once per model (lm-eval's templating costs seconds)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow tokenizer has no serialised form: identity is all we can trust
        return f"{type(tokenizer).__name__}:{id(tokenizer)}"
    text = backend.to_str() + repr(sorted(tokenizer.special_tokens_map.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def _folder_state(folder: str | None) -> tuple:
    """Names, sizes and modification times of a task folder's files: documents built before the
    folder was prepared again are not reused."""
    if folder is None:
        return ()
    return tuple((p.name, st.st_size, st.st_mtime_ns) for p in sorted(Path(folder).rglob("*"))
                 if p.is_file() and (st := p.stat()))


def _cached_docs(name: str, include: str | None, data: str | None, tokenizer, split: str, seed: int,
                 frac: float, metric: str) -> TaskDocs:
    key = (name, include, data, _folder_state(include), tokenizer_fingerprint(tokenizer), split, seed, frac, metric)
    if key not in _DOCS:
        built = build_docs(name, tokenizer, split, seed, frac, include, data=data)
        _DOCS[key] = replace(built, docs=tuple(replace(d, metric=metric) for d in built.docs))
    return _DOCS[key]


def task_metric(cfg: DictConfig, task: str) -> str:
    """The metric a task is reported on: `task_metrics.<task>` in the profile (the field reports
    arc_challenge and hellaswag on acc_norm), else plain accuracy."""
    metric = str((cfg.get("task_metrics") or {}).get(task, "acc"))
    check_choice(f"task_metrics.{task}", metric, METRICS)
    return metric


def dev_fraction(cfg: DictConfig) -> float:
    return float((cfg.get("suite") or {}).get("dev_fraction", cfg.get("dev_fraction", 0.5)))  # paper: suite null


def split_definition(cfg: DictConfig) -> dict[str, object]:
    """What decides which documents are dev and which are test, and which metric scores each task. Every
    result cell's key carries it: a changed split or metric must never reuse cells (or dev choices) made
    under the old one. Tasks on plain accuracy add nothing, so their cells keep their keys."""
    metrics = {str(t): str(m) for t, m in (cfg.get("task_metrics") or {}).items() if m != "acc"}
    return {"split_seed": int(cfg.seed), "dev_fraction": dev_fraction(cfg),
            **({"task_metrics": metrics} if metrics else {})}


def task_docs(cfg: DictConfig, task: str, split: str, tokenizer) -> TaskDocs:
    """The split's documents, built once per (task, split, tokenizer content) within a process."""
    name, include = lm_eval_task(cfg, task)
    return _cached_docs(name, include, task_data(cfg, task), tokenizer, split, int(cfg.seed), dev_fraction(cfg),
                        task_metric(cfg, task))


def atlas_tasks(cfg: DictConfig) -> list[str]:
    """The tasks the ablation atlas covers (`ablate.tasks`, else every task): the paper profile leaves out
    lambada_openai, whose one continuation has no choice to flip; the real profile takes those chosen on
    dev (`chosen`, the tasks report's kept list); what builds on the atlas follows it."""
    tasks = cfg.ablate.get("tasks")
    if tasks == "chosen":
        return kept_tasks(cfg)
    return list(tasks or cfg.tasks)
