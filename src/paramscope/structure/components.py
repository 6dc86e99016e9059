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

**Decomposed inference** is exact where the structure allows it: inside each projection, the bipartite
graph (output rows + input columns, one edge per non-zero entry) splits the masked matrix into
components; after permuting rows and columns the matrix is block-diagonal with one dense block per
component (rows without entries output only their bias). `decomposed` runs every projection as those
independent block products instead of one dense product, and the study checks that the logits equal
the masked dense model's.
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

from paramscope.models.adapters import Adapter, weight_in_out
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


def _block_forward(blocks: list[Block], bias: torch.Tensor | None, d_out: int):
    def forward(x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(*x.shape[:-1], d_out)
        for block in blocks:
            out[..., block.rows] = x[..., block.cols] @ block.weight.T
        return out if bias is None else out + bias
    return forward


@contextmanager
def decomposed(adapter: Adapter) -> Iterator[dict[str, list[Block]]]:
    """Every projection computed as independent block products of its current (masked) weights.

    Replaces each module's `forward` for the duration (hooks still run) and restores it on exit.
    Yields the blocks by module name.
    """
    found: dict[str, list[Block]] = {}
    modules = adapter.linear_modules()
    try:
        for name, module in modules.items():
            weight = weight_in_out(module)
            found[name] = matrix_blocks(weight)
            module.forward = _block_forward(found[name], module.bias, weight.shape[0])
        yield found
    finally:
        for module in modules.values():
            module.__dict__.pop("forward", None)


def block_table(blocks: Mapping[str, list[Block]], roles: Mapping[str, MatrixRole], shapes: Mapping[str, tuple[int, int]]) -> pd.DataFrame:
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
