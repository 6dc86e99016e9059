"""A benchmark's documents from local files instead of the hub (offline or air-gapped machines).

lm-eval's own YAML for the task is included as it is (templates, preprocessing, metrics); only its dataset
is replaced, so that `datasets` reads the local files split by split. The split lm-eval evaluates (test, or
validation where the YAML has none) must be among the files: the documents stay the benchmark's own."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import yaml

from paramscope.errors import StudyError

FORMATS = ("json", "parquet", "csv")  # `datasets` builders for local files
SPLIT_KEYS = ("training_split", "validation_split", "test_split")


class _FieldsLoader(yaml.SafeLoader):
    """Reads a task YAML's plain fields; tags such as `!function` (code) read as None."""


_FieldsLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def yaml_fields(path: Path) -> dict:
    """A task YAML's fields, with the files it `include`s merged beneath them."""
    fields = yaml.load(path.read_text(), Loader=_FieldsLoader) or {}
    parent = fields.pop("include", None)
    return {**yaml_fields((path.parent / parent).resolve()), **fields} if parent else fields


def data_spec(task: str, fmt: str, files: dict[str, str]) -> str:
    """The canonical (hashable, cacheable) form of `task_data.<task>`, with absolute paths."""
    if fmt not in FORMATS:
        raise StudyError(f"task_data.{task}.format '{fmt}' is not supported; valid: {', '.join(FORMATS)}")
    if not files:
        raise StudyError(f"task_data.{task} names no files; give files: {{<split>: <path>}}")
    return json.dumps({"format": fmt, "files": {str(s): str(Path(p).resolve()) for s, p in files.items()}},
                      sort_keys=True)


@contextmanager
def local_task(manager, name: str, data: str) -> Iterator[str]:
    """The path of a task YAML that includes lm-eval's task `name`, its dataset read from local files."""
    spec = json.loads(data)
    yaml_path = getattr(manager.task_index.get(name), "yaml_path", None)
    if yaml_path is None:
        raise StudyError(f"task '{name}' has no lm-eval YAML to read local files into; task_data needs one")
    fields = yaml_fields(Path(yaml_path))
    evaluated = fields.get("test_split") or fields.get("validation_split")
    if evaluated not in spec["files"]:
        raise StudyError(f"task_data.{name}.files must give the '{evaluated}' split, the one lm-eval's {name} "
                         f"evaluates; given: {', '.join(spec['files'])}")
    derived = {"include": str(yaml_path), "task": name, "dataset_path": spec["format"], "dataset_name": None,
               "dataset_kwargs": {"data_files": spec["files"]}}
    derived.update({key: None for key in SPLIT_KEYS if fields.get(key) not in spec["files"]})  # no file, no split
    with tempfile.TemporaryDirectory(prefix="paramscope-task-") as folder:
        path = Path(folder) / f"{name}.yaml"
        path.write_text(yaml.safe_dump(derived))
        yield str(path)


def task_source(manager, name: str, data: str | None):
    """What to hand lm-eval for `name`: its registered name, or (a context for) a local-files YAML."""
    return local_task(manager, name, data) if data else nullcontext(name)
