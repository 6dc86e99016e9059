"""Statistics for paired ablation results and importance maps (STUDY.md section 3)."""

from paramscope.stats.maps import (
    concentration,
    map_spearman,
    non_additivity,
    pairwise_spearman,
    recall_at_k,
)
from paramscope.stats.paired import (
    MIN_RESAMPLES,
    RatioCI,
    RecoveryCI,
    benjamini_hochberg,
    bootstrap_ratio_ci,
    bootstrap_recovery_ci,
    mcnemar_exact,
    paired_bootstrap_ci,
    paired_delta_summary,
)

__all__ = [
    "MIN_RESAMPLES",
    "RatioCI",
    "RecoveryCI",
    "benjamini_hochberg",
    "bootstrap_ratio_ci",
    "bootstrap_recovery_ci",
    "concentration",
    "map_spearman",
    "mcnemar_exact",
    "non_additivity",
    "paired_bootstrap_ci",
    "paired_delta_summary",
    "pairwise_spearman",
    "recall_at_k",
]
