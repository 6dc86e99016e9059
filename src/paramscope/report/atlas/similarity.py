"""Does importance transfer? Rank correlation between the atlas's unit maps, across tasks and across models."""

from __future__ import annotations

import numpy as np
import pandas as pd

from paramscope.report.atlas.keys import GROUP_ORDER, UNIT_GROUPS
from paramscope.report.order import preferred_order
from paramscope.report.settings import Settings
from paramscope.stats import map_spearman


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
