"""The atlas topic: from result rows to the numbers the paper cites: tables, macros, metrics and tidy plot data.

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

Unlike the other topics it writes into the reports folder itself, not a ``reports/<topic>`` folder: the paper
and the figures stage read these files there. One concern a module: ``inputs`` (loading and checks), ``keys``
(map keys, names, row order), ``accuracy``, ``maps`` and ``similarity`` (statistics), ``reports`` (the report
in memory), ``macros``, ``metrics`` and ``tables`` (what is written), ``topic`` (build, then write).
"""

from paramscope.report.atlas.topic import aggregate, report

__all__ = ["aggregate", "report"]
