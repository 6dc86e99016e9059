"""The verification loop for tasks whose answers can be checked, without the gold answer.

For the synthetic arithmetic task ``mod a opK`` (answer (a +/- K) mod p) a candidate answer c is
checkable from the question alone: undoing the operation must give a back. The loop

1. generates candidates: the ``n_candidates`` most likely choices under VPS not yet tried for the document;
2. scores each candidate with a verifier of two objectives: the model's own confidence in it
   (log-probability among the document's choices) plus a round-trip check, the unmodified model's
   log-probability of a given the inverse question built from c (always an addition, ``mod c addK'``);
3. refines iteratively: documents whose best candidate fails the round trip (the inverse question's
   most likely answer is not a) get a new round with gamma doubled; the answer is the best-scoring
   candidate over all rounds.

The model only ever sees blinded documents (gold set to 0); correctness is computed outside the loop.
The same loop with gamma = 0 is the control with the same candidate budget: its rounds go down the
unmodified model's own ranking, so the difference between the two is what VPS adds to the verifier.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import numpy as np
from scipy.special import log_softmax

from paramscope.evaluation.documents import Doc
from paramscope.evaluation.requests import encode_pair
from paramscope.evaluation.scorer import score
from paramscope.vps.wrapper import VPSConfig, sharpen

ARITH = re.compile(r"mod\s+n(\d+)\s+(add|sub)(\d+)")
NUMBER = re.compile(r"n(\d+)")


@dataclass(frozen=True)
class LoopSettings:
    rounds: int = 3
    n_candidates: int = 2
    weight_confidence: float = 1.0
    weight_roundtrip: float = 1.0


@dataclass
class LoopResult:
    prediction: np.ndarray  # chosen choice index per document
    rounds_used: np.ndarray  # rounds each document went through
    verified: np.ndarray  # 1 where the chosen answer passed the round trip


def inverse_question(question: str, candidate: int, modulus: int) -> tuple[str, int]:
    """(inverse question, the answer it must give back): 'mod n3 add2' with candidate 5 -> ('mod n5 add5', 3)."""
    match = ARITH.search(question)
    if match is None:
        raise ValueError(f"not an arithmetic question: '{question}'")
    a, op, k = int(match[1]), match[2], int(match[3])
    back = (modulus - k) % modulus if op == "add" else k
    return f"mod n{candidate} add{back}", a


class RoundTripVerifier:
    """log p_base(a | inverse question of c), normalised over all p numbers."""

    def __init__(self, model, tokenizer, modulus: int, batch_size: int) -> None:
        self.model, self.tokenizer, self.modulus, self.batch_size = model, tokenizer, modulus, batch_size

    def _doc(self, question: str) -> Doc:
        pairs = [encode_pair(self.tokenizer, question, f" n{i}") for i in range(self.modulus)]
        return Doc(-1, tuple(pairs[0][0]), tuple(tuple(c) for _, c in pairs), (2,) * self.modulus, 0)

    def __call__(self, questions: list[str], candidates: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(round-trip log-probability, passed) per (question, candidate)."""
        built = [inverse_question(q, c, self.modulus) for q, c in zip(questions, candidates)]
        lls = score(self.model, [self._doc(q) for q, _ in built], self.batch_size).lls
        logp = np.array([log_softmax(ll)[a] for ll, (_, a) in zip(lls, built)])
        passed = np.array([int(np.argmax(ll) == a) for ll, (_, a) in zip(lls, built)])
        return logp, passed


def verification_loop(model, tokenizer, docs: list[Doc], config: VPSConfig, modulus: int,
                      settings: LoopSettings, batch_size: int) -> LoopResult:
    blind = [dataclasses.replace(d, gold=0) for d in docs]  # nothing below can read a gold label
    questions = [tokenizer.decode(list(d.context)) for d in blind]
    choice_numbers = [[int(NUMBER.search(tokenizer.decode(list(c)))[1]) for c in d.choices] for d in blind]
    verifier = RoundTripVerifier(model, tokenizer, modulus, batch_size)
    best_score = np.full(len(blind), -np.inf)
    prediction = np.zeros(len(blind), dtype=np.int64)
    verified = np.zeros(len(blind), dtype=np.int8)
    rounds_used = np.zeros(len(blind), dtype=np.int64)
    pending = np.arange(len(blind))
    tried: list[set[int]] = [set() for _ in blind]
    for round_ in range(settings.rounds):
        if len(pending) == 0:
            break
        gamma = config.gamma * 2**round_
        with sharpen(model, dataclasses.replace(config, gamma=gamma)):
            lls = score(model, [blind[i] for i in pending], batch_size, share_context=False).lls
        rows, cands, conf = [], [], []
        for i, ll in zip(pending, lls):
            logp = log_softmax(ll)
            fresh = [int(j) for j in np.argsort(-logp, kind="stable") if int(j) not in tried[i]]
            for j in fresh[: settings.n_candidates]:
                tried[i].add(j)
                rows.append(i), cands.append(j), conf.append(logp[j])
        if not rows:
            break
        roundtrip, passed = verifier([questions[i] for i in rows], [choice_numbers[i][j] for i, j in zip(rows, cands)])
        total = settings.weight_confidence * np.array(conf) + settings.weight_roundtrip * roundtrip
        for i, j, s, ok in zip(rows, cands, total, passed):
            rounds_used[i] = round_ + 1
            if s > best_score[i]:
                best_score[i], prediction[i], verified[i] = s, j, ok
        pending = np.array([i for i in pending if not verified[i]], dtype=np.int64)
    return LoopResult(prediction, rounds_used, verified)
