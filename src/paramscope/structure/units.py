"""Which units each weight entry links: the vocabulary of edges and of the dependency graph.

Every attention and MLP projection of a block (`Adapter.linear_modules()`) either *reads* the residual
stream (input = d_model residual channels; its rows feed units) or *writes* it (output = residual
channels; its columns come from units). The units are the study's (STUDY.md section 3):

- attention: a key/value group, i.e. a head when every head has its own keys and values (GPT-NeoX, GPT-2,
  GPT-Neo). Under grouped-query attention the heads that share one k/v projection share parameters, so
  they are one unit here.
- MLP: a neuron (an entry of the down projection's input).

An entry W[o, i] (weights seen as (d_out, d_in), see `weight_in_out`) therefore links residual channel i
and unit u(o) for a reader, or unit u(i) and residual channel o for a writer. An *edge* (i, u) of a
block is the set of every entry, in any of the block's matrices, that links residual channel i and unit
u: for a GPT-NeoX head, the 3 d_head query/key/value entries of column i in that head's rows of
`query_key_value` plus the d_head entries of row i in that head's columns of `dense`; for a neuron j,
W_in[j, i] and W_out[i, j] (and W_gate[j, i] where there is a gate).

Fused query/key/value projections order their rows differently by family (`Adapter.fused_qkv_head`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn
from transformers.pytorch_utils import Conv1D

from paramscope.ablation.weights import layer_of
from paramscope.models.adapters import Adapter, weight_in_out

KINDS = ("heads", "neurons")


@dataclass(frozen=True)
class MatrixRole:
    """How one projection's entries map to (residual channel, unit)."""

    name: str  # `linear_modules()` name
    layer: int
    kind: str  # "heads" (attention units) or "neurons"
    matrix_type: str  # attn_in, attn_out, mlp_in, mlp_out
    reads_residual: bool  # True: columns are residual channels and rows are units' inputs
    unit_of: np.ndarray  # unit index of every row (readers) or column (writers)

    def residual_and_unit(self, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(residual channel, unit) of every entry of a (d_out, d_in) matrix, both of that shape."""
        rows, cols = np.indices(shape)
        if self.reads_residual:
            return cols, self.unit_of[rows]
        return rows, self.unit_of[cols]


def _attention_units(adapter: Adapter, name: str, module: nn.Module, n_units: int) -> np.ndarray:
    """Attention unit (k/v group) of each row of a reader."""
    d_out = weight_in_out(module).shape[0]
    d_head, n_heads = adapter.d_head, adapter.n_heads
    rows = np.arange(d_out)
    if d_out == 3 * n_heads * d_head:  # fused q/k/v
        return adapter.fused_qkv_head(rows) * n_units // n_heads
    if d_out % d_head:
        raise ValueError(f"{name}: {d_out} outputs are not whole heads of size {d_head}")
    module_heads = d_out // d_head  # n_heads for queries, the number of k/v groups for keys and values
    return (rows // d_head) * n_units // module_heads


def n_attention_units(adapter: Adapter, layer: int) -> int:
    """k/v groups: the fewest heads that any separate query/key/value projection of the layer has."""
    out_proj = adapter.attn_out_proj(layer)
    readers = [m for m in adapter.attention(layer).modules()
               if isinstance(m, (nn.Linear, Conv1D)) and m is not out_proj]
    sizes = [weight_in_out(m).shape[0] // adapter.d_head for m in readers]
    separate = [s for s in sizes if s != 3 * adapter.n_heads]
    return min(separate) if separate else adapter.n_heads


def matrix_roles(adapter: Adapter) -> dict[str, MatrixRole]:
    """The role of every projection of `adapter.linear_modules()`, in that order."""
    roles: dict[str, MatrixRole] = {}
    units_per_layer = {layer: n_attention_units(adapter, layer) for layer in range(adapter.n_layers)}
    for name, module in adapter.linear_modules().items():
        layer = layer_of(adapter, name)
        d_out, d_in = weight_in_out(module).shape
        attention = any(module is m for m in adapter.attention(layer).modules())
        if attention:
            n_units = units_per_layer[layer]
            if module is adapter.attn_out_proj(layer):
                head = np.arange(d_in) // adapter.d_head
                roles[name] = MatrixRole(name, layer, "heads", "attn_out", False, head * n_units // adapter.n_heads)
            else:
                roles[name] = MatrixRole(name, layer, "heads", "attn_in", True,
                                         _attention_units(adapter, name, module, n_units))
        elif module is adapter.mlp_down_proj(layer):
            roles[name] = MatrixRole(name, layer, "neurons", "mlp_out", False, np.arange(d_in))
        else:
            if d_out != adapter.d_ffn:
                raise ValueError(f"{name}: an MLP reader must have d_ffn={adapter.d_ffn} outputs, has {d_out}")
            roles[name] = MatrixRole(name, layer, "neurons", "mlp_in", True, np.arange(d_out))
    return roles


def n_units(adapter: Adapter, layer: int, kind: str) -> int:
    return n_attention_units(adapter, layer) if kind == "heads" else adapter.d_ffn
