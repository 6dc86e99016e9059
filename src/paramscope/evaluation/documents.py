"""The evaluation layer's types: documents as token ids and their scores. They import nothing from the
rest of the package, so every module that builds, scores or ablates documents can share them.

Three kinds of document, as lm-eval's output types: `Doc` (multiple choice, one context shared by every
choice), `MultiContextDoc` (multiple_input: one context per choice, e.g. winogrande) and `ContinuationDoc`
(loglikelihood: one continuation, e.g. lambada_openai).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# What a multiple-choice task can be reported on: the argmax of the choices' log-likelihoods, or of
# their log-likelihoods per character (lm-eval's acc_norm).
METRICS: tuple[str, ...] = ("acc", "acc_norm")


@dataclass(frozen=True)
class Doc:
    """One document: a context and its candidate continuations, as token ids."""

    doc_id: int
    context: tuple[int, ...]
    choices: tuple[tuple[int, ...], ...]
    choice_chars: tuple[int, ...]  # character lengths, for lm-eval's acc_norm
    gold: int
    # The metric the task is reported on (`acc`, or `acc_norm` where the field reports that): it decides
    # which choice counts as the model's answer. Keyword-only, so subclasses may add plain fields.
    metric: str = field(default="acc", kw_only=True)


@dataclass(frozen=True)
class ContinuationDoc(Doc):
    """A loglikelihood request: ``choices`` holds the one continuation, ``gold`` is 0."""


@dataclass(frozen=True)
class MultiContextDoc(Doc):
    """A multiple-choice document with one context per choice (lm-eval `multiple_input`): choice i is
    the continuation ``choices[i]`` after ``contexts[i]``; ``context`` is the first of them."""

    contexts: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class TaskDocs:
    task: str  # lm-eval task name
    split: str
    docs: tuple[Doc, ...]

    @property
    def doc_ids(self) -> list[int]:
        return [d.doc_id for d in self.docs]


@dataclass
class Scores:
    """Per-document results, aligned with the docs that were scored."""

    doc_ids: np.ndarray
    lls: list[np.ndarray]  # log-likelihood of each choice
    gold: np.ndarray
    choice_chars: list[np.ndarray]
    metric: str = field(default="acc", kw_only=True)  # the task's metric (`Doc.metric`)

    @property
    def correct(self) -> np.ndarray:
        """Per-document correctness under the task's metric: every delta, CI and choice builds on this."""
        return self.correct_norm if self.metric == "acc_norm" else self.correct_acc

    @property
    def correct_acc(self) -> np.ndarray:
        return np.array([int(np.argmax(ll) == g) for ll, g in zip(self.lls, self.gold)], dtype=np.int8)

    @property
    def correct_norm(self) -> np.ndarray:
        return np.array(
            [int(np.argmax(ll / n) == g) for ll, n, g in zip(self.lls, self.choice_chars, self.gold)],
            dtype=np.int8,
        )

    @property
    def gold_ll(self) -> np.ndarray:
        return np.array([ll[g] for ll, g in zip(self.lls, self.gold)], dtype=np.float64)

    def summary(self) -> dict[str, float]:
        return {
            "n": len(self.gold),
            "acc": float(self.correct.mean()),  # under the task's metric
            "acc_plain": float(self.correct_acc.mean()),
            "acc_norm": float(self.correct_norm.mean()),
            "loss": float(-self.gold_ll.mean()),
        }


@dataclass
class ContinuationScores(Scores):
    """Scores of loglikelihood documents: ``correct`` is lm-eval's is_greedy, not an argmax over choices."""

    greedy: np.ndarray  # 1 where every continuation token is the model's argmax

    @property
    def correct(self) -> np.ndarray:
        return self.greedy.astype(np.int8)

    @property
    def correct_acc(self) -> np.ndarray:
        return self.correct

    @property
    def correct_norm(self) -> np.ndarray:  # no normalised variant: one continuation per document
        return self.correct

    def summary(self) -> dict[str, float]:
        loss = float(-self.gold_ll.mean())
        acc = float(self.greedy.mean())
        return {"n": len(self.gold), "acc": acc, "acc_plain": acc, "acc_norm": acc, "loss": loss,
                "ppl": float(np.exp(loss))}


def docs_metric(docs: list[Doc] | tuple[Doc, ...]) -> str:
    """The one metric a set of documents is scored on (documents of one task share it)."""
    found = {d.metric for d in docs}
    if len(found) > 1:
        raise ValueError(f"documents of different metrics ({', '.join(sorted(found))}) cannot be scored together")
    return found.pop() if found else "acc"
