"""Weight-edit units: whole matrices, |w| magnitude bins and their random controls, edited reversibly.

Unlike the activation groups of `interventions` (hooks on a site), these units are sets of weight
entries of the attention and MLP projections (`Adapter.linear_modules()`). `edited` changes exactly
those entries in place under `torch.no_grad()` and writes the saved original values back on exit, also
on exceptions, so the model is bit-exactly the clean model again; it never copies the model (only the
edited entries are saved).

Groups (one row per `WeightUnit`; `layer` is -1 where a unit spans layers):

- matrix: one named projection, every entry (unit = its index in `linear_modules()` order).
- magnitude: rank-quantile bins of |w| within each projection kind across all layers (a kind is a
  module's name within its block, e.g. GPT-NeoX's `attention.query_key_value`, `attention.dense`,
  `mlp.dense_h_to_4h`, `mlp.dense_4h_to_h`): the kind's entries sorted by |w| (ties in a fixed, stable
  order) and cut into `n_bins` bins of (nearly) equal size, bin 0 the smallest. Every entry is in
  exactly one bin of its kind. Binning within a kind, not over all attention or all MLP projections,
  keeps matrices of different scales (input vs output projections) from filling whole bins by
  themselves. unit = kind index * n_bins + bin, kinds in `linear_modules()` order.
- magnitude_matrix: the same bins within each single matrix (unit = matrix index * n_bins + bin, in
  `linear_modules()` order; `layer` is the matrix's layer), for where a type-wide bin hides that one
  matrix's large weights matter and another's do not.
- random: for each magnitude bin, entries drawn uniformly without replacement from each matrix, as
  many from each as the bin holds in it (the bin's composition per matrix), seeded by (seed, unit);
  same unit index as the bin. It differs from the bin only in which entries of each matrix it takes.

Entries are flat indices into each parameter `module.weight` as stored (GPT-2's `Conv1D` included).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from paramscope.models.adapters import Adapter

WEIGHT_GROUPS: tuple[str, ...] = ("matrix", "magnitude", "magnitude_matrix", "random")
WEIGHT_OPS: tuple[str, ...] = ("zero", "scale")


@dataclass(frozen=True, eq=False)
class WeightUnit:
    """A set of weight entries: `entries[module name]` = sorted unique flat indices into its weight."""

    group: str
    layer: int
    unit: int
    name: str
    entries: dict[str, Tensor] = field(repr=False)

    @property
    def n_weights(self) -> int:
        return int(sum(idx.numel() for idx in self.entries.values()))


def layer_of(adapter: Adapter, name: str) -> int:
    return int(name[len(adapter._blocks) + 1:].split(".")[0])


def matrix_type(adapter: Adapter, name: str) -> str:
    """`attn` or `mlp`: which sublayer a projection (by `linear_modules()` name) belongs to."""
    return "attn" if (projection_kind(adapter, name) + ".").startswith(adapter._attention + ".") else "mlp"


def projection_kind(adapter: Adapter, name: str) -> str:
    """A projection's name within its block (`linear_modules()` name without the block prefix)."""
    return name[len(adapter._blocks) + 1:].split(".", 1)[1]


def _by_kind(adapter: Adapter) -> dict[str, list[tuple[str, nn.Module]]]:
    found: dict[str, list[tuple[str, nn.Module]]] = {}
    for name, module in adapter.linear_modules().items():
        found.setdefault(projection_kind(adapter, name), []).append((name, module))
    return found


def _split(names: list[str], offsets: Tensor, flat: Tensor) -> dict[str, Tensor]:
    """Global indices (into the type's concatenated weights) -> sorted flat indices per matrix."""
    flat = flat.sort().values
    which = torch.searchsorted(offsets, flat, right=True) - 1
    out = {}
    for i, name in enumerate(names):
        sel = flat[which == i] - offsets[i]
        if sel.numel():
            out[name] = sel
    return out


def matrix_units(adapter: Adapter) -> Iterator[WeightUnit]:
    for i, (name, module) in enumerate(adapter.linear_modules().items()):
        idx = torch.arange(module.weight.numel(), device=module.weight.device)
        yield WeightUnit("matrix", layer_of(adapter, name), i, name, {name: idx})


def _type_ranks(modules: list[tuple[str, nn.Module]]) -> tuple[list[str], Tensor, Tensor]:
    names = [n for n, _ in modules]
    sizes = torch.tensor([m.weight.numel() for _, m in modules])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)[:-1]])
    with torch.no_grad():
        mags = torch.cat([m.weight.detach().reshape(-1).abs().cpu() for _, m in modules])
    order = torch.argsort(mags, stable=True)
    return names, offsets, order


