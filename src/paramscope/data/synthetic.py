"""The embedded synthetic task suite: four tasks, four mechanisms, generated from one seed.

Every item is a (context, choices, gold) triple, written in a closed word-level vocabulary:

- ``induction``: copy a sequence seen earlier in the context (induction heads).
- ``kv``: retrieve the value bound to a key earlier in the context (in-context lookup).
- ``facts``: recall an attribute of an entity from a fixed knowledge base (parametric memory).
- ``arith``: modular addition and subtraction of two numbers (a memorised algorithmic table).

The training mixture is made of the same generators, several items packed per sequence. For the
in-context tasks no evaluation item ever occurs in training. For the parametric tasks the facts are by
construction what training teaches; an evaluation document is a lone item, which never occurs as a
training sequence because training sequences always pack several items.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from paramscope.errors import StudyError, check_choice

SEP = ";"
SPECIAL_TOKENS = ("<pad>", "<unk>", "<eos>")
TASKS = ("induction", "kv", "facts", "arith")
ARITH_OPS = ("add", "sub")
RELATIONS = {"lives": "c", "likes": "h"}  # relation -> prefix of its attribute words


@dataclass(frozen=True)
class SuiteSpec:
    """Sizes of the suite; profiles change these numbers, never the code."""

    seed: int = 0
    n_choices: int = 4
    n_symbols: int = 48
    induction_len: tuple[int, int] = (4, 8)  # min, max; a varying length defeats fixed-offset copying
    kv_pairs: int = 4
    n_keys: int = 24
    n_entities: int = 100
    n_attributes: int = 16
    modulus: int = 11
    n_eval: dict[str, int] = field(default_factory=lambda: {"induction": 300, "kv": 300})


@dataclass(frozen=True)
class Item:
    task: str
    context: str
    choices: tuple[str, ...]
    gold: int

    @property
    def text(self) -> str:
        """The item as it appears in training: context followed by the gold answer."""
        return f"{self.context} {self.choices[self.gold]}"

    def as_doc(self, doc_id: int) -> dict:
        return {"id": doc_id, "context": self.context, "choices": list(self.choices), "gold": self.gold}


class Suite:
    """Deterministic generators for every task of the suite, plus its vocabulary."""

    def __init__(self, spec: SuiteSpec):
        self.spec = spec
        self.symbols = [f"s{i}" for i in range(spec.n_symbols)]
        self.keys = [f"k{i}" for i in range(spec.n_keys)]
        self.entities = [f"e{i}" for i in range(spec.n_entities)]
        self.attributes = {rel: [f"{p}{i}" for i in range(spec.n_attributes)] for rel, p in RELATIONS.items()}
        self.numbers = [f"n{i}" for i in range(spec.modulus)]
        kb_rng = random.Random(f"kb-{spec.seed}")
        self.knowledge = {
            (e, rel): kb_rng.choice(self.attributes[rel]) for e in self.entities for rel in RELATIONS
        }

    # Vocabulary -----------------------------------------------------------------------------
    def vocabulary(self) -> list[str]:
        words = [*SPECIAL_TOKENS, SEP, ".", "ind", "kv", "fact", "mod", *RELATIONS]
        words += self.symbols + self.keys + self.entities + self.numbers
        words += [f"{op}{k}" for op in ARITH_OPS for k in range(self.spec.modulus)]
        for rel in RELATIONS:
            words += self.attributes[rel]
        assert len(set(words)) == len(words), "vocabulary words must be unique"
        return words

    # Item generators -------------------------------------------------------------------------
    def _choices(self, rng: random.Random, gold: str, pool: list[str]) -> tuple[tuple[str, ...], int]:
        distractors = rng.sample([w for w in pool if w != gold], self.spec.n_choices - 1)
        choices = [gold, *distractors]
        rng.shuffle(choices)
        return tuple(choices), choices.index(gold)

    def induction_item(self, rng: random.Random, to_end: bool = False) -> Item:
        """A random sequence, then a copy of it that starts at a random position: the next token is
        found only by matching the current token's earlier occurrence (the start is not the
        sequence's start, so 'earliest symbol not yet repeated' does not work). Training copies to
        the end (every copied token is a target); evaluation stops at a random point."""
        length = rng.randint(*self.spec.induction_len)
        seq = rng.sample(self.symbols, length)
        start = rng.randrange(0, length - 1)
        cut = length - 1 if to_end else rng.randrange(start + 1, length)
        context = " ".join(["ind", *seq, ".", *seq[start:cut]])
        # Distractors come from the same sequence, so only position (not presence) identifies the answer.
        choices, gold = self._choices(rng, seq[cut], seq)
        return Item("induction", context, choices, gold)

    def kv_item(self, rng: random.Random, n_queries: int = 1) -> Item:
        """Bindings, then queries drawn with replacement; all but the last are answered in the context.
        Training asks several queries per item (a dense retrieval signal; repeats defeat elimination),
        evaluation asks one."""
        keys = rng.sample(self.keys, self.spec.kv_pairs)
        values = rng.sample(self.symbols, self.spec.kv_pairs)
        order = [rng.randrange(self.spec.kv_pairs) for _ in range(n_queries)]
        answered = [w for i in order[:-1] for w in (keys[i], values[i])]
        q = order[-1]
        pairs = [w for kv in zip(keys, values) for w in kv]
        context = " ".join(["kv", *pairs, ".", *answered, keys[q]])
        # Distractors are the other values in context, so only the binding identifies the answer.
        choices, gold = self._choices(rng, values[q], values)
        return Item("kv", context, choices, gold)

    def shifted_knowledge(self, fraction: float) -> dict[tuple[str, str], str]:
        """The knowledge base with ``fraction`` of its facts reassigned (the world a later model
        generation is trained on); the same fraction always reassigns the same facts."""
        rng = random.Random(f"shift-{self.spec.seed}-{fraction}")
        shifted = dict(self.knowledge)
        for key in rng.sample(sorted(shifted), round(fraction * len(shifted))):
            shifted[key] = rng.choice([a for a in self.attributes[key[1]] if a != shifted[key]])
        return shifted

    def fact_items(self, kb_shift: float = 0.0) -> list[Item]:
        rng = random.Random(f"facts-{self.spec.seed}")
        knowledge = self.shifted_knowledge(kb_shift) if kb_shift else self.knowledge
        items = []
        for (entity, rel), attr in sorted(knowledge.items(), key=lambda kv: (int(kv[0][0][1:]), kv[0][1])):
            choices, gold = self._choices(rng, attr, self.attributes[rel])
            items.append(Item("facts", f"fact {entity} {rel}", choices, gold))
        return items

    def arith_items(self, ops: tuple[str, ...] = ARITH_OPS) -> list[Item]:
        """``mod a addK`` -> (a + K) mod p and ``mod a subK`` -> (a - K) mod p: the operator and its
        operand are one token, so the answer is a cyclic function of two adjacent tokens."""
        rng = random.Random(f"arith-{self.spec.seed}")
        p = self.spec.modulus
        items = []
        for op, sign in (("add", 1), ("sub", -1)):
            if op not in ops:
                continue
            for a in range(p):
                for k in range(p):
                    choices, gold = self._choices(rng, self.numbers[(a + sign * k) % p], self.numbers)
                    items.append(Item("arith", f"mod {self.numbers[a]} {op}{k}", choices, gold))
        return items

    # Evaluation and training sets ------------------------------------------------------------
    def eval_items(self, task: str) -> list[Item]:
        """All evaluation documents of a task (later split into dev and test)."""
        if task == "facts":
            return self.fact_items()
        if task == "arith":
            return self.arith_items()
        gen = {"induction": self.induction_item, "kv": self.kv_item}[task]
        rng = random.Random(f"eval-{task}-{self.spec.seed}")
        seen: set[str] = set()
        items: list[Item] = []
        while len(items) < self.spec.n_eval[task]:
            item = gen(rng)
            if item.context not in seen:
                seen.add(item.context)
                items.append(item)
        return items

    def training_sequences(
        self,
        n_sequences: int,
        mix: dict[str, float],
        items_per_sequence: int,
        seed: int,
        kb_shift: float = 0.0,
        arith_ops: tuple[str, ...] = ARITH_OPS,
    ) -> list[str]:
        """Packed training sequences drawn from the task mixture, disjoint from eval contexts;
        ``kb_shift`` reassigns that fraction of the knowledge base's facts, ``arith_ops`` limits the
        arithmetic operators taught."""
        for op in arith_ops:
            check_choice("arithmetic operator", op, ARITH_OPS)
        if not any(w > 0 for w in mix.values()):
            raise StudyError(f"training mix {mix} has no positive weight; tasks: {', '.join(TASKS)}")
        unknown = set(mix) - set(TASKS)
        if unknown:
            raise StudyError(f"unknown task(s) {sorted(unknown)} in training mix; valid: {', '.join(TASKS)}")
        rng = random.Random(f"train-{seed}")
        held_out = {it.context for t in ("induction", "kv") for it in self.eval_items(t)}
        fixed = {"facts": self.fact_items(kb_shift), "arith": self.arith_items(tuple(arith_ops))}
        tasks = [t for t in TASKS if mix.get(t, 0) > 0]
        weights = [mix[t] for t in tasks]
        sequences = []
        for _ in range(n_sequences):
            parts = []
            for task in rng.choices(tasks, weights, k=items_per_sequence):
                if task in fixed:
                    parts.append(rng.choice(fixed[task]).text)
                    continue
                def gen() -> Item:
                    if task == "induction":
                        return self.induction_item(rng, to_end=True)
                    return self.kv_item(rng, n_queries=rng.randint(1, 2 * self.spec.kv_pairs))

                item = gen()
                while item.context in held_out:
                    item = gen()
                parts.append(item.text)
            sequences.append(f" {SEP} ".join(parts))
        return sequences
