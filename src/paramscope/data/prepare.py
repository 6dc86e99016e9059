"""Build everything the study reads as data: tokenizer, lm-eval task folder, training mixtures."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from paramscope.data.lm_eval_tasks import write_task
from paramscope.data.synthetic import ARITH_OPS, TASKS, Suite, SuiteSpec
from paramscope.data.tokenizer import word_level_tokenizer
from paramscope.errors import check_choice
from paramscope.store import atomic_dir


def suite_from_config(cfg: DictConfig) -> Suite:
    fields = {k: v for k, v in OmegaConf.to_container(cfg.suite, resolve=True).items() if k != "dev_fraction"}
    return Suite(SuiteSpec(**fields))


def check_tasks(tasks: list[str], valid: tuple[str, ...] = TASKS) -> None:
    for task in tasks:
        check_choice("task", task, valid)


def prepare(cfg: DictConfig, out: Path) -> dict:
    """Write the suite into ``out`` atomically; returns a summary for logging.

    A profile without a synthetic suite prepares the tokenizer and the pinned corpus instead (paper), or
    the BIG-bench tasks of a pinned archive (real).
    """
    if cfg.get("bigbench"):
        return prepare_bigbench(cfg, out)
    if cfg.get("suite") is None:
        from paramscope.models.corpus import prepare_corpus

        return prepare_corpus(cfg, out)
    check_tasks(list(cfg.tasks))
    suite = suite_from_config(cfg)
    summary: dict = {"vocab_size": len(suite.vocabulary())}
    with atomic_dir(out) as tmp:
        word_level_tokenizer(suite.vocabulary()).save_pretrained(tmp / "tokenizer")
        for task in cfg.tasks:
            items = suite.eval_items(task)
            write_task(tmp / "tasks", task, items)
            summary[f"n_eval/{task}"] = len(items)
        (tmp / "train").mkdir()
        for name, ts in cfg.training_sets.items():
            seqs = suite.training_sequences(
                ts.n_sequences, dict(ts.mix), ts.items_per_sequence, seed=f"{cfg.seed}-{name}",
                kb_shift=ts.get("kb_shift", 0.0),
                arith_ops=tuple(ts.get("arith_ops", ARITH_OPS)),
            )
            (tmp / "train" / f"{name}.txt").write_text("\n".join(seqs) + "\n")
            summary[f"n_train/{name}"] = len(seqs)
        (tmp / "manifest.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    return summary


def prepare_bigbench(cfg: DictConfig, out: Path) -> dict:
    """The candidate BIG-bench tasks, read out of the pinned `bigbench` sdist into `<out>/bigbench/`."""
    from paramscope import registry
    from paramscope.data.bigbench import write_tasks

    bb = cfg.bigbench
    dist = registry.fetch_distribution(bb.package.name, str(bb.package.version), bb.package.sha256)
    with atomic_dir(out) as tmp, registry.Archive(dist) as archive:
        counts = write_tasks(archive, list(bb.candidates), tmp / "bigbench", bb.get("max_docs"), int(cfg.seed))
        summary = {"source": {"package": bb.package.name, "version": str(bb.package.version),
                              "distribution": dist.name, "sha256": bb.package.sha256},
                   "documents": counts, "max_docs": bb.get("max_docs"), "seed": int(cfg.seed)}
        (tmp / "manifest.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    return {f"n_docs/{task}": n for task, n in counts.items()}
