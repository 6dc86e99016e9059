"""Pretrained baselines from the Hugging Face hub, pinned by repository and revision."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from omegaconf import DictConfig

from paramscope.errors import StudyError
from paramscope.store import atomic_dir

log = logging.getLogger(__name__)

# Weights as safetensors only, plus what the tokenizer and config need.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*", "merges.txt", "vocab.*"]


def fetch_baseline(name: str, pin: DictConfig, dest: Path) -> dict:
    """Download (or copy from ``local_dir``) one pinned baseline into ``dest`` as a HF directory."""
    with atomic_dir(dest) as tmp:
        if pin.get("local_dir"):
            src = Path(pin.local_dir)
            if not (src / "config.json").is_file():
                raise StudyError(f"baseline '{name}': local_dir {src} has no config.json (a Hugging Face model folder)")
            shutil.copytree(src, tmp, dirs_exist_ok=True)
            source = {"local_dir": str(src)}
        else:
            from huggingface_hub import snapshot_download

            try:
                # Into the hub cache, then copied: offline (HF_HUB_OFFLINE=1) a snapshot already in the
                # cache is found there, which a download straight into a folder would not do.
                cached = snapshot_download(repo_id=pin.repo, revision=pin.revision, allow_patterns=ALLOW_PATTERNS)
            except Exception as e:  # noqa: BLE001 -- offline, unknown repo or revision: all mean the same to the user
                raise StudyError(
                    f"cannot fetch baseline '{name}' ({pin.repo}@{pin.revision}): {type(e).__name__}; "
                    f"with no hub access, set baselines.{name}.local_dir to a local model folder"
                ) from None
            shutil.copytree(cached, tmp, dirs_exist_ok=True)
            source = {"repo": pin.repo, "revision": pin.revision}
        if not any(tmp.glob("*.safetensors")):
            raise StudyError(f"baseline '{name}' has no safetensors weights; only safetensors are loaded")
        (tmp / "paramscope.json").write_text(json.dumps({"baseline": name, **source}, indent=2, sort_keys=True))
    return source


def fetch_all(cfg: DictConfig, root: Path) -> dict:
    """Every baseline of the profile, into ``root``; with none configured, an explicit empty manifest."""
    with atomic_dir(root) as tmp:
        manifest = {}
        for name, pin in (cfg.baselines or {}).items():
            log.info("fetching baseline %s", name)
            manifest[name] = fetch_baseline(name, pin, tmp / name)
        if not manifest:
            log.info("profile '%s' has no pretrained baselines: nothing to fetch", cfg.profile_name)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest
