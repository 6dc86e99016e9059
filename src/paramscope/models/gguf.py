"""A llama.cpp GGUF file as a Hugging Face model folder (safetensors + tokenizer), dequantized to float32.

transformers reads GGUF itself (`from_pretrained(folder, gguf_file=...)`, through the `gguf` package), but
every load dequantizes again and the model it returns cannot be saved (its `quantization_config` names
GGUF). Converting once gives the study an ordinary folder that every stage loads like any other baseline,
with a record of the quantization the weights went through.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from paramscope.errors import StudyError

MAGIC = b"GGUF"


def check_gguf(path: Path) -> None:
    """One clear error for a file that is not GGUF (llama.cpp's format starts with the bytes `GGUF`)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head != MAGIC:
        raise StudyError(f"{path.name} is not a GGUF file (it starts with {head!r}, GGUF files with {MAGIC!r})")


def quantization_types(path: Path) -> dict[str, int]:
    """How many tensors the file stores in each GGML type (e.g. {'Q4_1': 210, 'F32': 61})."""
    from gguf import GGUFReader

    return dict(sorted(Counter(t.tensor_type.name for t in GGUFReader(str(path)).tensors).items()))


def convert_gguf(path: Path, dest: Path) -> dict:
    """Write the model in ``path`` into the (empty) folder ``dest``; returns what the conversion records."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    check_gguf(path)
    folder, name = str(path.parent), path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (ValueError, KeyError, NotImplementedError) as e:  # an architecture transformers cannot map
        raise StudyError(f"transformers cannot load {name}: {str(e).splitlines()[0]}") from None
    # A plain model of the same architecture, without the GGUF quantization record, so it saves as safetensors.
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    config = AutoConfig.for_model(**config)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise StudyError(f"{name}: converted weights do not match {type(model).__name__} "
                         f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {unexpected[:3]})")
    model.tie_weights()
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    n_params = sum(p.numel() for p in model.parameters())
    return {"gguf_file": name, "dequantized_from": quantization_types(path), "architecture": type(model).__name__,
            "parameters": n_params, "dtype": "float32"}
