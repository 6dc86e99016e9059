"""Virtual Parameter Sharpening (STUDY.md section 7): an inference-time, activation-conditioned
low-rank perturbation of frozen Linear layers, y = x W^T + b + gamma (x A) B^T, A = W^T V, B = W U."""
