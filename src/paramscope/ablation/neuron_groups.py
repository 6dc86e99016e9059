"""FFN neuron groupings beside contiguous blocks (STUDY.md section 3): single neurons and clusters.

- **single neurons** (`single_neurons`): a model has far too many to ablate each exactly on every task
  and split, so the map is screened: the dev screen's `k` most harmful neurons and `k` others drawn by
  the seed are computed exactly (`atlas.screened_specs` with blocks of one).
- **clusters** (`neuron_clusters`): neurons grouped by how they co-activate on the task's dev documents.
  Each neuron's activations at the last context position (the readout position, as for `mean`) over
  the dev documents are standardised to zero mean and unit variance, and k-means groups these profiles;
  the squared distance of two standardised profiles is 2n(1 - their correlation), so a cluster holds
  neurons whose activations rise and fall together. A layer has d_ffn / `neuron_block` clusters: as
  many units, of the same mean size, as the block map, so the two maps compare unit for unit count.
  Neurons that never vary on dev share the all-zero profile and fall into one cluster. Fitted on dev,
  the same clusters for every split.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.cluster.vq import kmeans2
from torch import Tensor

from paramscope.ablation.interventions import Site, UnitSpec

NEURON_GROUPINGS = ("single_neurons", "neuron_clusters")


def cluster_neurons(acts: np.ndarray, n_clusters: int, seed: int) -> list[np.ndarray]:
    """k-means of the neurons' standardised activation profiles, ``acts`` of shape (n docs, n neurons):
    each cluster's neuron indices, sorted, clusters in order of their first neuron (empty ones dropped)."""
    acts = np.asarray(acts, dtype=np.float64)
    spread = acts.std(axis=0)
    profiles = np.divide(acts - acts.mean(axis=0), spread, out=np.zeros_like(acts), where=spread > 0).T
    n_clusters = min(n_clusters, profiles.shape[0])
    _, labels = kmeans2(profiles, n_clusters, minit="++", seed=np.random.default_rng(seed))
    members = [np.flatnonzero(labels == c) for c in range(n_clusters)]
    return sorted((m for m in members if len(m)), key=lambda m: int(m[0]))


def cluster_specs(acts: Mapping[Site, Tensor], d_ffn: int, neuron_block: int, seed: int) -> list[UnitSpec]:
    """Zero-ablation units of every layer's neuron clusters, from each layer's neuron activations on the
    dev documents (`reference.last_context_activations`, keyed by ("neurons", layer))."""
    n_clusters = max(1, d_ffn // neuron_block)
    specs = []
    for (_, layer), a in sorted(acts.items(), key=lambda item: item[0][1]):
        for members in cluster_neurons(a.cpu().numpy(), n_clusters, seed * 1_000_003 + layer):
            specs.append(UnitSpec("neurons", layer, tuple(int(i) for i in members), "zero", 0.0))
    return specs
