"""The synthetic tasks as lm-eval tasks: YAML definitions with local JSONL data files.

Writing them as ordinary lm-eval tasks means prompts, choices and metrics come from the harness, and
``lm_eval.simple_evaluate`` can score exactly the documents our own scorer scores.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

from paramscope.data.synthetic import Item

TASK_PREFIX = "ps_"
EVAL_SPLIT = "eval"

# lm-eval resolves ``!function loader.load`` relative to the YAML, so the task folder carries this
# small module, which finds the data beside itself wherever the folder is moved.
LOADER_SOURCE = """\
from pathlib import Path

from paramscope.data.lm_eval_tasks import load_jsonl_task


def load(data_dir, **_):
    return load_jsonl_task(Path(__file__).parent / data_dir)
"""

TASK_YAML = """\
task: {name}
custom_dataset: !function loader.load
dataset_kwargs:
  data_dir: {data_dir}
test_split: {split}
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: gold
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def lm_eval_name(task: str) -> str:
    return f"{TASK_PREFIX}{task}"


def load_jsonl_task(folder: Path) -> datasets.DatasetDict:
    """Load a task's JSONL documents (no network, no datasets cache)."""
    with open(folder / f"{EVAL_SPLIT}.jsonl") as f:
        records = [json.loads(line) for line in f]
    return datasets.DatasetDict({EVAL_SPLIT: datasets.Dataset.from_list(records)})


def write_task(root: Path, task: str, items: list[Item]) -> None:
    """Write one task's YAML and documents under ``root`` (the lm-eval include path)."""
    folder = root / task
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{EVAL_SPLIT}.jsonl", "w") as f:
        for i, item in enumerate(items):
            f.write(json.dumps(item.as_doc(i)) + "\n")
    (root / "loader.py").write_text(LOADER_SOURCE)
    (root / f"{lm_eval_name(task)}.yaml").write_text(
        TASK_YAML.format(name=lm_eval_name(task), data_dir=task, split=EVAL_SPLIT)
    )
