"""Training of the scratch models with Lightning: the base model, its step-0 checkpoint, the variants
and their noise twins (`noise_twin`).

Every model is saved as a Hugging Face directory (safetensors + tokenizer) with a provenance file, so
that the rest of the study loads them exactly like hub models.

Two data sources, one code path: the tiny/smoke profiles read the prepared training mixtures
(`data/train/<name>.txt`); a variant whose `data` is `corpus` streams the profile's pinned corpus
(paper profile), with a length in `tokens` instead of `steps`. Optional settings, all off in tiny:
gradient accumulation (`train.accumulate`), periodic checkpoints that an interrupted run resumes from
(`train.checkpoints`), bf16 (`train.precision`), and several devices (`trainer=ddp`).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, TensorDataset
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
)

from paramscope.errors import StudyError
from paramscope.models.corpus import CORPUS, CorpusResume, PackedCorpus, open_stream
from paramscope.models.noise_twin import check_twin_start, train_noise_twin
from paramscope.models.objective import (
    GRADIENT_CLIP,
    next_token_loss,
    optimizer_and_schedule,
)
from paramscope.models.zoo import save_model
from paramscope.store import cell_key

log = logging.getLogger(__name__)


def scratch_config(cfg: DictConfig, vocab_size: int, tokenizer) -> GPTNeoXConfig:
    m = cfg.architecture
    if m.family != "gpt_neox":
        raise StudyError(f"scratch model family '{m.family}' is not trainable here; valid: gpt_neox")
    return GPTNeoXConfig(
        vocab_size=m.get("vocab_size") or vocab_size,  # Pythia pads its 50277 tokens to 50304
        hidden_size=m.hidden_size,
        num_hidden_layers=m.num_hidden_layers,
        num_attention_heads=m.num_attention_heads,
        intermediate_size=m.intermediate_size,
        max_position_embeddings=m.max_position_embeddings,
        rotary_pct=m.get("rotary_pct", 0.25),
        use_parallel_residual=m.get("use_parallel_residual", True),
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        attn_implementation=cfg.train.get("attn_implementation", "eager"),
    )


def token_dataset(path: Path, tokenizer, seq_len: int) -> TensorDataset:
    """One training sequence per line, truncated or right-padded to ``seq_len`` (+1 for the shift)."""
    lines = path.read_text().splitlines()
    ids = torch.full((len(lines), seq_len + 1), tokenizer.pad_token_id, dtype=torch.long)
    for i, line in enumerate(lines):
        toks = tokenizer.encode(line, add_special_tokens=False)[: seq_len + 1]
        ids[i, : len(toks)] = torch.tensor(toks)
    return TensorDataset(ids)


class LogProgress(L.Callback):
    """Progress in the log file too (the progress bar only shows on a terminal)."""

    def __init__(self, name: str, every: int = 250):
        self.name, self.every = name, every

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every == 0 or step == trainer.max_steps:
            # Lightning hands over the loss divided by the accumulation factor
            loss = float(outputs["loss"]) * trainer.accumulate_grad_batches
            log.info("%s: step %d/%d loss %.4f", self.name, step, trainer.max_steps, loss)


class Throughput(L.Callback):
    """Training tokens per second (inputs of every device), logged and kept for the run's summary.

    Timed from the end of the first optimizer step, so start-up (compilation, the first fetch of the
    stream) is not counted.
    """

    def __init__(self, every: int):
        self.every = every
        self.tokens = 0
        self.t0: float | None = None
        self.window: tuple[float, int] | None = None
        self.tokens_per_s = float("nan")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.t0 is None:
            if trainer.global_step >= 1:
                self.t0, self.window = time.perf_counter(), (time.perf_counter(), 0)
            return
        self.tokens += batch[0][:, :-1].numel() * trainer.world_size
        now = time.perf_counter()
        self.tokens_per_s = self.tokens / max(now - self.t0, 1e-9)
        start, tokens_then = self.window
        if trainer.global_step % self.every == 0 and now > start:
            module.log("train/tokens_per_s", (self.tokens - tokens_then) / (now - start), rank_zero_only=True)
            self.window = (now, self.tokens)


class StepCheckpoint(ModelCheckpoint):
    """Periodic checkpoints taken only where an optimizer step ends.

    Lightning does not restore which step it saved last, so right after a resume it would save again
    on the first micro-batch of a gradient-accumulation window: a checkpoint whose accumulated
    gradient is lost. Marking the restored step as saved keeps every checkpoint on a step boundary.
    """

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_global_step_saved = trainer.global_step


class CausalLM(L.LightningModule):
    """Next-token loss on real tokens only (padding is masked; packed corpus blocks have none)."""

    def __init__(
        self,
        model,
        pad_id: int | None,
        lr: float,
        weight_decay: float,
        warmup_steps: int,
        max_steps: int,
        betas: tuple[float, float] = (0.9, 0.98),
    ):
        super().__init__()
        self.model = model
        self.pad_id = pad_id
        self.save_hyperparameters(ignore=["model"])

    def training_step(self, batch, _):
        (ids,) = batch
        loss, n_tokens = next_token_loss(self.model, ids, self.pad_id)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/tokens", float(n_tokens), reduce_fx="sum")
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        opt, sched = optimizer_and_schedule(self.model.parameters(), hp.lr, hp.weight_decay, tuple(hp.betas),
                                            hp.warmup_steps, hp.max_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def trainer_options(cfg: DictConfig) -> dict:
    """Devices and strategy from the `trainer` group (`trainer=ddp`); one device of `cfg.device` without it."""
    t = cfg.get("trainer") or {}
    return {
        "accelerator": t.get("accelerator") or cfg.device,
        "devices": t.get("devices", 1),
        "num_nodes": t.get("num_nodes", 1),
        "strategy": t.get("strategy", "auto"),
    }


def planned_steps(cfg: DictConfig, spec: DictConfig, world_size: int) -> int:
    """Optimizer steps of a variant: given, or enough for its `tokens` over every device."""
    if spec.get("steps"):
        return int(spec.steps)
    if not spec.get("tokens"):
        raise StudyError("a training variant needs `steps` or `tokens`")
    per_step = world_size * cfg.train.batch_size * cfg.train.get("accumulate", 1) * cfg.train.seq_len
    return math.ceil(int(spec.tokens) / per_step)


def checkpoint_dir(cfg: DictConfig, name: str) -> Path | None:
    """Where a variant's checkpoints go, named by what determines the run, so that a run resumes only
    from its own checkpoints (a changed model, data or schedule starts afresh); None: no checkpoints."""
    ck = cfg.train.get("checkpoints")
    if not ck:
        return None
    what = {
        "model": cfg.architecture,  # named "model" so that existing checkpoint folders keep their names
        "train": {k: v for k, v in cfg.train.items() if k not in ("checkpoints", "variants", "noise_twin")},
        "variant": cfg.train.variants[name],
        "corpus": cfg.get("corpus"),
        "trainer": trainer_options(cfg),
        "seed": cfg.seed,
    }
    key = cell_key(**OmegaConf.to_container(OmegaConf.create(what), resolve=True))
    return Path(ck.dir) / f"{name}-{key}"


def _loader(cfg: DictConfig, spec: DictConfig, data_dir: Path, tokenizer) -> tuple[DataLoader, PackedCorpus | None]:
    if spec.data == CORPUS and cfg.get("corpus") is not None:
        corpus = PackedCorpus(open_stream(cfg.corpus), tokenizer, cfg.train.seq_len, cfg.corpus.text_field)
        return DataLoader(corpus, batch_size=cfg.train.batch_size, num_workers=0), corpus
    data_path = data_dir / "train" / f"{spec.data}.txt"
    if not data_path.is_file():
        raise StudyError(f"training set '{spec.data}' not found at {data_path}; run the prepare stage")
    loader = DataLoader(
        token_dataset(data_path, tokenizer, cfg.train.seq_len),
        batch_size=cfg.train.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(cfg.seed),
        drop_last=True,
    )
    return loader, None


def train_variant(cfg: DictConfig, name: str, models_dir: Path, data_dir: Path, logger) -> dict:
    """Train one variant (from scratch or from another variant) and save it under ``models_dir/name``.

    With `train.checkpoints` set, checkpoints are written every `every_n_steps` and an interrupted run
    restarts from its last one (model, optimizer, schedule and the corpus position), then the folder
    is removed once the model is saved. With `train.noise_twin` set, the variant's noise twin is trained
    and saved after it (`noise_twin`), without touching the variant or its random streams.
    """
    spec = cfg.train.variants[name]
    twin = cfg.train.get("noise_twin") is not None
    if twin:
        check_twin_start(cfg, name, models_dir)  # before hours of training, not after
    tokenizer = AutoTokenizer.from_pretrained(data_dir / "tokenizer")
    L.seed_everything(cfg.seed + sum(map(ord, name)), workers=True, verbose=False)
    if spec.init is None:
        model = GPTNeoXForCausalLM(scratch_config(cfg, len(tokenizer), tokenizer))
    else:
        init_dir = models_dir / spec.init
        if not init_dir.is_dir():
            raise StudyError(f"variant '{name}' starts from '{spec.init}', but {init_dir} does not exist")
        model = AutoModelForCausalLM.from_pretrained(
            init_dir, attn_implementation=cfg.train.get("attn_implementation", "eager"))
    loader, corpus = _loader(cfg, spec, data_dir, tokenizer)  # fails (e.g. offline) before anything is saved
    accumulate = int(cfg.train.get("accumulate", 1))
    ckpt_dir = checkpoint_dir(cfg, name)
    throughput = Throughput(cfg.train.get("log_every_n_steps", 25))
    callbacks = [LogProgress(name), throughput]
    if corpus is not None:
        callbacks.append(CorpusResume(corpus, cfg.train.batch_size, accumulate))
    if ckpt_dir is not None:
        callbacks.append(
            StepCheckpoint(
                dirpath=ckpt_dir,
                filename="step{step:07d}",
                auto_insert_metric_name=False,
                every_n_train_steps=cfg.train.checkpoints.every_n_steps,
                save_top_k=cfg.train.checkpoints.get("keep", 2),
                monitor="step",
                mode="max",
                save_last=True,
            )
        )
    trainer = L.Trainer(
        max_steps=int(spec.steps) if spec.get("steps") else -1,
        **trainer_options(cfg),
        precision=cfg.train.precision,
        deterministic=True,
        logger=logger,
        enable_checkpointing=ckpt_dir is not None,
        enable_model_summary=False,
        log_every_n_steps=cfg.train.get("log_every_n_steps", 25),
        gradient_clip_val=GRADIENT_CLIP,
        accumulate_grad_batches=accumulate,
        callbacks=callbacks,
    )
    if spec.init is None and spec.get("save_step0", False) and trainer.is_global_zero:  # one writer under DDP
        save_model(model, tokenizer, models_dir / f"{name}-step0", {"variant": name, "step": 0})
    steps = planned_steps(cfg, spec, trainer.world_size)
    trainer.fit_loop.epoch_loop.max_steps = steps  # a length in tokens needs the device count first
    module = CausalLM(
        model,
        None if corpus is not None else tokenizer.pad_token_id,
        cfg.train.lr,
        cfg.train.weight_decay,
        cfg.train.warmup_steps,
        steps,
        tuple(cfg.train.get("betas", (0.9, 0.98))),
    )
    last = ckpt_dir / "last.ckpt" if ckpt_dir is not None else None
    resume = last if last is not None and last.is_file() else None
    if resume is not None:
        log.info("%s: resuming from %s", name, resume)
    trainer.fit(module, loader, ckpt_path=resume)
    if trainer.interrupted or trainer.global_step < steps:
        raise StudyError(f"training of '{name}' stopped at step {trainer.global_step} of {steps}; "
                         "rerun to resume" + (f" from {ckpt_dir}" if ckpt_dir is not None else ""))
    model = module.model.cpu().float().eval()
    provenance = {
        "variant": name,
        "init": spec.init,
        "data": spec.data,
        "steps": steps,
        "train_config": OmegaConf.to_container(cfg.train, resolve=True),
    }
    if corpus is not None:
        provenance["corpus"] = OmegaConf.to_container(cfg.corpus, resolve=True)
    summary = {
        f"{name}/final_loss": float(trainer.callback_metrics.get("train/loss", float("nan"))),
        f"{name}/tokens_per_s": throughput.tokens_per_s,
    }
    if trainer.is_global_zero:
        save_model(model, tokenizer, models_dir / name, provenance)
        if ckpt_dir is not None and not cfg.train.checkpoints.get("keep_after", False):
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        if twin:
            summary.update(train_noise_twin(cfg, name, models_dir, steps))
    return summary
