"""Whether two models read the study's text the same way, the precondition of moving modules between them.

Related releases (Qwen2 -> Qwen2.5) share their base vocabulary, the tokens and ids the BPE merges
produce, and differ in the added tokens appended after it (chat and tool markers). Modules can move
between them when the base vocabularies are equal; added tokens that differ matter only where a
task's text contains one, which the caller checks on the documents themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

from paramscope.errors import StudyError

SHOWN = 5  # tokens named in a message


@dataclass(frozen=True)
class AddedTokenDifference:
    only_a: tuple[str, ...]  # added to a's vocabulary and not to b's (or at another id)
    only_b: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.only_a or self.only_b)

    def describe(self, a: str, b: str) -> str:
        return "; ".join(f"{len(toks)} added only to {name}'s ({_show(toks)})"
                         for name, toks in ((a, self.only_a), (b, self.only_b)) if toks)


def _show(tokens: tuple[str, ...]) -> str:
    more = f", ... {len(tokens) - SHOWN} more" if len(tokens) > SHOWN else ""
    return ", ".join(repr(t) for t in tokens[:SHOWN]) + more


def _split_vocab(tokenizer) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """(vocabulary, base, added): token -> id over all tokens, over those the model's own merges make, and over
    those added after them (an added token may repeat a base one: it then splits the text differently)."""
    vocab, added = tokenizer.get_vocab(), dict(tokenizer.get_added_vocab())
    return vocab, {t: i for t, i in vocab.items() if t not in added}, added


def compare_vocabularies(a: str, tok_a, b: str, tok_b) -> AddedTokenDifference:
    """Refuse (StudyError) if a base token of model `a` or `b` is missing from the other's vocabulary or has
    another id there; else the added tokens that differ, for the caller to report and to check against the
    documents."""
    vocab_a, base_a, added_a = _split_vocab(tok_a)
    vocab_b, base_b, added_b = _split_vocab(tok_b)
    moved = sorted({t for t, i in base_a.items() if vocab_b.get(t) != i}
                   | {t for t, i in base_b.items() if vocab_a.get(t) != i})
    if moved:
        raise StudyError(f"cannot transplant between {a} and {b}: their base vocabularies differ in "
                         f"{len(moved)} tokens ({_show(tuple(moved))}); modules read token ids, so both "
                         "models must share one vocabulary")
    items_a, items_b = set(added_a.items()), set(added_b.items())
    return AddedTokenDifference(only_a=tuple(sorted(t for t, _ in items_a - items_b)),
                                only_b=tuple(sorted(t for t, _ in items_b - items_a)))
