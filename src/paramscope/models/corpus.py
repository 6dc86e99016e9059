"""The paper profile's pretraining data: a pinned tokenizer and a pinned hub corpus, streamed and packed.

The corpus is never downloaded whole: `datasets` streams it (dataset + config + revision, all pinned),
documents are tokenised as they arrive, joined with the end-of-text token and cut into training
blocks. The stream's exact position (the source's own state plus the tokens left over from the current
document) is kept for every block handed out, so a checkpoint can record where the consumed data ends
and a resumed run continues with the next unseen block, on every rank.
"""

from __future__ import annotations

import copy
import glob
import json
import logging
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from paramscope.errors import StudyError
from paramscope.store import atomic_dir

log = logging.getLogger(__name__)

CORPUS = "corpus"  # the `data` name of a training variant that streams `cfg.corpus`


def fetch_tokenizer(pin: DictConfig, dest: Path) -> dict:
    """The pinned tokenizer (repo + revision, or a local folder) saved into ``dest``; nothing on failure."""
    from transformers import AutoTokenizer

    with atomic_dir(dest) as tmp:
        if pin.get("local_dir"):
            source, kwargs = str(pin.local_dir), {}
            where = {"local_dir": source}
        else:
            source, kwargs = pin.repo, {"revision": pin.revision}
            where = {"repo": pin.repo, "revision": pin.revision}
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        except Exception as e:  # noqa: BLE001 (offline, unknown repo or revision, missing folder: one line either way)
            raise StudyError(
                f"cannot fetch tokenizer {pin.repo}@{pin.revision}: {type(e).__name__}; "
                "with no hub access, set tokenizer.local_dir to a local tokenizer folder"
            ) from None
        tokenizer.save_pretrained(tmp)
        (tmp / "paramscope.json").write_text(json.dumps(where, indent=2, sort_keys=True))
    return where


def prepare_corpus(cfg: DictConfig, out: Path) -> dict:
    """The paper profile's data folder: the pinned tokenizer and a manifest of the pinned corpus.

    Called by the prepare stage when the profile has no synthetic suite; the corpus itself is streamed
    at training time, and the lm-eval tasks come from the harness.
    """
    with atomic_dir(out) as tmp:
        where = fetch_tokenizer(cfg.tokenizer, tmp / "tokenizer")
        manifest = {
            "tokenizer": where,
            "corpus": OmegaConf.to_container(cfg.corpus, resolve=True),
            "tasks": list(cfg.tasks),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return {"vocab_size": len(_load_tokenizer(out / "tokenizer")), "n_tasks": len(cfg.tasks)}


def _load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def open_stream(pin: DictConfig):
    """The corpus as a streaming ``datasets.IterableDataset`` of its text column (checked to open)."""
    import datasets

    try:
        if pin.get("local_files"):
            files = sorted(glob.glob(str(pin.local_files), recursive=True))
            if not files:
                raise StudyError(f"corpus.local_files matches no file: {pin.local_files}")
            kind = "parquet" if files[0].endswith(".parquet") else "json"
            stream = datasets.load_dataset(kind, data_files=files, split="train", streaming=True)
        else:
            stream = datasets.load_dataset(
                pin.dataset, pin.get("name"), revision=pin.revision, split=pin.split, streaming=True
            )
        if pin.text_field not in (stream.column_names or [pin.text_field]):
            raise StudyError(f"corpus has no column '{pin.text_field}'; columns: {', '.join(stream.column_names)}")
        return stream.select_columns([pin.text_field])
    except StudyError:
        raise
    except Exception as e:  # noqa: BLE001 (offline, unknown dataset or revision: one line either way)
        raise StudyError(
            f"cannot stream corpus {pin.dataset}@{pin.revision}: {type(e).__name__}; "
            "with no hub access, set corpus.local_files to local JSONL/Parquet files"
        ) from None


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class PackedCorpus(torch.utils.data.IterableDataset):
    """Blocks of ``seq_len + 1`` tokens (inputs and shifted targets) cut from the joined documents.

    Each rank reads its own part of the stream (`datasets.distributed.split_dataset_by_node`). For the
    last ``history`` blocks handed out, the position just after each is kept, so that `position(n)`
    says where the stream stands once ``n`` blocks are consumed (the trainer fetches ahead).
    """

    def __init__(self, stream, tokenizer, seq_len: int, text_field: str, history: int = 1024):
        super().__init__()
        self.stream, self.tokenizer, self.text_field = stream, tokenizer, text_field
        self.block = seq_len + 1
        self.eos = tokenizer.eos_token_id
        self.history = history
        self.positions: OrderedDict[int, dict] = OrderedDict()
        self.resume_from: dict | None = None

    def _source(self):
        import datasets

        rank, world = _rank_and_world()
        return datasets.distributed.split_dataset_by_node(self.stream, rank, world) if world > 1 else self.stream

    def __iter__(self) -> Iterator[tuple[torch.Tensor]]:
        source = self._source()
        start, self.resume_from = self.resume_from, None  # a later epoch starts the stream again
        buffer: list[int] = []
        served = 0
        if start is not None:
            source.load_state_dict(start["source"])
            buffer, served = list(start["buffer"]), int(start["served"])
        for example in source:
            buffer.extend(self.tokenizer(example[self.text_field], add_special_tokens=False)["input_ids"])
            buffer.append(self.eos)
            while len(buffer) >= self.block:
                block, buffer = buffer[: self.block], buffer[self.block :]
                served += 1
                self._remember(served, {"source": copy.deepcopy(source.state_dict()), "buffer": list(buffer),
                                        "served": served})
                yield (torch.tensor(block, dtype=torch.long),)

    def _remember(self, served: int, position: dict) -> None:
        self.positions[served] = position
        while len(self.positions) > self.history:
            self.positions.popitem(last=False)

    def position(self, consumed: int) -> dict | None:
        """Where the stream stands after ``consumed`` blocks (None before the first block)."""
        if consumed == 0:
            return None
        if consumed not in self.positions:
            raise RuntimeError(f"stream position after block {consumed} is no longer known; "
                               f"known: {min(self.positions, default=None)}..{max(self.positions, default=None)}")
        return self.positions[consumed]


class CorpusResume(L.Callback):
    """Saves every rank's stream position with each checkpoint, and restores it on resume.

    The position saved is the one after the blocks the optimizer has consumed (global_step x
    accumulate x batch_size per rank), not after what the loader fetched ahead.
    """

    def __init__(self, corpus: PackedCorpus, batch_size: int, accumulate: int):
        self.corpus, self.batch_size, self.accumulate = corpus, batch_size, accumulate
        self.trainer: L.Trainer | None = None

    def setup(self, trainer, pl_module, stage) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict:
        consumed = self.trainer.global_step * self.accumulate * self.batch_size
        mine = self.corpus.position(consumed)
        _, world = _rank_and_world()
        ranks = [None] * world
        if world > 1:  # every rank calls this while a checkpoint is built; rank 0 writes all positions
            torch.distributed.all_gather_object(ranks, mine)
        else:
            ranks = [mine]
        return {"ranks": ranks, "consumed": consumed}

    def load_state_dict(self, state_dict: dict) -> None:
        rank, world = _rank_and_world()
        if len(state_dict["ranks"]) != world:
            raise StudyError(f"checkpoint was written by {len(state_dict['ranks'])} rank(s), this run has {world}; "
                             "resume with the same trainer.devices and trainer.num_nodes")
        self.corpus.resume_from = state_dict["ranks"][rank]
        log.info("corpus resumes after %d blocks on rank %d", state_dict["consumed"], rank)
