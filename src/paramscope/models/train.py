"""Training of the scratch models with Lightning: the base model, its step-0 checkpoint, and the variants.

Every model is saved as a Hugging Face directory (safetensors + tokenizer) with a provenance file, so
that the rest of the study loads them exactly like hub models.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, TensorDataset
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
)

from paramscope.errors import StudyError
from paramscope.models.zoo import save_model

log = logging.getLogger(__name__)


def scratch_config(cfg: DictConfig, vocab_size: int, tokenizer) -> GPTNeoXConfig:
    m = cfg.model
    if m.family != "gpt_neox":
        raise StudyError(f"scratch model family '{m.family}' is not trainable here; valid: gpt_neox")
    return GPTNeoXConfig(
        vocab_size=vocab_size,
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
        attn_implementation="eager",
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
            log.info("%s: step %d/%d loss %.4f", self.name, step, trainer.max_steps, float(outputs["loss"]))


class CausalLM(L.LightningModule):
    """Next-token loss on real tokens only (padding is masked)."""

    def __init__(self, model, pad_id: int, lr: float, weight_decay: float, warmup_steps: int, max_steps: int):
        super().__init__()
        self.model = model
        self.pad_id = pad_id
        self.save_hyperparameters(ignore=["model"])

    def training_step(self, batch, _):
        (ids,) = batch
        inputs, targets = ids[:, :-1], ids[:, 1:].clone()
        targets[targets == self.pad_id] = -100
        logits = self.model(input_ids=inputs, attention_mask=(inputs != self.pad_id).long()).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/tokens", float((targets != -100).sum()), reduce_fx="sum")
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.AdamW(self.model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay, betas=(0.9, 0.98))

        def schedule(step: int) -> float:
            if step < hp.warmup_steps:
                return (step + 1) / hp.warmup_steps
            progress = (step - hp.warmup_steps) / max(1, hp.max_steps - hp.warmup_steps)
            return 0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * min(1.0, progress))).item())

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def train_variant(cfg: DictConfig, name: str, models_dir: Path, data_dir: Path, logger) -> dict:
    """Train one variant (from scratch or from another variant) and save it under ``models_dir/name``."""
    spec = cfg.train.variants[name]
    tokenizer = AutoTokenizer.from_pretrained(data_dir / "tokenizer")
    L.seed_everything(cfg.seed + sum(map(ord, name)), workers=True, verbose=False)
    if spec.init is None:
        model = GPTNeoXForCausalLM(scratch_config(cfg, len(tokenizer), tokenizer))
        if spec.get("save_step0", False):
            save_model(model, tokenizer, models_dir / f"{name}-step0", {"variant": name, "step": 0})
    else:
        init_dir = models_dir / spec.init
        if not init_dir.is_dir():
            raise StudyError(f"variant '{name}' starts from '{spec.init}', but {init_dir} does not exist")
        model = AutoModelForCausalLM.from_pretrained(init_dir, attn_implementation="eager")
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
    module = CausalLM(
        model, tokenizer.pad_token_id, cfg.train.lr, cfg.train.weight_decay, cfg.train.warmup_steps, spec.steps
    )
    trainer = L.Trainer(
        max_steps=spec.steps,
        accelerator=cfg.device,
        devices=1,
        precision=cfg.train.precision,
        deterministic=True,
        logger=logger,
        enable_checkpointing=False,
        enable_model_summary=False,
        log_every_n_steps=25,
        gradient_clip_val=1.0,
        callbacks=[LogProgress(name)],
    )
    trainer.fit(module, loader)
    model = module.model.cpu().eval()
    provenance = {
        "variant": name,
        "init": spec.init,
        "data": spec.data,
        "steps": spec.steps,
        "train_config": OmegaConf.to_container(cfg.train, resolve=True),
    }
    save_model(model, tokenizer, models_dir / name, provenance)
    return {f"{name}/final_loss": float(trainer.callback_metrics.get("train/loss", float("nan")))}
