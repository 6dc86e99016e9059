"""Multiple-choice requests taken from lm-eval's own task definitions, tokenised as lm-eval does."""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from paramscope.data.splits import check_split, split_indices
from paramscope.errors import StudyError
from paramscope.evaluation.documents import ContinuationDoc, Doc, MultiContextDoc, TaskDocs
from paramscope.evaluation.local_data import task_source

log = logging.getLogger(__name__)


def task_manager(include_path: str | Path | None):
    from lm_eval.tasks import TaskManager

    if include_path is None:
        return _installed_task_manager()
    return TaskManager(include_path=str(include_path), include_defaults=False)


@lru_cache(maxsize=1)
def _installed_task_manager():
    """lm-eval's own tasks, indexed once per process (seconds each time; the installed package cannot change)."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def load_lm_eval_task(name: str, include_path: str | Path | None = None, data: str | None = None):
    """The lm-eval Task object for ``name`` (synthetic tasks come from ``include_path``; ``data``, from
    `tasks.task_data`, reads a benchmark's documents from local files)."""
    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its per-task chatter drowns our logs
    tm = task_manager(include_path)
    if name not in tm.all_tasks:
        valid = sorted(t for t in tm.all_tasks if include_path is None or t.startswith("ps_"))
        raise StudyError(f"unknown lm-eval task '{name}'; valid: {', '.join(valid[:40])}")
    try:
        with task_source(tm, name, data) as spec:
            return tm.load([spec])["tasks"][name]
    except (OSError, KeyError) as err:  # no hub (ConnectionError), missing local files, a split they lack
        where = "its local files (task_data)" if data else "the hub"
        raise StudyError(f"cannot load the documents of task '{name}' from {where}: {str(err).splitlines()[0]}; "
                         f"offline, give task_data.{name} (local files with the hub dataset's fields)") from None


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval HFLM's ``_encode_pair``: trailing context spaces move to the continuation, and the
    continuation's tokens are what the whole string adds beyond the context's tokens."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer.encode(context + continuation, add_special_tokens=False)
    ctx = tokenizer.encode(context, add_special_tokens=False)
    if not ctx:  # lm-eval scores an empty context after the end-of-text token
        ctx = [tokenizer.eos_token_id]
        whole = ctx + whole
    return ctx, whole[len(ctx) :]


def eval_doc_count(task) -> int:
    docs = task.test_docs() if task.has_test_docs() else task.validation_docs()
    return len(docs)


def instances_by_doc(task) -> list[tuple[int, list]]:
    """A built lm-eval task's requests grouped per document (by doc id), each group in choice order."""
    by_doc: dict[int, list] = {}
    for inst in task.instances:
        by_doc.setdefault(inst.doc_id, []).append(inst)
    return [(doc_id, sorted(by_doc[doc_id], key=lambda i: i.idx)) for doc_id in sorted(by_doc)]


def build_docs(
    task_name: str,
    tokenizer,
    split: str,
    seed: int,
    dev_fraction: float = 0.5,
    include_path: str | Path | None = None,
    limit: int | None = None,
    data: str | None = None,
) -> TaskDocs:
    """The ``split`` half of a task's evaluation documents, with lm-eval's exact request strings."""
    check_split(split)
    task = load_lm_eval_task(task_name, include_path, data)
    if task.OUTPUT_TYPE not in ("multiple_choice", "loglikelihood"):
        raise StudyError(f"task '{task_name}' has output type {task.OUTPUT_TYPE}; "
                         "supported: multiple_choice, loglikelihood")
    indices = split_indices(eval_doc_count(task), seed, dev_fraction)[split]
    if limit is not None:
        indices = indices[:limit]
    task.build_all_requests(samples=indices, rank=0, world_size=1)
    if task.OUTPUT_TYPE == "loglikelihood":  # one continuation per document (e.g. lambada_openai)
        return TaskDocs(task=task_name, split=split, docs=continuation_docs(task, tokenizer, indices))
    if task.multiple_input:  # one context per choice, one continuation (e.g. winogrande)
        return TaskDocs(task=task_name, split=split, docs=multiple_input_docs(task, tokenizer, indices))
    docs = []
    for doc_id, insts in instances_by_doc(task):
        doc = insts[0].doc
        choices_text = task.doc_to_choice(doc)
        gold = task.doc_to_target(doc)
        gold = choices_text.index(gold) if isinstance(gold, str) else int(gold)
        pairs = [encode_pair(tokenizer, *inst.args) for inst in insts]
        context = pairs[0][0]
        if any(ctx != context for ctx, _ in pairs):
            raise StudyError(f"task '{task_name}' doc {doc_id}: choices do not share one context")
        docs.append(
            Doc(
                doc_id=indices[doc_id],  # lm-eval numbers sampled docs 0..n-1
                context=tuple(context),
                choices=tuple(tuple(c) for _, c in pairs),
                choice_chars=tuple(len(c) for c in choices_text),
                gold=gold,
            )
        )
    return TaskDocs(task=task_name, split=split, docs=tuple(docs))


def multiple_input_docs(task, tokenizer, indices: list[int]) -> tuple[MultiContextDoc, ...]:
    """Documents of an lm-eval `multiple_input` task whose requests are built (``task.instances``);
    the gold index is what lm-eval uses there, ``doc_to_text(doc)``."""
    docs = []
    for doc_id, insts in instances_by_doc(task):
        pairs = [encode_pair(tokenizer, *inst.args) for inst in insts]
        contexts = tuple(tuple(ctx) for ctx, _ in pairs)
        docs.append(MultiContextDoc(
            doc_id=indices[doc_id], context=contexts[0], choices=tuple(tuple(c) for _, c in pairs),
            choice_chars=tuple(len(c) for c in task.doc_to_choice(insts[0].doc)),
            gold=int(task.doc_to_text(insts[0].doc)), contexts=contexts,
        ))
    return tuple(docs)


def continuation_docs(task, tokenizer, indices: list[int]) -> tuple[ContinuationDoc, ...]:
    """Documents of an lm-eval loglikelihood task whose requests are built (``task.instances``)."""
    docs = []
    for inst in sorted(task.instances, key=lambda i: i.doc_id):
        context, target = inst.args
        ctx, cont = encode_pair(tokenizer, context, target)
        docs.append(ContinuationDoc(doc_id=indices[inst.doc_id], context=tuple(ctx), choices=(tuple(cont),),
                                    choice_chars=(len(target),), gold=0))
    return tuple(docs)
