"""The study's models: saved as Hugging Face directories, loaded by name, identified by a digest."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from paramscope.errors import StudyError
from paramscope.store import atomic_dir

MODELS_ROOT = Path(os.environ.get("PARAMSCOPE_MODELS", "models"))
# Subfolders of the models root (conf/common.yaml derives paths.trained and paths.baselines from them).
TRAINED, BASELINES = "trained", "baselines"
PROVENANCE = "paramscope.json"


def save_model(model, tokenizer, path: Path, provenance: dict) -> None:
    """Model + tokenizer as safetensors, with where it came from; swapped in only when complete."""
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=2, sort_keys=True, default=str))


def model_dirs(root: Path | None = None) -> dict[str, Path]:
    """Every loadable model under the models root, by name: the train stage's (`trained/`), the pretrained
    baselines (`baselines/`), and any model folder placed directly under the root."""
    root = Path(root or MODELS_ROOT)
    found: dict[str, Path] = {}
    for base in (root / TRAINED, root / BASELINES, root):  # stage outputs before stray folders
        if base.is_dir():
            for d in sorted(base.iterdir()):
                if (d / "config.json").is_file():
                    found.setdefault(d.name, d)
    return found


def resolve(name: str, root: Path | None = None) -> Path:
    dirs = model_dirs(root)
    if name not in dirs:
        valid = ", ".join(dirs) or "none (run `dvc repro` to train and fetch them)"
        raise StudyError(f"unknown model '{name}' (no directory under {root or MODELS_ROOT}); valid: {valid}")
    return dirs[name]


def load(
    name: str,
    root: Path | None = None,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
):
    """``(model, tokenizer)`` for any model of the study, in eval mode, from its local directory."""
    path = resolve(name, root)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype or torch.float32, attn_implementation="eager", trust_remote_code=trust_remote_code
    )
    return model.to(device).eval(), load_tokenizer(name, root, trust_remote_code)


def load_tokenizer(name: str, root: Path | None = None, trust_remote_code: bool = False):
    """A model's tokenizer alone (what building its documents needs), without loading the weights."""
    return AutoTokenizer.from_pretrained(resolve(name, root), trust_remote_code=trust_remote_code)


def digest(model: torch.nn.Module) -> str:
    """A content hash of the weights: results are keyed by what a model is, not what it is called."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
