"""Helpers the tests share: Hydra configs composed as the stages compose them, a clean checkout of the
repository, and the smoke suite's test documents. The stand-in models and benchmarks are `helpers.standins`
and `helpers.registry_standins`."""

import shutil
import subprocess
from pathlib import Path

from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


def clean_checkout(repo: Path) -> Path:
    """Copy tracked and new files (nothing ignored: no data, models or results) into `repo`."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split("\0")
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, repo / rel)
    return repo


def make_cfg(config_name: str, overrides: list[str] | None = None):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides or [])


def smoke_test_docs(data: Path, limit: int) -> tuple[tuple, int]:
    """The first `limit` test documents of every synthetic task, and the tokenizer's vocabulary size."""
    from transformers import AutoTokenizer

    from paramscope.data.lm_eval_tasks import lm_eval_name
    from paramscope.data.synthetic import TASKS
    from paramscope.evaluation.requests import build_docs

    tok = AutoTokenizer.from_pretrained(data / "tokenizer")
    found = []
    for task in TASKS:
        found += build_docs(lm_eval_name(task), tok, "test", seed=0, include_path=data / "tasks", limit=limit).docs
    return tuple(found), len(tok)


def eval_rows(model: str, task: str, split: str, doc_ids, correct, **extra) -> dict:
    """One evaluate-stage row with every column its RowSchema declares (readers check it), the outcomes
    given per document; ``extra`` adds or replaces columns."""
    correct = [int(c) for c in correct]
    acc = sum(correct) / len(correct)
    return {"model": model, "digest": f"d-{model}", "task": task, "split": split, "metric": "acc",
            "n": len(correct), "acc": acc, "acc_plain": acc, "loss": 1.0, "ex_doc_ids": list(doc_ids),
            "ex_correct": correct, "ex_correct_plain": correct, **extra}
