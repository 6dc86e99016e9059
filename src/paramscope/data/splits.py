"""Deterministic dev/test partition of a task's evaluation documents."""

from __future__ import annotations

import numpy as np

from paramscope.errors import check_choice

SPLITS = ("dev", "test")


def split_indices(n_docs: int, seed: int, dev_fraction: float = 0.5) -> dict[str, list[int]]:
    """Disjoint, sorted doc-index lists; the same (n_docs, seed) always gives the same partition."""
    if not 0 < dev_fraction < 1:
        raise ValueError(f"dev_fraction must lie in (0, 1), got {dev_fraction}")
    perm = np.random.default_rng(seed).permutation(n_docs)
    n_dev = int(round(n_docs * dev_fraction))
    return {"dev": sorted(perm[:n_dev].tolist()), "test": sorted(perm[n_dev:].tolist())}


def check_split(split: str) -> str:
    check_choice("split", split, SPLITS)
    return split
