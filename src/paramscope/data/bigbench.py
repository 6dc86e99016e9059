"""BIG-bench JSON tasks from the `bigbench` source distribution, as the documents lm-eval's bigbench tasks read.

lm-eval's `bigbench_<task>_multiple_choice` YAMLs read the hub dataset `hails/bigbench` (`<task>_zero_shot`),
which BIG-bench's own code made: `JsonTask` formats each example (`default_format_fn`: the task's input
prefix, the choices appended in a seeded order, the output prefix) and the bridge for Hugging Face datasets
writes `inputs` (task prefix + formatted input), `targets`, `multiple_choice_targets` and
`multiple_choice_scores`, which the `datasets` builder for BIG-bench stores with surrounding whitespace
stripped (so a prompt ends "A:", and lm-eval's target delimiter adds the one space). This module repeats that
formatting from the task files themselves, so lm-eval's
templates and metrics apply to documents built offline from a pinned archive.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from paramscope.errors import StudyError

TASKS_DIR = "bigbench/benchmark_tasks"
FORMAT_SEED = 42  # JsonTask's default random_seed: the order in which choices are appended to the input
# JsonTask's defaults where a task file does not set its own
INPUT_PREFIX, OUTPUT_PREFIX, CHOICE_PREFIX = "\nQ: ", "\nA: ", "\n  choice: "


def lm_eval_name(task: str) -> str:
    return f"bigbench_{task}_multiple_choice"


def format_example(example: dict, task: dict) -> dict:
    """BIG-bench's `default_format_fn` for one example, zero-shot, into the Hugging Face dataset's fields."""
    scores = example.get("target_scores") or {}
    text = example["input"]
    if scores and task.get("append_choices_to_input", True):
        rng = np.random.RandomState(seed=FORMAT_SEED)  # a fresh generator per example, as BIG-bench does
        choice_prefix = task.get("choice_prefix", CHOICE_PREFIX)
        text = text + choice_prefix + choice_prefix.join(rng.permutation(sorted(scores)))
    if "target" in example:
        target = example["target"]
    else:  # the first choice with the highest score
        best = max(scores.values())
        target = next(k for k, v in scores.items() if v == best)
    text = task.get("example_input_prefix", INPUT_PREFIX) + text + task.get("example_output_prefix", OUTPUT_PREFIX)
    return {"inputs": (str(task.get("task_prefix", "")) + text).strip(),
            "targets": [t.strip() for t in (target if isinstance(target, list) else [target])],
            "multiple_choice_targets": [c.strip() for c in scores], "multiple_choice_scores": list(scores.values())}


def distinct(examples: list[dict]) -> list[dict]:
    """JsonTask drops repeated examples (identical JSON), keeping the first of each."""
    seen, kept = set(), []
    for example in examples:
        key = json.dumps(example)
        if key not in seen:
            seen.add(key)
            kept.append(example)
    return kept


def lm_eval_yaml(task: str) -> Path:
    """lm-eval's own YAML for the task; a task lm-eval does not define has no template to be scored by."""
    import lm_eval

    path = Path(lm_eval.__file__).parent / "tasks" / "bigbench" / "multiple_choice" / f"{task}.yaml"
    if not path.is_file():
        valid = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise StudyError(f"lm-eval has no multiple-choice task for BIG-bench '{task}'; valid: {', '.join(valid)}")
    return path


def gold_check(task: str):
    """A test that lm-eval's template can find the gold choice of a document (template_a looks the target
    up among the choices; template_b takes the choice scored 1)."""
    from paramscope.evaluation.local_data import yaml_fields

    target = str(yaml_fields(lm_eval_yaml(task)).get("doc_to_target"))
    if "targets[0]" in target:
        return lambda doc: doc["targets"][0] in doc["multiple_choice_targets"]
    if "multiple_choice_scores.index(1)" in target:
        return lambda doc: 1 in doc["multiple_choice_scores"]
    raise StudyError(f"lm-eval's bigbench_{task}_multiple_choice has a doc_to_target ({target}) this converter "
                     "does not know")


def task_files(names: list[str], task: str) -> list[str]:
    """The task's JSON file, or its subtasks' in JsonTask's order (sorted paths), among archive ``names``."""
    top = f"{TASKS_DIR}/{task}/task.json"
    if top not in names:
        valid = sorted({n.split("/")[2] for n in names if n.startswith(TASKS_DIR + "/") and
                        n.endswith("/task.json") and n.count("/") == 3})
        raise StudyError(f"BIG-bench task '{task}' is not in the archive; valid: {', '.join(valid)}")
    subtasks = sorted(n for n in names if n.startswith(f"{TASKS_DIR}/{task}/") and n.endswith("/task.json")
                      and n.count("/") == 4)
    return [top, *subtasks]


def task_docs(task: str, files: dict[str, bytes]) -> list[dict]:
    """One task's documents from its JSON ``files`` (the task's first, then its subtasks')."""
    top, *subtasks = files
    data = json.loads(files[top])
    parts = [data] if "examples" in data else [json.loads(files[n]) for n in subtasks]
    docs = [format_example(ex, part) for part in parts for ex in distinct(part.get("examples", []))]
    docs = [d for d in docs if d["multiple_choice_targets"]]  # lm-eval's filter_multiple_choice
    if not docs:
        raise StudyError(f"BIG-bench task '{task}' has no multiple-choice examples (no target_scores)")
    scorable = gold_check(task)
    if not all(scorable(d) for d in docs):
        raise StudyError(f"BIG-bench task '{task}': some documents have no gold choice that lm-eval's template "
                         "can find")
    return docs


def subsample(docs: list[dict], max_docs: int | None, seed: int) -> list[dict]:
    """At most ``max_docs`` documents, drawn without replacement by ``seed`` and kept in file order."""
    if not max_docs or len(docs) <= max_docs:
        return docs
    keep = np.sort(np.random.default_rng(seed).choice(len(docs), size=max_docs, replace=False))
    return [docs[i] for i in keep]


def write_tasks(archive, tasks: list[str], out: Path, max_docs: int | None, seed: int) -> dict[str, int]:
    """`<out>/<task>.jsonl` for each task (the `default` split lm-eval's YAML evaluates); documents per task."""
    for task in tasks:
        lm_eval_yaml(task)  # an unknown task fails before the archive is read
    wanted = {task: task_files(archive.names, task) for task in tasks}
    needed = {n for names in wanted.values() for n in names}
    contents = archive.read_all(needed.__contains__)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for task in tasks:
        docs = subsample(task_docs(task, {n: contents[n] for n in wanted[task]}), max_docs, seed)
        with open(out / f"{task}.jsonl", "w") as f:
            for i, doc in enumerate(docs):
                f.write(json.dumps({"idx": i, **doc}, ensure_ascii=False) + "\n")
        counts[task] = len(docs)
    return counts
