"""Which recoveries may be reported: GBR only where the donor-target gap is significant.

GBR = (acc_transplanted - acc_target) / (acc_donor - acc_target) divides by the gap, so a gap that
could be noise makes it meaningless (and a gap near 0 makes it explode). Each (pair, task, split)
has one gap test (exact McNemar, donor vs target, stored in every row as ``p_gap``); the family is
every (pair, task) of a split in the grid, corrected with Benjamini-Hochberg. Where q >= fdr the
reported GBR and its CI are undefined (NaN); the raw ``gbr`` columns are kept beside them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from paramscope.stats import benjamini_hochberg

GAP_KEYS = ["pair", "task", "split"]


def with_gap_significance(rows: pd.DataFrame, fdr: float = 0.05) -> pd.DataFrame:
    """``rows`` plus q_gap, gap_significant and gbr_reported (+ CI): NaN where the gap is not significant."""
    gaps = rows.drop_duplicates(GAP_KEYS)[[*GAP_KEYS, "p_gap"]].copy()
    gaps["q_gap"] = np.nan
    for idx in gaps.groupby("split").groups.values():
        gaps.loc[idx, "q_gap"] = benjamini_hochberg(gaps.loc[idx, "p_gap"].to_numpy(float))
    out = rows.merge(gaps[[*GAP_KEYS, "q_gap"]], on=GAP_KEYS, how="left")
    # the donor was chosen on dev; a gap that is significant the other way on test is no gap to recover
    out["gap_significant"] = (out["q_gap"] < fdr) & (out["acc_donor"] > out["acc_clean"])
    for col in ("gbr", "gbr_ci_low", "gbr_ci_high"):
        out[col.replace("gbr", "gbr_reported", 1)] = out[col].where(out["gap_significant"])
    return out