def magnitude_units(adapter: Adapter, n_bins: int = 10) -> Iterator[WeightUnit]:
    for t, (kind, modules) in enumerate(_by_kind(adapter).items()):
        names, offsets, order = _type_ranks(modules)
        for b, chunk in enumerate(torch.tensor_split(order, n_bins)):
            yield WeightUnit("magnitude", -1, t * n_bins + b, f"{kind} bin {b} of {n_bins}",
                             _split(names, offsets, chunk))


def matrix_magnitude_units(adapter: Adapter, n_bins: int = 10) -> Iterator[WeightUnit]:
    for i, (name, module) in enumerate(adapter.linear_modules().items()):
        _, _, order = _type_ranks([(name, module)])
        for b, chunk in enumerate(torch.tensor_split(order, n_bins)):
            yield WeightUnit("magnitude_matrix", layer_of(adapter, name), i * n_bins + b,
                             f"{name} bin {b} of {n_bins}", {name: chunk.sort().values.to(module.weight.device)})


def random_units(adapter: Adapter, n_bins: int = 10, seed: int = 0) -> Iterator[WeightUnit]:
    sizes = {name: module.weight.numel() for name, module in adapter.linear_modules().items()}
    for bin_unit in magnitude_units(adapter, n_bins):
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + bin_unit.unit)
        drawn = {name: torch.randperm(sizes[name], generator=gen)[: idx.numel()].sort().values.to(idx.device)
                 for name, idx in bin_unit.entries.items()}
        yield WeightUnit("random", -1, bin_unit.unit, f"random control for {bin_unit.name}", drawn)


def weight_units(adapter: Adapter, group: str, n_bins: int = 10, seed: int = 0) -> Iterator[WeightUnit]:
    """Every unit of a weight group (see the module docstring)."""
    if group == "matrix":
        return matrix_units(adapter)
    if group == "magnitude":
        return magnitude_units(adapter, n_bins)
    if group == "magnitude_matrix":
        return matrix_magnitude_units(adapter, n_bins)
    if group == "random":
        return random_units(adapter, n_bins, seed)
    raise ValueError(f"unknown weight group '{group}'; valid: {', '.join(WEIGHT_GROUPS)}")


def first_layer(adapter: Adapter, unit: WeightUnit) -> int:
    """The first block whose output the unit's edit changes (the earliest layer among its matrices)."""
    return min(layer_of(adapter, name) for name in unit.entries)


@contextmanager
def edited(adapter: Adapter, unit: WeightUnit, op: str = "zero", value: float = 0.0) -> Iterator[Adapter]:
    """The model with `unit`'s entries zeroed (`op="zero"`) or scaled by `value` (`op="scale"`).

    The original values are saved before each matrix is touched and written back on exit (also on
    exceptions), so every parameter is bit-exactly what it was.
    """
    if op not in WEIGHT_OPS:
        raise ValueError(f"weight units take op {', '.join(WEIGHT_OPS)}; got '{op}'")
    modules = adapter.linear_modules()
    missing = sorted(set(unit.entries) - set(modules))
    if missing:
        raise ValueError(f"unit '{unit.name}' names matrices the model does not have: {missing}")
    saved: list[tuple[Tensor, Tensor | None, Tensor]] = []  # (parameter, flat index or None, old values)
    try:
        with torch.no_grad():
            for name, idx in unit.entries.items():
                weight = modules[name].weight
                idx = idx.to(weight.device)
                if weight.is_contiguous():
                    flat = weight.view(-1)
                    saved.append((weight, idx, flat[idx].clone()))
                    flat[idx] = 0.0 if op == "zero" else flat[idx] * value
                else:  # never for nn.Linear / Conv1D as built, but stay exact if it happens
                    saved.append((weight, None, weight.detach().clone()))
                    mask = torch.zeros(weight.numel(), dtype=torch.bool, device=weight.device)
                    mask[idx] = True
                    mask = mask.view(weight.shape)
                    weight.copy_(torch.where(mask, weight * (0.0 if op == "zero" else value), weight))
        yield adapter
    finally:
        with torch.no_grad():
            for weight, idx, old in reversed(saved):
                if idx is None:
                    weight.copy_(old)
                else:
                    weight.view(-1)[idx] = old
