"""A word-level tokenizer over the suite's closed vocabulary, saved as a Hugging Face tokenizer."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast


def word_level_tokenizer(vocabulary: list[str]) -> PreTrainedTokenizerFast:
    """One id per word, split on whitespace; no special tokens are ever added to an encoding."""
    model = models.WordLevel(vocab={w: i for i, w in enumerate(vocabulary)}, unk_token="<unk>")
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with single spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>", bos_token="<eos>"
    )
