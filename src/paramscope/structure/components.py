"""Independent substructures of the surviving entries, and inference through them.

**Dependency graph** (scipy.sparse). Nodes: the d_model residual channels (shared by every block) and,
per block, its attention units and its neurons (`units.py`). Every surviving (non-zero) entry links the
residual channel and the unit it connects, so an edge of the graph is an edge of `units.py` with at
least one entry left. Inside an attention unit the softmax couples all of its channels, so a unit is a
node and never split. Connected components are reported per block (residual channels + that block's
units, with that block's entries only) and across the network (all blocks; residual channels are shared
between blocks). A unit with no surviving entry is *isolated*: it can be dropped whole. Layer norms mix
all residual channels, so a network component is a statement about weights, not an exact split of the
computation across blocks.

**Components run apart** (`substructure_logits`): each non-trivial network component is run as a
model of its own: only its surviving entries (every other entry zeroed) and only its residual channels
written by the embeddings (its own inputs). Were the components independent computations, the masked
model's last residual stream would be the sum of theirs (biases counted once), so the logits read out
from that sum are compared with the masked model's. Layer norms and the nonlinearities couple
components, and residual channels in no component still enter every layer norm, so the difference is
whatever it is, reported as measured. (Within one projection the non-zero blocks (`matrix_blocks`)
are a statement about that matrix alone: running them as separate products only reorders the same
sums, so it is not a check.)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from paramscope.models.adapters import Adapter
from paramscope.structure.anneal import masked
from paramscope.structure.units import KINDS, MatrixRole


@dataclass(frozen=True)
class NodeIndex:
    """Node ids: residual channels first, then each (layer, kind)'s units in a contiguous range."""

    d_model: int
    offsets: dict[tuple[int, str], int]
    sizes: dict[tuple[int, str], int]

    @classmethod
    def build(cls, d_model: int, units: Mapping[tuple[int, str], int]) -> NodeIndex:
        offsets, start = {}, d_model
        for key in sorted(units):
            offsets[key] = start
            start += units[key]
        return cls(d_model, offsets, dict(units))

    @property
    def n_nodes(self) -> int:
        return self.d_model + sum(self.sizes.values())

    def block_nodes(self, layer: int) -> np.ndarray:
        unit_nodes = [np.arange(o, o + self.sizes[k]) for k, o in self.offsets.items() if k[0] == layer]
        return np.concatenate([np.arange(self.d_model), *unit_nodes])


def dependency_graph(roles: Mapping[str, MatrixRole], kept: Mapping[str, np.ndarray], nodes: NodeIndex,
                     layer: int | None = None) -> sparse.csr_matrix:
    """Symmetric adjacency (n_nodes x n_nodes) of the surviving entries (all blocks, or one `layer`)."""
    sources, targets = [], []
    for name, role in roles.items():
        if layer is not None and role.layer != layer:
            continue
        residual, unit = role.residual_and_unit(kept[name].shape)
        keep = kept[name]
        sources.append(residual[keep])
        targets.append(unit[keep] + nodes.offsets[(role.layer, role.kind)])
    src = np.concatenate(sources) if sources else np.zeros(0, dtype=int)
    dst = np.concatenate(targets) if targets else np.zeros(0, dtype=int)
    graph = sparse.coo_matrix((np.ones(src.size, dtype=np.int8), (src, dst)), shape=(nodes.n_nodes,) * 2)
    return (graph + graph.T).tocsr()


