"""Stand-ins for the paper profile's hub downloads, made here: rows with the fields of the seven benchmark
datasets (in the words of a given vocabulary), written as the local files `task_data` reads."""

import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

N_EVAL = 12  # documents in each task's evaluation split


def _words(rng: np.random.Generator, vocab: list[str], lo: int, hi: int) -> str:
    return " ".join(rng.choice(vocab, int(rng.integers(lo, hi + 1))))


def _lambada(rng, vocab):
    return {"text": _words(rng, vocab, 4, 12)}


def _piqa(rng, vocab):
    return {"goal": _words(rng, vocab, 3, 8), "sol1": _words(rng, vocab, 1, 4), "sol2": _words(rng, vocab, 1, 4),
            "label": int(rng.integers(2))}


def _arc(rng, vocab):
    n = int(rng.integers(3, 6))  # ARC has 3 to 5 options, some labelled 1-4 instead of A-E
    labels = list("ABCDE")[:n] if rng.random() < 0.7 else [str(i + 1) for i in range(n)]
    return {"id": str(rng.integers(10**6)), "question": _words(rng, vocab, 3, 9),
            "choices": {"text": [_words(rng, vocab, 1, 3) for _ in range(n)], "label": labels},
            "answerKey": labels[int(rng.integers(n))]}


def _winogrande(rng, vocab):
    return {"sentence": f"{_words(rng, vocab, 2, 6)} _ {_words(rng, vocab, 1, 4)}", "option1": _words(rng, vocab, 1, 2),
            "option2": _words(rng, vocab, 1, 2), "answer": str(int(rng.integers(1, 3)))}


def _sciq(rng, vocab):
    return {"question": _words(rng, vocab, 3, 8), "distractor1": _words(rng, vocab, 1, 3),
            "distractor2": _words(rng, vocab, 1, 3), "distractor3": _words(rng, vocab, 1, 3),
            "correct_answer": _words(rng, vocab, 1, 3), "support": " " + _words(rng, vocab, 0, 10)}


def _hellaswag(rng, vocab):
    return {"ind": int(rng.integers(10**5)), "activity_label": _words(rng, vocab, 1, 2),
            "ctx_a": _words(rng, vocab, 2, 6), "ctx_b": _words(rng, vocab, 1, 3), "ctx": "",
            "endings": [_words(rng, vocab, 1, 4) for _ in range(4)], "source_id": "x", "split": "val",
            "split_type": "indomain", "label": str(int(rng.integers(4)))}


# lm-eval task -> (dataset path and config name its YAML asks for, splits the YAML declares, document maker)
TASKS = {
    "lambada_openai": (("EleutherAI/lambada_openai", "default"), ["test"], _lambada),
    "piqa": (("baber/piqa", None), ["train", "validation"], _piqa),
    "arc_easy": (("allenai/ai2_arc", "ARC-Easy"), ["train", "validation", "test"], _arc),
    "arc_challenge": (("allenai/ai2_arc", "ARC-Challenge"), ["train", "validation", "test"], _arc),
    "winogrande": (("allenai/winogrande", "winogrande_xl"), ["train", "validation"], _winogrande),
    "sciq": (("allenai/sciq", None), ["train", "validation", "test"], _sciq),
    "hellaswag": (("Rowan/hellaswag", None), ["train", "validation"], _hellaswag),
}


def benchmark_rows(vocab: list[str], seed: int = 0) -> dict[tuple[str, str | None], dict[str, list[dict]]]:
    """Every declared split of each benchmark dataset, keyed like the hub: (path, config name)."""
    rng = np.random.default_rng(seed)
    return {where: {split: [make(rng, vocab) for _ in range(N_EVAL)] for split in splits}
            for where, splits, make in TASKS.values()}


def eval_split(task: str) -> str:
    """The split lm-eval's YAML evaluates: test where the dataset has one, else validation."""
    return "test" if "test" in TASKS[task][1] else "validation"


def write_task_data(rows: dict, folder: Path) -> dict[str, dict]:
    """Each benchmark's evaluated split as a JSONL file; returns the matching `task_data` config."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = {}
    for task, (where, _, _) in TASKS.items():
        path = folder / f"{task}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows[where][eval_split(task)]))
        spec[task] = {"format": "json", "files": {eval_split(task): str(path)}}
    return spec


def byte_level_tokenizer(texts: list[str], vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE (Qwen's kind of tokenizer) trained on `texts`: transformers loads a Qwen2 folder's
    tokenizer as Qwen2Tokenizer whatever class it was saved as, and that reads only a byte-level BPE right."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
