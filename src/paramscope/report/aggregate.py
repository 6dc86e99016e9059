"""From result rows to the numbers the paper cites: tables, macros, metrics and tidy plot data.

Inputs are the ``eval`` and ``ablate`` result cells (``paramscope.store``). Everything reported is
measured on ``Settings.split`` (test); where a unit has to be *chosen* (the most important head of a
map) it is chosen on ``Settings.select_split`` (dev) and then reported on test, so no number is both
selected and reported on the same documents (STUDY.md section 2).

Outputs (under the reports folder):

- ``atlas.parquet``: every ablation row with ``q`` (BH-FDR across the units of its map) and
  ``significant`` (q < fdr);
- ``data/*.csv``: clean accuracy on every split, one row per map (``atlas_maps``), top units
  (``atlas_top``), Spearman rho between maps (``spearman``);
- ``plots/*.csv``: small tidy tables of the reported split for ``dvc plots`` (``clean_accuracy``,
  ``model_pairs``, ``layer_profile``);
- ``tables/*.tex``: booktabs fragments; ``macros.tex``: every number the text cites;
- ``metrics.json``: a flat dict of headline numbers for ``dvc metrics show``.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from paramscope.errors import StudyError
from paramscope.report import latex as tex
from paramscope.report.output import write_bytes, write_csv, write_json, write_text
from paramscope.stats import (
    benjamini_hochberg,
    concentration,
    map_spearman,
    mcnemar_exact,
    paired_bootstrap_ci,
    recall_at_k,
)
from paramscope.store import atomic_dir, load_results

log = logging.getLogger(__name__)

GROUP_ORDER = ("heads", "neurons", "single_neurons", "neuron_clusters", "attn", "mlp", "layers")
UNIT_GROUPS = ("heads", "neurons")  # many units per layer: heatmaps, top-k tables, Spearman of maps
SITE_GROUPS = ("attn", "mlp", "layers")  # one unit per layer: layer profiles
MAP_KEYS = ["model", "task", "split", "group", "op", "value"]
PRODUCER = {"eval": "evaluate", "ablate": "ablate"}
REQUIRED = {
    "eval": ("model", "digest", "task", "split", "n", "acc", "ex_doc_ids", "ex_correct"),
    "ablate": ("model", "digest", "task", "split", "group", "layer", "unit", "n_units", "op", "value", "n",
               "acc_clean", "acc", "delta_acc", "ci_low", "ci_high", "p_mcnemar", "delta_loss"),
}


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
        "ModelFamily": sel("model.family") and tex.escape(sel("model.family")),
        "ModelHidden": sel("model.hidden_size"),
        "ModelLayers": sel("model.num_hidden_layers"),
        "ModelHeads": sel("model.num_attention_heads"),
        "ModelFfn": sel("model.intermediate_size"),
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


# ----------------------------------------------------------------------------------------- inputs


def load_inputs(results: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The eval rows (with per-example lists) and the ablate rows (without), checked."""
    frames = []
    for stage, examples in (("eval", True), ("ablate", False)):
        folder = Path(results) / stage
        if not folder.is_dir() or not any(folder.glob("*.parquet")):
            raise StudyError(f"no {stage} results in {folder}: run the '{PRODUCER[stage]}' stage first (dvc repro)")
        df = load_results(stage, results, with_examples=examples, required=REQUIRED[stage])  # checked per cell
        missing = [c for c in REQUIRED[stage] if c not in df.columns]
        if missing:
            raise StudyError(f"{folder} lacks columns {', '.join(missing)}: rerun the '{PRODUCER[stage]}' stage")
        frames.append(df)
    ev, ab = frames
    _unique(ev, ["model", "task", "split"], "eval")
    _unique(ab, [*MAP_KEYS, "layer", "unit"], "ablate")
    digests = ev.groupby("model")["digest"].agg(lambda d: sorted(set(d)))
    for model, d in digests.items():
        if len(d) > 1:
            raise StudyError(f"eval results of model '{model}' come from {len(d)} checkpoints ({', '.join(d)}): "
                             "remove the stale cells and rerun 'evaluate'")
    for model, d in ab.groupby("model")["digest"].agg(lambda d: sorted(set(d))).items():
        if model not in digests or d != digests[model]:
            raise StudyError(f"ablate results of model '{model}' (checkpoint {', '.join(d)}) do not match its "
                             "eval results: rerun 'evaluate' and 'ablate' on the same models")
    return ev, ab


def _unique(df: pd.DataFrame, keys: list[str], stage: str) -> None:
    dup = df[df.duplicated(keys, keep=False)]
    if len(dup):
        first = ", ".join(f"{k}={dup.iloc[0][k]}" for k in keys)
        raise StudyError(f"{stage} results hold {len(dup)} rows that share one key ({first}): stale cells from "
                         f"an older run; rerun the '{PRODUCER[stage]}' stage")


def preferred_order(values: Iterable[object], preferred: Sequence[object]) -> list:
    present = set(values)
    return [v for v in preferred if v in present] + sorted(v for v in present if v not in preferred)


