"""The atlas topic: read the results, build every report in memory, then write them.

Everything is built before anything is written, so a failure leaves the reports folder as it was.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from paramscope.report import latex as tex
from paramscope.report.atlas.accuracy import clean_accuracy, model_pairs
from paramscope.report.atlas.inputs import load_inputs
from paramscope.report.atlas.macros import build_macros
from paramscope.report.atlas.maps import annotate_atlas, interactions, map_summary, top_units
from paramscope.report.atlas.metrics import build_metrics
from paramscope.report.atlas.reports import Reports
from paramscope.report.atlas.similarity import spearman
from paramscope.report.atlas.tables import build_tables
from paramscope.report.output import write_bytes, write_csv, write_json, write_text
from paramscope.report.settings import Settings
from paramscope.store import atomic_dir

log = logging.getLogger(__name__)


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


def report(cfg: DictConfig, results: Path, out: Path) -> dict[str, float | int | None]:
    """The atlas as a report topic: its settings from ``cfg``, its files straight into ``out``."""
    return aggregate(results, out, Settings.from_cfg(cfg))
