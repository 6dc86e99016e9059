"""Model transplantation (STUDY.md section 5, seed 001): activation-selected modules copied, or blended
by a strength alpha, from a stronger related model into a weaker one, with random and layer-matched
controls and copy-all, scored on the same documents as the target."""

from paramscope.transplant.apply import export_transplant, transplanted
from paramscope.transplant.modules import Module, check_compatible, module_registry
from paramscope.transplant.select import (
    RANKINGS,
    layer_matched,
    module_activity,
    random_order,
    rank_modules,
)

__all__ = [
    "RANKINGS",
    "Module",
    "check_compatible",
    "export_transplant",
    "layer_matched",
    "module_activity",
    "module_registry",
    "random_order",
    "rank_modules",
    "transplanted",
]