def _sorted(df: pd.DataFrame, s: Settings, extra: Sequence[str] = ()) -> pd.DataFrame:
    """Rows in the paper's order (models and tasks as configured), independent of file names."""
    keys = []
    tmp = df.copy()
    for col, preferred in (("model", s.models), ("task", s.tasks), ("split", (s.select_split, s.split)),
                           ("group", GROUP_ORDER)):
        if col in tmp.columns:
            rank = {v: i for i, v in enumerate(preferred_order(tmp[col], preferred))}
            tmp[f"_{col}"] = tmp[col].map(rank)
            keys.append(f"_{col}")
    keys += [c for c in ("op", "value", *extra) if c in tmp.columns]
    tmp = tmp.sort_values(keys, kind="mergesort")
    return tmp.drop(columns=[k for k in keys if k.startswith("_")]).reset_index(drop=True)


# ------------------------------------------------------------------------------------ statistics


def mean_ci(x: np.ndarray, s: Settings) -> tuple[float, float, float]:
    """Mean of 0/1 correctness with a percentile bootstrap CI over documents (a delta against 0)."""
    x = np.asarray(x, dtype=float)
    return paired_bootstrap_ci(np.zeros_like(x), x, n_resamples=s.n_resamples, level=s.level, seed=s.seed)


def clean_accuracy(ev: pd.DataFrame, s: Settings) -> pd.DataFrame:
    """Accuracy of every model on every task and split, with its bootstrap CI."""
    rows = []
    for r in _sorted(ev, s).itertuples():
        correct = np.asarray(r.ex_correct, dtype=float)
        acc, low, high = mean_ci(correct, s)
        rows.append({"model": r.model, "task": r.task, "split": r.split, "n": len(correct),
                     "acc": acc, "ci_low": low, "ci_high": high})
    out = pd.DataFrame(rows)
    out["chance"] = 1.0 / s.n_choices if s.n_choices else np.nan
    return out


