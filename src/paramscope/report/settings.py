"""What every report measures and how (split, CI level, resamples, FDR, display order), read from the config.

The atlas and the optimize topic share these settings, so their numbers are measured alike.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf

from paramscope.errors import StudyError
from paramscope.report import latex as tex

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """What the report measures and how; ``from_cfg`` reads it from the aggregate stage's config."""

    split: str = "test"
    select_split: str = "dev"
    level: float = 0.95
    n_resamples: int = 2000
    fdr: float = 0.05
    seed: int = 0
    top_k: int = 3
    pairs: tuple[tuple[str, str], ...] = (("gen2", "scratch"), ("tuned", "scratch"))
    models: tuple[str, ...] = ()  # display order; models not listed follow, sorted
    tasks: tuple[str, ...] = ()
    n_choices: int | None = None
    facts: tuple[tuple[str, str], ...] = field(default=())  # (macro name, LaTeX value) about the profile

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> Settings:
        r = cfg.report
        pairs = tuple(tuple(str(m) for m in p) for p in r.pairs)
        bad = [list(p) for p in pairs if len(p) != 2]
        if bad:
            raise StudyError(f"report.pairs entries must be [model, reference], got {bad}")
        models = tuple(OmegaConf.select(cfg, "models", default=None) or ())
        if models:  # one list serves every profile: each keeps the pairs whose models it has
            skipped = [p for p in pairs if not set(p) <= set(models)]
            pairs = tuple(p for p in pairs if p not in skipped)
            if skipped:
                log.info("model pairs not in this profile, skipped: %s", skipped)
        n_choices = OmegaConf.select(cfg, "suite.n_choices", default=None)
        return cls(
            split=str(r.split),
            select_split=str(r.select_split),
            level=float(r.level),
            n_resamples=int(r.n_resamples),
            fdr=float(r.fdr),
            seed=int(cfg.seed),
            top_k=int(r.top_k),
            pairs=pairs,
            models=models,
            tasks=tuple(OmegaConf.select(cfg, "tasks", default=None) or ()),
            n_choices=None if n_choices is None else int(n_choices),
            facts=profile_facts(cfg),
        )


def profile_facts(cfg: DictConfig) -> tuple[tuple[str, str], ...]:
    """Macros for the setup section (sizes, steps, data mixes), so the paper types none of them."""

    def sel(key: str) -> object:
        return OmegaConf.select(cfg, key, default=None)

    facts = {
        "ProfileName": sel("profile_name") and tex.escape(sel("profile_name")),
        "ModelFamily": sel("architecture.family") and tex.escape(sel("architecture.family")),
        "ModelHidden": sel("architecture.hidden_size"),
        "ModelLayers": sel("architecture.num_hidden_layers"),
        "ModelHeads": sel("architecture.num_attention_heads"),
        "ModelFfn": sel("architecture.intermediate_size"),
        "NeuronBlock": sel("ablate.neuron_block"),
        "AblateResamples": sel("ablate.n_resamples"),
        "NChoices": sel("suite.n_choices"),
        "DevShare": None if sel("suite.dev_fraction") is None else tex.pct(sel("suite.dev_fraction"), 0),
    }
    for variant, spec in (sel("train.variants") or {}).items():
        facts[tex.macro_name("Train", variant, "steps")] = spec.get("steps")
        facts[tex.macro_name("Train", variant, "data")] = spec.get("data") and tex.escape(spec.get("data"))
        facts[tex.macro_name("Train", variant, "init")] = tex.escape(spec.get("init") or "random")
    for mix, spec in (sel("training_sets") or {}).items():
        facts[tex.macro_name("Mix", mix, "tasks")] = tex.escape(", ".join(spec.get("mix", {}) or {}))
        facts[tex.macro_name("Mix", mix, "sequences")] = spec.get("n_sequences")
    return tuple((k, str(v)) for k, v in facts.items() if v is not None)
