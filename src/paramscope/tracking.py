"""W&B: one run per stage job, with the resolved config; offline unless the environment says otherwise."""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


@contextlib.contextmanager
def stage_run(cfg: DictConfig, stage: str, name: str | None = None) -> Iterator[object]:
    """Start a W&B run for this job and always finish it, even when the stage fails."""
    import wandb

    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        sweep = hc.sweep.dir if hc.mode.name == "MULTIRUN" else None
        job = hc.job.override_dirname or None
    except ValueError:  # not under @hydra.main (tests, notebooks)
        sweep, job = None, None
    wcfg = cfg.wandb
    # Under DDP every rank runs the stage; only rank 0 logs, or one job would become several runs.
    rank = next((int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID") if k in os.environ), 0)
    run = wandb.init(
        project=wcfg.project,
        entity=wcfg.entity,
        mode=wcfg.mode if rank == 0 else "disabled",
        dir=wcfg.dir,
        group=wcfg.group or (f"{stage}:{sweep}" if sweep else stage),
        job_type=stage,
        name=name or (f"{stage}:{job}" if job else stage),
        config=OmegaConf.to_container(cfg, resolve=True),
        reinit="finish_previous",
    )
    try:
        yield run
    finally:
        run.finish()


def _wandb_records(path: Path) -> Iterator[bytes]:
    """Records of a ``.wandb`` transaction log (LevelDB log format: 32 KiB blocks, 7-byte headers)."""
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log")
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:  # full
            yield chunk
        elif kind == 2:  # first
            pending = chunk
        elif kind == 3:  # middle
            pending += chunk
        elif kind == 4:  # last
            yield pending + chunk
        else:
            break


def read_offline_run(run_dir: str | Path) -> dict[str, dict]:
    """The config and final summary that an offline run recorded, without syncing it anywhere."""
    from wandb.proto import wandb_internal_pb2 as pb

    [log_file] = Path(run_dir).glob("*.wandb")
    config: dict = {}
    summary: dict = {}
    for raw in _wandb_records(log_file):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "summary":
            summary.update({i.key: json.loads(i.value_json) for i in record.summary.update})
    return {"config": config, "summary": summary}