def _aligned(a: pd.Series, b: pd.Series, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Correctness of two rows on the same documents, in the same order (paired by doc id)."""
    ids_a, ids_b = list(a["ex_doc_ids"]), list(b["ex_doc_ids"])
    if len(set(ids_a)) != len(ids_a) or len(set(ids_b)) != len(ids_b):
        raise StudyError(f"{what}: repeated document ids in eval results; rerun 'evaluate'")
    if set(ids_a) != set(ids_b):
        raise StudyError(f"{what}: the two models were scored on different documents; rerun 'evaluate'")
    pos = pd.Index(ids_b).get_indexer(ids_a)
    return np.asarray(a["ex_correct"], dtype=float), np.asarray(b["ex_correct"], dtype=float)[pos]


def model_pairs(ev: pd.DataFrame, s: Settings) -> pd.DataFrame:
    """Paired accuracy difference (model - reference) per task on ``s.split``, with CI, McNemar p and q.

    q is BH across the tasks of one pair: each pair asks its own question ("where does gen2 differ?").
    """
    present = preferred_order(ev["model"], s.models)
    cols = ["model", "reference", "task", "split", "n", "acc_model", "acc_reference", "delta_acc",
            "ci_low", "ci_high", "p_mcnemar", "q", "significant"]
    rows = []
    test = ev[ev["split"] == s.split].set_index(["model", "task"])
    for model, ref in s.pairs:
        for m in (model, ref):
            if m not in present:
                raise StudyError(f"model pair {model}/{ref}: no eval results for '{m}'; models with results: "
                                 f"{', '.join(present)}")
        for task in preferred_order(ev["task"], s.tasks):
            if (model, task) not in test.index or (ref, task) not in test.index:
                raise StudyError(f"model pair {model}/{ref}: no {s.split} results on task '{task}' for both models")
            a, b = _aligned(test.loc[(model, task)], test.loc[(ref, task)], f"pair {model}/{ref} on {task}")
            delta, low, high = paired_bootstrap_ci(b, a, n_resamples=s.n_resamples, level=s.level, seed=s.seed)
            rows.append({"model": model, "reference": ref, "task": task, "split": s.split, "n": len(a),
                         "acc_model": a.mean(), "acc_reference": b.mean(), "delta_acc": delta,
                         "ci_low": low, "ci_high": high, "p_mcnemar": mcnemar_exact(b, a)})
    out = pd.DataFrame(rows, columns=cols)
    for idx in out.groupby(["model", "reference"], sort=False).indices.values():
        out.loc[idx, "q"] = benjamini_hochberg(out.loc[idx, "p_mcnemar"].to_numpy(dtype=float))
    out["significant"] = out["q"] < s.fdr
    return out


def annotate_atlas(ab: pd.DataFrame, s: Settings) -> pd.DataFrame:
    """Every ablation row plus ``q``: BH-FDR across the units of its own map only, and ``significant``."""
    df = _sorted(ab, s, extra=("layer", "unit"))
    q = np.full(len(df), np.nan)
    p = df["p_mcnemar"].to_numpy(dtype=float)
    for idx in df.groupby(MAP_KEYS, sort=False, dropna=False).indices.values():
        q[idx] = benjamini_hochberg(p[idx])
    df["q"] = q
    df["significant"] = df["q"] < s.fdr
    return df


INTERACTION_COLUMNS = ["model", "task", "split", "pair_group", "unit_name", "unit_a", "unit_b", "rank_a", "rank_b",
                       "delta_acc_a", "delta_acc_b", "delta_acc", "nonadd", "nonadd_ci_low", "nonadd_ci_high"]


def interactions(pair_rows: pd.DataFrame, s: Settings) -> pd.DataFrame:
    """Non-additivity of every pair of top units (chosen on dev), with ``sign``: the direction its CI
    excludes 0 in (``super``: the pair hurts more than the singles together, ``sub``: less), or ``none``."""
    if pair_rows.empty:
        return pd.DataFrame(columns=[*INTERACTION_COLUMNS, "sign"])
    df = _sorted(pair_rows, s, extra=("unit",))[INTERACTION_COLUMNS].reset_index(drop=True)
    df["sign"] = np.select([df["nonadd_ci_low"] > 0, df["nonadd_ci_high"] < 0], ["super", "sub"], "none")
    return df


def map_label(group: str, op: str, value: float) -> str:
    """A map type as one word: 'heads' for zero ablation, 'heads-scale2' for scaling by 2."""
    return group if op == "zero" else f"{group}-{op}{value:g}"


def unit_name(group: str, layer: int, unit: int, n_units: int = 1) -> str:
    """How a unit is written in tables: L2H1, L0N64-127 (a neuron block), L3 attn, layer 3."""
    if group == "heads":
        return f"L{layer}H{unit}"
    if group in ("neurons", "single_neurons"):
        return f"L{layer}N{unit}" if n_units <= 1 else f"L{layer}N{unit}-{unit + n_units - 1}"
    if group == "neuron_clusters":  # a cluster is named by its first neuron (clusters partition a layer)
        return f"L{layer}C{unit} ({n_units} neurons)"
    if group == "layers":
        return f"layer {layer}"
    return f"L{layer} {'MLP' if group == 'mlp' else group}"


def _ranked(m: pd.DataFrame) -> pd.DataFrame:
    # most harmful first; ties in accuracy broken by the loss increase, then by position (deterministic)
    return m.sort_values(["delta_acc", "delta_loss", "layer", "unit"], ascending=[True, False, True, True],
                         kind="mergesort")


def _maps(atlas: pd.DataFrame) -> dict[tuple, pd.DataFrame]:
    return {key: m for key, m in atlas.groupby(MAP_KEYS, sort=False, dropna=False)}


def top_units(atlas: pd.DataFrame, s: Settings) -> pd.DataFrame:
    """The ``top_k`` most harmful units of each map, chosen on ``select_split``, reported on the map's split.

    A map on the selection split chooses on itself (``selected_on`` says so); a map on another split
    without its selection-split counterpart is an error: choosing its top units on the documents they
    are reported on would bias every number read from them.
    """
    maps = _maps(atlas)
    parts = []
    for key, m in maps.items():
        sel_key = (*key[:2], s.select_split, *key[3:])
        if key[2] != s.select_split and sel_key not in maps:
            what = ", ".join(f"{k}={v}" for k, v in zip(MAP_KEYS, key))
            raise StudyError(f"the ablation map ({what}) has no {s.select_split} counterpart to choose its top "
                             f"units on; run the grid on both splits (ablate.splits: [{s.select_split}, {key[2]}])")
        selector = maps.get(sel_key, m)
        chosen = _ranked(selector)[["layer", "unit", "delta_acc"]].head(s.top_k)
        chosen = chosen.rename(columns={"delta_acc": "sel_delta_acc"})
        picked = chosen.merge(m, on=["layer", "unit"], how="inner")
        picked.insert(0, "rank", np.arange(1, len(picked) + 1))
        picked["selected_on"] = sel_key[2] if sel_key in maps else key[2]
        parts.append(picked)
    cols = [*MAP_KEYS, "rank", "layer", "unit", "n_units", "delta_acc", "ci_low", "ci_high", "p_mcnemar", "q",
            "significant", "delta_loss", "selected_on", "sel_delta_acc"]
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


def every_unit_exact(m: pd.DataFrame) -> bool:
    """Whether a map computed every unit exactly (not a screened map, `atlas.screened_specs`)."""
    return "checked" not in m or bool((m["checked"].fillna("all") == "all").all())


def map_summary(atlas: pd.DataFrame, tops: pd.DataFrame, s: Settings) -> pd.DataFrame:
    """One row per map: units, significant units (harmful / helpful), concentration, top unit."""
    first = tops[tops["rank"] == 1].set_index(MAP_KEYS)
    rows = []
    for key, m in _maps(atlas).items():
        sig = m["significant"].to_numpy()
        delta = m["delta_acc"].to_numpy()
        # a screened map holds a chosen subset of the units: their share of its damage says nothing of the whole
        conc = concentration(-delta, (0.5, 0.9)) if every_unit_exact(m) else {0.5: np.nan, 0.9: np.nan}
        top = first.loc[key] if key in first.index else None
        rows.append({
            **dict(zip(MAP_KEYS, key)),
            "label": map_label(key[3], key[4], key[5]),
            "n_docs": int(m["n"].iloc[0]),
            "acc_clean": float(m["acc_clean"].iloc[0]),
            "n_units": len(m),
            "n_sig": int(sig.sum()),
            "n_sig_harm": int((sig & (delta < 0)).sum()),
            "n_sig_help": int((sig & (delta > 0)).sum()),
            "conc50": conc[0.5],
            "conc90": conc[0.9],
            "top_layer": np.nan if top is None else int(top["layer"]),
            "top_unit": np.nan if top is None else int(top["unit"]),
            "top_name": "" if top is None else unit_name(key[3], int(top["layer"]), int(top["unit"]),
                                                         int(top["n_units"])),
            "top_delta_acc": np.nan if top is None else float(top["delta_acc"]),
            "top_ci_low": np.nan if top is None else float(top["ci_low"]),
            "top_ci_high": np.nan if top is None else float(top["ci_high"]),
            "top_q": np.nan if top is None else float(top["q"]),
            "top_selected_on": "" if top is None else top["selected_on"],
            "top_sel_delta_acc": np.nan if top is None else float(top["sel_delta_acc"]),
        })
    return pd.DataFrame(rows)


def spearman(atlas: pd.DataFrame, s: Settings) -> pd.DataFrame:
    """Does importance transfer? Spearman rho of zero-ablation unit maps on ``s.split``.

    ``kind='task'``: two tasks' maps of one model (``scope`` = model); ``kind='model'``: two models'
    maps of one task (``scope`` = task). Units are matched by (layer, unit); one row per unordered pair.
    """
    cols = ["group", "kind", "scope", "a", "b", "rho", "p", "n_units"]
    rows = []
    base = atlas[(atlas["split"] == s.split) & (atlas["op"] == "zero") & atlas["group"].isin(UNIT_GROUPS)]
    for group in preferred_order(base["group"], GROUP_ORDER):
        g = base[base["group"] == group]
        views = (("task", "model", "task", s.models, s.tasks), ("model", "task", "model", s.tasks, s.models))
        for kind, scope_col, name_col, scopes, names in views:
            for scope in preferred_order(g[scope_col], scopes):
                wide = g[g[scope_col] == scope].pivot(index=["layer", "unit"], columns=name_col, values="delta_acc")
                labels = preferred_order(wide.columns, names)
                for i, a in enumerate(labels):
                    for b in labels[i + 1:]:
                        x, y = -wide[a].to_numpy(float), -wide[b].to_numpy(float)
                        rho, p = map_spearman(x, y)
                        n = int((np.isfinite(x) & np.isfinite(y)).sum())
                        rows.append({"group": group, "kind": kind, "scope": scope, "a": a, "b": b,
                                     "rho": rho, "p": p, "n_units": n})
    return pd.DataFrame(rows, columns=cols)


# ------------------------------------------------------------------------------- macros, metrics


class _Macros(dict):
    def add(self, value: object, *parts: object) -> None:
        name = tex.macro_name(*parts)
        if name in self:
            raise ValueError(f"two report numbers map to the macro name \\{name}; rename a model or task")
        self[name] = str(value)


def _verdict(delta: float, q: float, fdr: float) -> str:
    if not (np.isfinite(q) and q < fdr):
        return "no significant change"
    return "a significant drop" if delta < 0 else "a significant gain"


def _label_parts(group: str, op: str, value: float) -> tuple[str, ...]:
    return (group,) if op == "zero" else (group, op, f"{value:g}")


def build_macros(rep: Reports, s: Settings) -> dict[str, str]:
    """Every number (and the few words that depend on numbers) the paper text cites."""
    m = _Macros()
    m.add(f"{s.level * 100:g}", "CiLevel")
    m.add(f"{s.fdr:g}", "FdrLevel")
    m.add(s.n_resamples, "ReportResamples")
    m.add(s.top_k, "TopK")
    m.add(tex.escape(s.split), "ReportSplit")
    m.add(tex.escape(s.select_split), "SelectSplit")
    if s.n_choices:
        m.add(tex.pct(1.0 / s.n_choices), "ChanceAcc")
    for name, value in s.facts:
        m.add(value, name)

    clean = rep.clean
    models, tasks = preferred_order(clean["model"], s.models), preferred_order(clean["task"], s.tasks)
    m.add(len(models), "NModels")
    m.add(len(tasks), "NTasks")
    m.add(len(preferred_order(rep.atlas["model"], s.models)), "NAblatedModels")
    for name in models + [t for t in tasks if t not in models]:
        m.add(rf"\textsf{{{tex.escape(name)}}}", "Name", name)
    for (task, split), g in clean.groupby(["task", "split"], sort=False):
        m.add(int(g["n"].max()), task, split, "N")
    for split, g in clean.groupby("split", sort=False):
        m.add(int(g["n"].min()), split, "NMin")
        m.add(int(g["n"].max()), split, "NMax")
    for r in clean[clean["split"] == s.split].itertuples():
        m.add(tex.pct(r.acc), r.model, r.task, r.split, "Acc")
        m.add(tex.pct(r.ci_low), r.model, r.task, r.split, "AccLow")
        m.add(tex.pct(r.ci_high), r.model, r.task, r.split, "AccHigh")
    ablated = clean[(clean["split"] == s.split) & clean["model"].isin(rep.atlas["model"])]
    if len(ablated):
        low = ablated.loc[ablated["acc"].idxmin()]
        m.add(rf"\textsf{{{tex.escape(low['model'])}}}", "CleanMinModel")
        m.add(rf"\textsf{{{tex.escape(low['task'])}}}", "CleanMinTask")
        m.add(tex.pct(low["acc"]), "CleanMinAcc")
        m.add(tex.pct(low["ci_low"]), "CleanMinAccLow")
        m.add(tex.pct(low["ci_high"]), "CleanMinAccHigh")

    for (model, ref), g in rep.pairs.groupby(["model", "reference"], sort=False):
        pair = (model, "vs", ref)
        for r in g.itertuples():
            m.add(tex.pct(r.delta_acc), *pair, r.task, "Delta")
            m.add(tex.pct(r.ci_low), *pair, r.task, "DeltaLow")
            m.add(tex.pct(r.ci_high), *pair, r.task, "DeltaHigh")
            m.add(tex.pval(r.p_mcnemar), *pair, r.task, "P")
            m.add(tex.pval(r.q), *pair, r.task, "Q")
        m.add(int((g["q"] < s.fdr).sum()), *pair, "NSig")
        m.add(len(g), *pair, "NTasks")
        for which, row in (("Min", g.loc[g["delta_acc"].idxmin()]), ("Max", g.loc[g["delta_acc"].idxmax()])):
            m.add(rf"\textsf{{{tex.escape(row['task'])}}}", *pair, which, "Task")
            m.add(tex.pct(row["delta_acc"]), *pair, which, "Delta")
            m.add(tex.pct(row["ci_low"]), *pair, which, "DeltaLow")
            m.add(tex.pct(row["ci_high"]), *pair, which, "DeltaHigh")
            m.add(tex.pval(row["p_mcnemar"]), *pair, which, "P")
            m.add(tex.pval(row["q"]), *pair, which, "Q")
            m.add(_verdict(row["delta_acc"], row["q"], s.fdr), *pair, which, "Verdict")

    maps = rep.maps[rep.maps["split"] == s.split]
    tops = rep.tops[(rep.tops["split"] == s.split) & (rep.tops["rank"] == 1)]
    m.add(len(maps), "AtlasNMaps")
    m.add(int(maps["n_units"].sum()), "AtlasNUnits")
    m.add(int(maps["n_sig"].sum()), "AtlasNSig")
    m.add(int(maps["n_sig_harm"].sum()), "AtlasNSigHarm")
    m.add(int(maps["n_sig_help"].sum()), "AtlasNSigHelp")
    rows = rep.atlas[rep.atlas["split"] == s.split]
    m.add(tex.pct((rows["ci_high"] - rows["ci_low"]).median()), "AtlasMedianCiWidth")
    chosen_on = sorted(set(tops["selected_on"]))
    m.add(tex.escape(" / ".join(chosen_on) if chosen_on else s.select_split), "AtlasSelectedOn")
    for r in maps.itertuples():
        key = ("Atlas", r.model, r.task, *_label_parts(r.group, r.op, r.value))
        m.add(r.n_units, *key, "NUnits")
        m.add(r.n_sig, *key, "NSig")
        m.add(r.n_sig_harm, *key, "NSigHarm")
        m.add(r.n_sig_help, *key, "NSigHelp")
        m.add(tex.pct(r.conc50), *key, "ConcFifty")
        m.add(tex.pct(r.conc90), *key, "ConcNinety")
        m.add(tex.escape(r.top_name) if r.top_name else tex.DASH, *key, "TopUnit")
        m.add(tex.pct(r.top_delta_acc), *key, "TopDelta")
        m.add(tex.pct(r.top_ci_low), *key, "TopDeltaLow")
        m.add(tex.pct(r.top_ci_high), *key, "TopDeltaHigh")
        m.add(tex.pval(r.top_q), *key, "TopQ")
    for op, g in maps.groupby("op", sort=False):
        m.add(len(g), "Atlas", op, "NMaps")
        m.add(int(g["n_units"].sum()), "Atlas", op, "NUnits")
        m.add(int(g["n_sig"].sum()), "Atlas", op, "NSig")
        m.add(int(g["n_sig_harm"].sum()), "Atlas", op, "NSigHarm")
        m.add(int(g["n_sig_help"].sum()), "Atlas", op, "NSigHelp")
    for (group, op, value), g in maps.groupby(["group", "op", "value"], sort=False):
        key = ("Atlas", *_label_parts(group, op, value))
        m.add(len(g), *key, "NMaps")
        m.add(int(g["n_units"].sum()), *key, "NUnits")
        m.add(int(g["n_sig"].sum()), *key, "NSig")
        m.add(int(g["n_sig_harm"].sum()), *key, "NSigHarm")
        m.add(int(g["n_sig_help"].sum()), *key, "NSigHelp")
        m.add(int(g["n_units"].max()), *key, "UnitsPerMap")
        m.add(int((g["n_sig"] > 0).sum()), *key, "NMapsWithSig")
        for frac, word in (("conc50", "Fifty"), ("conc90", "Ninety")):
            m.add(tex.pct(g[frac].min()), *key, "Conc", word, "Min")
            m.add(tex.pct(g[frac].max()), *key, "Conc", word, "Max")
        cand = g.dropna(subset=["top_sel_delta_acc"])
        if len(cand):
            # the strongest unit of the whole map type, chosen by its effect on the selection split
            best = cand.loc[cand["top_sel_delta_acc"].idxmin()]
            m.add(rf"\textsf{{{tex.escape(best['model'])}}}", *key, "TopModel")
            m.add(rf"\textsf{{{tex.escape(best['task'])}}}", *key, "TopTask")
            m.add(tex.escape(best["top_name"]), *key, "TopUnit")
            m.add(tex.pct(best["top_delta_acc"]), *key, "TopDelta")
            m.add(tex.pct(best["top_ci_low"]), *key, "TopDeltaLow")
            m.add(tex.pct(best["top_ci_high"]), *key, "TopDeltaHigh")
            m.add(tex.pval(best["top_q"]), *key, "TopQ")

    rho = rep.spearman
    for (group, kind, scope), g in rho.groupby(["group", "kind", "scope"], sort=False):
        for r in g.itertuples():
            m.add(tex.num(r.rho, 2), scope, group, "Rho", r.a, r.b)
            m.add(tex.pval(r.p), scope, group, "Rho", r.a, r.b, "P")
        valid = g.dropna(subset=["rho"])
        m.add(tex.num(valid["rho"].mean(), 2) if len(valid) else tex.DASH, scope, group, "RhoMean")
        for which, pick in (("Min", "idxmin"), ("Max", "idxmax")):
            row = valid.loc[getattr(valid["rho"], pick)()] if len(valid) else None  # constant maps: no rho
            m.add(tex.DASH if row is None else tex.num(row["rho"], 2), scope, group, "Rho", which)
            m.add(tex.DASH if row is None else tex.escape(f"{row['a']}/{row['b']}"), scope, group, "Rho", which, "Pair")
    for (group, kind), g in rho.groupby(["group", "kind"], sort=False):
        valid = g.dropna(subset=["rho"])
        m.add(tex.num(valid["rho"].mean(), 2) if len(valid) else tex.DASH, group, "Across", kind, "RhoMean")
        m.add(int((benjamini_hochberg(valid["p"].to_numpy(float)) < s.fdr).sum()), group, "Across", kind, "NRhoSig")
        m.add(len(g), group, "Across", kind, "NRho")
    inter = rep.interactions[rep.interactions["split"] == s.split] if len(rep.interactions) else rep.interactions
    m.add(len(inter), "PairsN")
    m.add(int((inter["sign"] == "super").sum()) if len(inter) else 0, "PairsNSuper")
    m.add(int((inter["sign"] == "sub").sum()) if len(inter) else 0, "PairsNSub")
    m.add(tex.pct(inter["nonadd"].abs().median()) if len(inter) else tex.DASH, "PairsMedianAbsNonadd")
    m.add(int(inter["rank_b"].max()) + 1 if len(inter) else 0, "PairsTopK")  # units per map that pairs come from
    screen = rep.screen[(rep.screen["split"] == s.split) & (rep.screen["op"] == "zero")]
    for group, g in screen.groupby("group", sort=False):
        m.add(tex.num(g["spearman"].median(), 2), "Screen", group, "MedianRho")
        m.add(tex.num(g["recall_at_k"].median(), 2), "Screen", group, "MedianRecall")
        m.add(int(g["k"].max()), "Screen", group, "K")
        m.add(len(g), "Screen", group, "NMaps")
        m.add(int(g["screen_top_n_sig"].sum()), "Screen", group, "TopNSig")
        m.add(int(g["k"].sum()), "Screen", group, "TopN")
    return dict(m)


def _r(x: object) -> float | int | None:
    if isinstance(x, (int, np.integer)):
        return int(x)
    x = float(x)
    return float(f"{x:.6g}") if np.isfinite(x) else None  # six significant digits: small p-values survive


def screen_agreement(atlas: pd.DataFrame, k: int = 10) -> pd.DataFrame:
    """Per map, how well the first-order screen ranks units against the exact map: Spearman rho of
    the screen's estimated gold-log-likelihood change with the exact one (-delta_loss), the share
    of the exact top-k units (largest loss increase) that the screen also puts in its top k, and how
    the screen's own top k fare when checked exactly (every unit of a map is computed exactly, so
    they always are): how many of them are significant, and their mean exact delta accuracy."""
    cols = [*MAP_KEYS, "n_units", "spearman", "recall_at_k", "k", "screen_top_n_sig", "screen_top_delta_acc"]
    if "screen_delta_gold_ll" not in atlas:
        return pd.DataFrame(columns=cols)
    rows = []
    for key, m in atlas.dropna(subset=["screen_delta_gold_ll"]).groupby(MAP_KEYS, sort=True):
        exact, screen = m["delta_loss"].to_numpy(), -m["screen_delta_gold_ll"].to_numpy()
        kk = min(k, len(m))
        top = m.iloc[np.argsort(-screen, kind="stable")[:kk]]
        sig = int(top["significant"].sum()) if "significant" in top else np.nan
        rows.append({**dict(zip(MAP_KEYS, key)), "n_units": len(m), "spearman": map_spearman(screen, exact)[0],
                     "recall_at_k": recall_at_k(screen, exact, kk), "k": kk, "screen_top_n_sig": sig,
                     "screen_top_delta_acc": float(top["delta_acc"].mean())})
    return pd.DataFrame(rows, columns=cols)


def build_metrics(rep: Reports, s: Settings) -> dict[str, float | int | None]:
    """Headline numbers as a flat dict (``dvc metrics show/diff``), all measured on ``s.split``."""
    out: dict[str, float | int | None] = {}
    for r in rep.clean[rep.clean["split"] == s.split].itertuples():
        out[f"acc/{r.split}/{r.model}/{r.task}"] = _r(r.acc)
    for r in rep.pairs.itertuples():
        out[f"pair/{r.model}-vs-{r.reference}/{r.task}/delta_acc"] = _r(r.delta_acc)
        out[f"pair/{r.model}-vs-{r.reference}/{r.task}/p_mcnemar"] = _r(r.p_mcnemar)
    maps = rep.maps[rep.maps["split"] == s.split]
    for r in maps.itertuples():
        out[f"atlas/{r.model}/{r.task}/{r.label}/n_sig"] = _r(r.n_sig)
        out[f"atlas/{r.model}/{r.task}/{r.label}/n_units"] = _r(r.n_units)
        out[f"atlas/{r.model}/{r.task}/{r.label}/top_delta_acc"] = _r(r.top_delta_acc)
    for label, g in maps.groupby("label", sort=False):
        out[f"atlas/all/{label}/n_sig"] = _r(g["n_sig"].sum())
    for (group, model), g in rep.spearman[rep.spearman["kind"] == "task"].groupby(["group", "scope"], sort=False):
        out[f"spearman/{group}/{model}/mean_rho"] = _r(g["rho"].mean())
    for (group, task), g in rep.spearman[rep.spearman["kind"] == "model"].groupby(["group", "scope"], sort=False):
        out[f"spearman_models/{group}/{task}/mean_rho"] = _r(g["rho"].mean())
    inter = rep.interactions[rep.interactions["split"] == s.split] if len(rep.interactions) else rep.interactions
    if len(inter):
        out["pairs/n"] = len(inter)
        out["pairs/n_super"] = int((inter["sign"] == "super").sum())
        out["pairs/n_sub"] = int((inter["sign"] == "sub").sum())
    screen = rep.screen[rep.screen["split"] == s.split]
    for (group, op, value), g in screen.groupby(["group", "op", "value"], sort=True):
        label = map_label(group, op, value)
        out[f"screen/{label}/median_spearman"] = _r(g["spearman"].median())
        out[f"screen/{label}/median_recall_at_k"] = _r(g["recall_at_k"].median())
    return out


# ---------------------------------------------------------------------------------------- tables


def _cell(x: float, low: float, high: float) -> str:
    return rf"{tex.pct(x)} {{\scriptsize {tex.ci(low, high)}}}"


def _column(group: str, op: str, value: float) -> str:
    if op == "zero":
        return tex.escape(group)
    return rf"{tex.escape(group)} $\times${value:g}" if op == "scale" else tex.escape(f"{group} {op} {value:g}")


def _summary_table(maps: pd.DataFrame, s: Settings) -> str:
    """Significant / tested units per map type, one row per model and task."""
    types = list(dict.fromkeys(zip(maps["group"], maps["op"], maps["value"])))
    by = maps.set_index(["model", "task", "group", "op", "value"])
    rows = []
    for model in preferred_order(maps["model"], s.models):
        rows.append(None)
        for task in preferred_order(maps[maps["model"] == model]["task"], s.tasks):
            cells = []
            for t in types:
                r = by.loc[(model, task, *t)] if (model, task, *t) in by.index else None
                cells.append(tex.DASH if r is None else f"{int(r['n_sig'])}/{int(r['n_units'])}")
            acc = maps[(maps["model"] == model) & (maps["task"] == task)]["acc_clean"].iloc[0]
            rows.append([rf"\textsf{{{tex.escape(model)}}}", rf"\textsf{{{tex.escape(task)}}}", tex.pct(acc), *cells])
    return tex.booktabs(["Model", "Task", "Clean acc", *[_column(*t) for t in types]], rows, "llr" + "c" * len(types))


def build_tables(rep: Reports, s: Settings) -> dict[str, str]:
    """Booktabs fragments, one per file name; the paper wraps each in its own float and caption."""
    tables = {}
    level = f"{s.level * 100:g}\\%"
    clean = rep.clean[rep.clean["split"] == s.split]
    tasks = preferred_order(clean["task"], s.tasks)
    by = clean.set_index(["model", "task"])
    rows = []
    for model in preferred_order(clean["model"], s.models):
        cells = [_cell(*by.loc[(model, t), ["acc", "ci_low", "ci_high"]]) if (model, t) in by.index else tex.DASH
                 for t in tasks]
        rows.append([rf"\textsf{{{tex.escape(model)}}}", *cells])
    tables["clean_accuracy"] = tex.booktabs(["Model", *[rf"\textsf{{{tex.escape(t)}}}" for t in tasks]], rows,
                                       "l" + "c" * len(tasks))

    rows = []
    for _, g in rep.pairs.groupby(["model", "reference"], sort=False):
        rows.append(None)
        for r in g.itertuples():
            rows.append([rf"\textsf{{{tex.escape(r.model)}}} $-$ \textsf{{{tex.escape(r.reference)}}}",
                         rf"\textsf{{{tex.escape(r.task)}}}", tex.pct(r.acc_model), tex.pct(r.acc_reference),
                         _cell(r.delta_acc, r.ci_low, r.ci_high), tex.pval(r.p_mcnemar), tex.pval(r.q)])
    tables["model_pairs"] = tex.booktabs(
        ["Pair", "Task", "Model", "Reference", rf"$\Delta$ acc [{level} CI]", "$p$", "$q$"], rows, "llrrcrr")

    maps = rep.maps[rep.maps["split"] == s.split]
    weights = ~maps["group"].isin(GROUP_ORDER)  # matrix, magnitude, ... : weight edits, not activation sites
    for name, ops, part in (("atlas_summary", ["zero"], ~weights),
                            ("atlas_summary_weights", ["zero", "scale"], weights),
                            ("atlas_summary_scale", ["scale"], ~weights),
                            ("atlas_summary_replace", ["mean", "resample", "noise"], ~weights)):
        part = maps[maps["op"].isin(ops) & part]
        if len(part):
            tables[name] = _summary_table(part, s)

    inter = rep.interactions[rep.interactions["split"] == s.split] if len(rep.interactions) else rep.interactions
    if len(inter):
        rows = []
        for _, g in inter.groupby("model", sort=False):
            rows.append(None)
            for r in g.itertuples():
                rows.append([rf"\textsf{{{tex.escape(r.model)}}}", rf"\textsf{{{tex.escape(r.task)}}}",
                             tex.escape(f"{r.unit_a} + {r.unit_b}"), tex.pct(r.delta_acc_a), tex.pct(r.delta_acc_b),
                             tex.pct(r.delta_acc), _cell(r.nonadd, r.nonadd_ci_low, r.nonadd_ci_high)])
        tables["atlas_interactions"] = tex.booktabs(
            ["Model", "Task", "Pair", r"$\Delta_i$", r"$\Delta_j$", r"$\Delta_{ij}$",
             rf"Non-additivity [{level} CI]"], rows, "lllrrrc")

    tops = rep.tops[(rep.tops["split"] == s.split) & rep.tops["group"].isin(UNIT_GROUPS)]
    for (group, op, value), g in tops.groupby(["group", "op", "value"], sort=False):
        rows = []
        for _, gm in g.groupby("model", sort=False):
            rows.append(None)
            for r in gm.itertuples():
                rows.append([rf"\textsf{{{tex.escape(r.model)}}}", rf"\textsf{{{tex.escape(r.task)}}}", str(r.rank),
                             tex.escape(unit_name(group, r.layer, r.unit, r.n_units)),
                             _cell(r.delta_acc, r.ci_low, r.ci_high), tex.num(r.delta_loss, 2), tex.pval(r.q)])
        name = "atlas_top_" + map_label(group, op, value).replace("-", "_").replace(".", "p")
        tables[name] = tex.booktabs(
            ["Model", "Task", "Rank", "Unit", rf"$\Delta$ acc [{level} CI]", r"$\Delta$ loss", "$q$"], rows,
            "llrlcrr")
    return tables


# ---------------------------------------------------------------------------------------- driver


@dataclass
class Reports:
    clean: pd.DataFrame
    pairs: pd.DataFrame
    atlas: pd.DataFrame
    tops: pd.DataFrame
    maps: pd.DataFrame
    spearman: pd.DataFrame
    split: str = "test"
    interactions: pd.DataFrame = field(default_factory=pd.DataFrame)
    macros: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float | int | None] = field(default_factory=dict)
    tables: dict[str, str] = field(default_factory=dict)

    @property
    def screen(self) -> pd.DataFrame:
        return screen_agreement(self.atlas)

    @property
    def layer_profile(self) -> pd.DataFrame:
        cols = [*MAP_KEYS, "layer", "delta_acc", "ci_low", "ci_high", "q", "significant", "delta_loss"]
        keep = self.atlas["group"].isin(SITE_GROUPS) & (self.atlas["split"] == self.split)
        return self.atlas[keep][cols].reset_index(drop=True)


def build(ev: pd.DataFrame, ab: pd.DataFrame, s: Settings) -> Reports:
    """Everything in memory first: a failure leaves the reports folder as it was."""
    is_pair = ab["group"] == "pairs"  # joint ablations of two top units: not a map of units
    atlas = annotate_atlas(ab[~is_pair], s)
    tops = top_units(atlas, s)
    rep = Reports(clean=clean_accuracy(ev, s), pairs=model_pairs(ev, s), atlas=atlas, tops=tops,
                  maps=map_summary(atlas, tops, s), spearman=spearman(atlas, s), split=s.split,
                  interactions=interactions(ab[is_pair], s))
    rep.macros = build_macros(rep, s)
    rep.metrics = build_metrics(rep, s)
    rep.tables = build_tables(rep, s)
    return rep


def write(rep: Reports, out: Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out / "tables") as d:
        for name, text in rep.tables.items():
            write_text(d / f"{name}.tex", text)
    with atomic_dir(out / "plots") as d:
        write_csv(rep.clean[rep.clean["split"] == rep.split].reset_index(drop=True), d / "clean_accuracy.csv")
        write_csv(rep.pairs, d / "model_pairs.csv")
        write_csv(rep.layer_profile, d / "layer_profile.csv")
    with atomic_dir(out / "data") as d:
        write_csv(rep.clean, d / "clean_accuracy.csv")
        write_csv(rep.maps, d / "atlas_maps.csv")
        write_csv(rep.tops, d / "atlas_top.csv")
        write_csv(rep.spearman, d / "spearman.csv")
        write_csv(rep.screen, d / "screen_agreement.csv")
        write_csv(rep.interactions, d / "interactions.csv")
    buf = io.BytesIO()
    rep.atlas.to_parquet(buf, index=False)
    write_bytes(out / "atlas.parquet", buf.getvalue())
    write_json(rep.metrics, out / "metrics.json")
    write_text(out / "macros.tex", tex.macros_tex(rep.macros))


def aggregate(results: Path, out: Path, s: Settings) -> dict[str, float | int | None]:
    """Read the results, write every report file, return the headline metrics."""
    ev, ab = load_inputs(Path(results))
    rep = build(ev, ab, s)
    write(rep, out)
    log.info("reports in %s: %d tables, %d macros, %d metrics", out, len(rep.tables), len(rep.macros),
             len(rep.metrics))
    return rep.metrics
