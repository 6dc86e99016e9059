"""The units of each ablation group, enumerated once for the loop, the engine and the screen."""

from __future__ import annotations

from collections.abc import Iterator

from paramscope.ablation.interventions import UnitSpec
from paramscope.models.adapters import Adapter


def unit_specs(adapter: Adapter, group: str, op: str, value: float, neuron_block: int = 64) -> Iterator[UnitSpec]:
    """Every unit of ``group``: heads one by one, neurons in contiguous blocks, sublayers, layers."""
    for layer in range(adapter.n_layers):
        if group == "heads":
            for h in range(adapter.n_heads):
                yield UnitSpec("heads", layer, (h,), op, value)
        elif group == "neurons":
            for start in range(0, adapter.d_ffn, neuron_block):
                yield UnitSpec("neurons", layer, tuple(range(start, min(start + neuron_block, adapter.d_ffn))),
                               op, value)
        else:
            yield UnitSpec(group, layer, (), op, value)


def unit_label(spec: UnitSpec) -> int:
    """The row's ``unit`` column: head index, first neuron of a block, or -1 for a whole site."""
    return spec.units[0] if spec.units else -1


def unit_name(spec: UnitSpec) -> str:
    """The row's ``unit_name`` column, e.g. ``L1 head 3``, ``L0 neurons 64-127``, ``L2 mlp``."""
    if spec.group == "heads":
        return (f"L{spec.layer} head {spec.units[0]}" if len(spec.units) == 1
                else f"L{spec.layer} heads {list(spec.units)}")
    if spec.group == "neurons":
        lo, hi = spec.units[0], spec.units[-1]
        if hi - lo + 1 == len(spec.units):
            return f"L{spec.layer} neurons {lo}-{hi}"
        return f"L{spec.layer} neurons {list(spec.units)}"
    return f"L{spec.layer} {spec.group}"
