"""Virtual Parameter Sharpening (STUDY.md section 7): an inference-time, activation-conditioned
low-rank perturbation of frozen Linear layers, y = x W^T + b + gamma (x A) B^T, A = W^T V, B = W U."""

from paramscope.vps.policy import Policy
from paramscope.vps.selection import BUILDERS, Selection, build_selection
from paramscope.vps.wrapper import LAYER_SETS, VPSConfig, sharpen, vps_modules

__all__ = ["BUILDERS", "LAYER_SETS", "Policy", "Selection", "VPSConfig", "build_selection", "sharpen", "vps_modules"]