def component_summary(graph: sparse.csr_matrix, nodes: NodeIndex, members: np.ndarray) -> dict[str, object]:
    """Components of the subgraph on `members`: sizes of the non-trivial ones and the isolated nodes."""
    sub = graph[members][:, members]
    _, labels = connected_components(sub, directed=False)
    degree = np.asarray(sub.sum(axis=1)).ravel()
    sizes = np.bincount(labels[degree > 0]) if (degree > 0).any() else np.zeros(0, dtype=int)
    sizes = np.sort(sizes[sizes > 0])[::-1]
    is_residual = members < nodes.d_model
    isolated = degree == 0
    possible = int(is_residual.sum()) * int((~is_residual).sum())  # the graph is bipartite
    return {
        "n_nodes": int(members.size),
        "n_edges": int(sub.nnz // 2),
        "edge_density": float(sub.nnz / 2 / possible) if possible else 0.0,
        "n_components": int(sizes.size),  # components with at least one edge
        "largest": int(sizes[0]) if sizes.size else 0,
        "largest_frac": float(sizes[0] / members.size) if sizes.size else 0.0,
        "isolated_residual": int((isolated & is_residual).sum()),
        "isolated_units": int((isolated & ~is_residual).sum()),
        "component_sizes": sizes.tolist(),
    }


def component_table(roles: Mapping[str, MatrixRole], kept: Mapping[str, np.ndarray], nodes: NodeIndex,
                    n_layers: int) -> pd.DataFrame:
    """One row per block and one for the whole network."""
    rows = []
    for layer in range(n_layers):
        graph = dependency_graph(roles, kept, nodes, layer)
        rows.append({"scope": "block", "layer": layer, **component_summary(graph, nodes, nodes.block_nodes(layer))})
        for kind in KINDS:
            if (layer, kind) in nodes.offsets:
                start = nodes.offsets[(layer, kind)]
                degree = np.asarray(graph[start : start + nodes.sizes[(layer, kind)]].sum(axis=1)).ravel()
                rows[-1][f"isolated_{kind}"] = int((degree == 0).sum())
    graph = dependency_graph(roles, kept, nodes)
    rows.append({"scope": "network", "layer": -1, **component_summary(graph, nodes, np.arange(nodes.n_nodes))})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Block:
    rows: torch.Tensor
    cols: torch.Tensor
    weight: torch.Tensor  # weight[rows][:, cols], dense


def matrix_blocks(weight: torch.Tensor) -> list[Block]:
    """Components of a (d_out, d_in) matrix's non-zero pattern as dense blocks (block-diagonal form)."""
    d_out, d_in = weight.shape
    rows, cols = np.nonzero(weight.detach().cpu().numpy())
    pattern = sparse.coo_matrix((np.ones(rows.size, dtype=np.int8), (rows, d_out + cols)), shape=(d_out + d_in,) * 2)
    _, labels = connected_components(pattern, directed=False)
    blocks = []
    for label in np.unique(labels[rows]):
        r = torch.from_numpy(np.flatnonzero(labels[:d_out] == label)).to(weight.device)
        c = torch.from_numpy(np.flatnonzero(labels[d_out:] == label)).to(weight.device)
        blocks.append(Block(r, c, weight.detach()[r][:, c].clone()))
    return blocks


def network_labels(graph: sparse.csr_matrix) -> np.ndarray:
    """Component of every node of the network graph; -1 for nodes without any surviving entry."""
    _, labels = connected_components(graph, directed=False)
    degree = np.asarray(graph.sum(axis=1)).ravel()
    return np.where(degree > 0, labels, -1)


def _input_embeddings(adapter: Adapter) -> list[torch.nn.Parameter]:
    """Every embedding that writes the residual stream: tokens, and positions where the family adds
    them (GPT-2/Neo's `wpe`)."""
    found = [adapter.embeddings().weight]
    position = getattr(adapter.model.base_model, "wpe", None)
    if position is not None:
        found.append(position.weight)
    return found


@contextmanager
def only_channels(adapter: Adapter, channels: np.ndarray) -> Iterator[None]:
    """The embeddings write only residual `channels` (the others' columns zeroed, restored on exit)."""
    saved = []
    drop = torch.from_numpy(np.setdiff1d(np.arange(adapter.d_model), channels))
    try:
        with torch.no_grad():
            for weight in _input_embeddings(adapter):
                saved.append((weight, weight[:, drop].clone()))
                weight[:, drop] = 0.0
        yield
    finally:
        with torch.no_grad():
            for weight, old in saved:
                weight[:, drop] = old


def _last_residual(adapter: Adapter, ids: torch.Tensor) -> torch.Tensor:
    """The last block's output (the residual stream before the final norm) for `ids`."""
    seen: list[torch.Tensor] = []
    handle = adapter.block(adapter.n_layers - 1).register_forward_hook(
        lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out))
    try:
        adapter.model.base_model(input_ids=ids, use_cache=False)
    finally:
        handle.remove()
    return seen[-1]


@torch.inference_mode()
def substructure_logits(adapter: Adapter, roles: Mapping[str, MatrixRole], kept: Mapping[str, np.ndarray],
                        nodes: NodeIndex, contexts: list[torch.Tensor]
                        ) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
    """(the model's logits, the logits of its network components run apart and recombined, the number
    of components) for each context (1 x T ids), with the model as it is now (masked by the caller to
    `kept`). Each component keeps only its entries and its own residual channels' embeddings; the
    recombined residual is sum_c h_c - (m - 1) h_0, where h_0 is the run with no entries and no inputs
    (the biases alone, which every component's run contains once)."""
    labels = network_labels(dependency_graph(roles, kept, nodes))
    components = [int(c) for c in np.unique(labels) if c >= 0]
    entry_labels = {name: labels[role.residual_and_unit(kept[name].shape)[0]] for name, role in roles.items()}
    norm, unembed = adapter.final_norm(), adapter.unembedding()
    runs: list[list[torch.Tensor]] = []
    for c in [*components, None]:  # None: no entries, no inputs
        outside = {n: kept[n] & (entry_labels[n] != c) for n in roles}
        channels = np.flatnonzero(labels[: nodes.d_model] == c) if c is not None else np.zeros(0, dtype=int)
        with masked(adapter, outside), only_channels(adapter, channels):
            runs.append([_last_residual(adapter, ids) for ids in contexts])
    *parts, empty = runs
    reference, recombined = [], []
    for i, ids in enumerate(contexts):
        reference.append(adapter.model(input_ids=ids).logits[0].float().cpu())
        h = sum((p[i] for p in parts), torch.zeros_like(empty[i])) - (len(parts) - 1) * empty[i]
        recombined.append(unembed(norm(h))[0].float().cpu())
    return reference, recombined, len(components)


def block_table(blocks: Mapping[str, list[Block]], roles: Mapping[str, MatrixRole],
                shapes: Mapping[str, tuple[int, int]]) -> pd.DataFrame:
    """One row per projection: how many independent blocks it splits into and the largest one's shape."""
    rows = []
    for name, found in blocks.items():
        largest = max(found, key=lambda b: b.weight.numel(), default=None)
        rows.append({
            "matrix": name, "layer": roles[name].layer, "matrix_type": roles[name].matrix_type,
            "d_out": shapes[name][0], "d_in": shapes[name][1], "n_blocks": len(found),
            "largest_rows": int(largest.rows.numel()) if largest else 0,
            "largest_cols": int(largest.cols.numel()) if largest else 0,
            "block_entries": int(sum(b.weight.numel() for b in found)),
        })
    return pd.DataFrame(rows)
