"""One intervention abstraction: a unit selection plus an operation, applied as reversible hooks.

Nothing copies the model: `apply` (fixed operations) and `gated` (per-example multiplicative gates,
so that a batch can carry many variants, and so that gradients with respect to a gate screen every
unit at once) register forward(-pre) hooks and remove them on exit, also on exceptions.

Every group is cut at one *site*, a piece of the block named after TransformerLens's hook points
(`SITE_PIECES`; the adapter says where each piece is, `Adapter.hook_point`), whose activation is seen
as (..., n_units, width):

- heads: z, the input of the attention output projection, (..., n_heads, d_head). The output of that
  projection mixes all heads, so slicing it would not select a head.
- neurons: post, the input of the MLP down projection, (..., d_ffn, 1).
- attn / mlp: attn_out / mlp_out, the sublayer's contribution to the residual stream (its first
  output), (..., 1, d_model).
- layers: the block's contribution, resid_post - resid_pre, (..., 1, d_model); zeroing it makes the
  block the identity, so the residual stream passes through.

Our hooks are prepended so that any other hook (e.g. transformers' `output_hidden_states` capture)
sees the intervened values; where contexts nest on one site, the inner context's hook runs first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from transformers import PreTrainedModel

from paramscope.ablation.alignment import AlignedActivations, Layout, layout_of_call, picked_rows
from paramscope.ablation.resample import ResamplePool
from paramscope.models.adapters import Adapter, get_adapter

GROUPS: tuple[str, ...] = ("heads", "neurons", "attn", "mlp", "layers")
OPS: tuple[str, ...] = ("zero", "scale", "mean", "noise", "resample")
Site = tuple[str, int]  # (group, layer)
Edit = Callable[[Tensor], Tensor]  # (..., n_units, width) -> same shape
# The piece each group is cut at (`models.adapters`); layers take the whole block, resid_post - resid_pre.
SITE_PIECES: dict[str, str] = {"heads": "z", "neurons": "post", "attn": "attn_out", "mlp": "mlp_out"}


@dataclass(frozen=True)
class UnitSpec:
    """Units of one group in one layer and what to do to them.

    `units` lists heads or neurons (stored sorted and unique, so equal selections hash equally) and
    is empty for the single-unit groups attn, mlp and layers. `value` is alpha for `scale` and the
    standard deviation for `noise`; `mean` and `resample` take their activations from `apply(..., means=,
    pool=)`.
    """

    group: str
    layer: int
    units: tuple[int, ...] = ()
    op: str = "zero"
    value: float = 0.0

    def __post_init__(self) -> None:
        if self.group not in GROUPS:
            raise ValueError(f"unknown group '{self.group}'; valid: {', '.join(GROUPS)}")
        if self.op not in OPS:
            raise ValueError(f"unknown op '{self.op}'; valid: {', '.join(OPS)}")
        object.__setattr__(self, "units", tuple(sorted({int(u) for u in self.units})))
        if self.group in ("heads", "neurons") and not self.units:
            raise ValueError(f"group '{self.group}' needs at least one unit")
        if self.group not in ("heads", "neurons") and self.units:
            raise ValueError(f"group '{self.group}' is a single unit; units must be empty, got {self.units}")
        if self.op == "noise" and self.value < 0:
            raise ValueError(f"noise std must be >= 0, got {self.value}")

    @property
    def site(self) -> Site:
        return (self.group, self.layer)


def n_units(adapter: Adapter, group: str) -> int:
    """How many units a group has per layer (the size of a gate's last dimension)."""
    return {"heads": adapter.n_heads, "neurons": adapter.d_ffn}.get(group, 1)


def _site_width(adapter: Adapter, group: str) -> int:
    """Last dimension of a site's activation (the width of `mean` and `resample` activations)."""
    return math.prod(adapter.piece_shape(SITE_PIECES.get(group, "resid_post")))


def _as_adapter(target: PreTrainedModel | Adapter) -> Adapter:
    return target if isinstance(target, Adapter) else get_adapter(target)


def output_tensor(output: Tensor | tuple) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


def with_output_tensor(output: Tensor | tuple, first: Tensor) -> Tensor | tuple:
    """Put `first` back where `output_tensor` found it: v5 sublayers return tensors or tuples by family."""
    return (first, *output[1:]) if isinstance(output, tuple) else first


def _register(adapter: Adapter, group: str, layer: int, edit: Edit) -> RemovableHandle:
    """Hook `edit` onto the site of (group, layer); see the module docstring for the cut points."""
    count = n_units(adapter, group)

    def in_units(x: Tensor) -> Tensor:
        return edit(x.unflatten(-1, (count, -1))).flatten(-2)

    if group in SITE_PIECES:
        module, is_input = adapter.hook_point(SITE_PIECES[group], layer)
        if is_input:

            def on_input(module: nn.Module, args: tuple) -> tuple:  # v5 calls projections positionally
                return (in_units(args[0]), *args[1:])

            return module.register_forward_pre_hook(on_input, prepend=True)

        def on_output(module: nn.Module, args: tuple, output: Tensor | tuple) -> Tensor | tuple:
            return with_output_tensor(output, in_units(output_tensor(output)))

        return module.register_forward_hook(on_output, prepend=True)

    def on_block(module: nn.Module, args: tuple, kwargs: dict, output: Tensor | tuple) -> Tensor | tuple:
        hidden_in = args[0] if args else kwargs["hidden_states"]
        return with_output_tensor(output, hidden_in + in_units(output_tensor(output) - hidden_in))

    return adapter.block(layer).register_forward_hook(on_block, with_kwargs=True, prepend=True)


def check_site(adapter: Adapter, group: str, layer: int, units: Sequence[int] = ()) -> None:
    if group not in GROUPS:
        raise ValueError(f"unknown group '{group}'; valid: {', '.join(GROUPS)}")
    if not 0 <= layer < adapter.n_layers:
        raise ValueError(f"layer {layer} out of range; model has layers 0..{adapter.n_layers - 1}")
    count = n_units(adapter, group)
    bad = [u for u in units if not 0 <= u < count]
    if bad:
        raise ValueError(f"{group} units {bad} out of range 0..{count - 1} in layer {layer}")


class _Forward:
    """The rows of the forward pass under way: its layout, and for `resample` each row's donor."""

    def __init__(self, pool: ResamplePool | None) -> None:
        self.pool = pool
        self.layout: Layout | None = None
        self.donors: Tensor | None = None

    def enter(self, layout: Layout) -> None:
        self.layout = layout
        if self.pool is None:
            return
        if layout.contexts is not None:
            self.donors = self.pool.donors(layout)
        elif self.donors is None:
            raise RuntimeError("a cached forward came before any context was seen")
        else:  # the choices of the one document whose context filled the cache
            self.donors = self.donors[:1].expand(layout.offsets.shape[0])

    def on_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook on the base model: the layout is known before any site is reached."""
        self.enter(layout_of_call(args, kwargs))

    def aligned(self, a: Tensor) -> tuple[Tensor, Tensor]:
        if self.layout is None:
            raise RuntimeError("no forward pass has declared its positions yet")
        return self.layout.view(a.shape[:2])


def _spec_edit(spec: UnitSpec, means: AlignedActivations | None, generator: torch.Generator | None,
               forward: _Forward) -> Edit:
    """The fixed operation of `spec` on its selected units; the rest of the site is left as is."""
    index = list(spec.units) or [0]

    def edit(a: Tensor) -> Tensor:
        selected = a[..., index, :]
        if spec.op == "zero":
            new = torch.zeros_like(selected)
        elif spec.op == "scale":
            new = selected * spec.value
        elif spec.op in ("mean", "resample"):  # a reference activation at each position's end-aligned offset
            rows, offsets = forward.aligned(a)
            if spec.op == "mean":
                new = means.at(spec.site, torch.zeros_like(rows), offsets, index, a.shape[-2])
            else:
                new = forward.pool.sequences.at(spec.site, forward.donors.to(rows.device)[rows], offsets, index,
                                                a.shape[-2])
            new = new.to(selected)
        else:
            noise = torch.randn(selected.shape, generator=generator, dtype=selected.dtype, device=selected.device)
            new = selected + spec.value * noise
        a = a.clone()  # the site tensor may still be used elsewhere in the forward
        a[..., index, :] = new
        return a

    return edit


@contextmanager
def _hooked(adapter: Adapter, edits: Sequence[tuple[Site, Edit]]) -> Iterator[Adapter]:
    handles: list[RemovableHandle] = []
    try:
        for (group, layer), edit in edits:
            handles.append(_register(adapter, group, layer, edit))
        yield adapter
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def apply(
    target: PreTrainedModel | Adapter,
    specs: Sequence[UnitSpec],
    means: AlignedActivations | None = None,
    generator: torch.Generator | None = None,
    pool: ResamplePool | None = None,
    layout: Layout | None = None,
) -> Iterator[Adapter]:
    """Run the model with every spec applied; on exit it is exactly the clean model again.

    `means` holds the end-aligned mean site activations for `op="mean"` (`reference.site_stats`) and
    `pool` the donors for `op="resample"` (`reference.resample_pool`): each position takes the
    reference activation at its own offset from the end of its context (`alignment`), which every
    base-model forward declares through its inputs. `layout` gives it for forwards that skip the base
    model's own (the engine's branches). `generator` (on the model's device) makes `noise`
    reproducible; noise is redrawn on every forward.
    """
    adapter = _as_adapter(target)
    forward = _Forward(pool)
    edits: list[tuple[Site, Edit]] = []
    for spec in specs:
        check_site(adapter, spec.group, spec.layer, spec.units)
        if spec.op == "mean":
            if means is None or spec.site not in means.acts:
                raise ValueError(f"op 'mean' on {spec.site} needs means with activations for that site")
            _check_width(adapter, spec, means, "means")
        if spec.op == "resample":
            if pool is None or spec.site not in pool.sequences.acts:
                raise ValueError(f"op 'resample' on {spec.site} needs a pool with activations for that site")
            _check_width(adapter, spec, pool.sequences, "the pool")
        edits.append((spec.site, _spec_edit(spec, means, generator, forward)))
    aligning = any(spec.op in ("mean", "resample") for spec in specs)
    declare = (adapter.model.base_model.register_forward_pre_hook(forward.on_call, with_kwargs=True)
               if aligning else None)
    try:
        if aligning and layout is not None:
            forward.enter(layout)
        with _hooked(adapter, edits):
            yield adapter
    finally:
        if declare is not None:
            declare.remove()


def _check_width(adapter: Adapter, spec: UnitSpec, source: AlignedActivations, name: str) -> None:
    width = _site_width(adapter, spec.group)
    if source.acts[spec.site].shape[-1] != width:
        raise ValueError(f"{name} for {spec.site} have width {source.acts[spec.site].shape[-1]}; expected {width}")


def _gate_edit(gate: Tensor) -> Edit:
    def edit(a: Tensor) -> Tensor:
        rows = picked_rows(tuple(a.shape[:2]))
        # at the read positions alone (the engine's last MLP) a document has as many rows as it has reads
        g = gate[rows] if rows is not None and gate.shape[0] > 1 else gate
        shape = (g.shape[0],) + (1,) * (a.dim() - 3) + (g.shape[1], 1)
        return a * g.reshape(shape).to(a.dtype)

    return edit


@contextmanager
def gated(target: PreTrainedModel | Adapter, gates: Mapping[Site, Tensor]) -> Iterator[Adapter]:
    """Multiply each site's units by a per-example gate, so that one batch carries many variants.

    `gates[(group, layer)]` has shape (batch, n_units) (batch may be 1 to broadcast; for attn, mlp and
    layers n_units is 1 and shape (batch,) is accepted). Row b gates example b: 0 ablates, alpha
    scales, 1 leaves a unit alone, and a gate that requires grad gives attribution-patching gradients.
    """
    adapter = _as_adapter(target)
    edits: list[tuple[Site, Edit]] = []
    for (group, layer), gate in gates.items():
        check_site(adapter, group, layer)
        count = n_units(adapter, group)
        gate = gate.reshape(gate.shape[0], -1)
        if gate.shape[1] != count:
            raise ValueError(f"gate for {(group, layer)} has {gate.shape[1]} units per row; expected {count}")
        edits.append(((group, layer), _gate_edit(gate)))
    with _hooked(adapter, edits):
        yield adapter


@contextmanager
def record(target: PreTrainedModel | Adapter, sites: Sequence[Site]) -> Iterator[dict[Site, list[Tensor]]]:
    """Collect (detached) site activations on every forward, e.g. to compute `means` for `apply`.

    Each entry has the site's full last dimension, cut exactly where `apply` and `gated` cut.
    """
    adapter = _as_adapter(target)
    seen: dict[Site, list[Tensor]] = {site: [] for site in sites}

    def keeper(site: Site) -> Edit:
        def edit(a: Tensor) -> Tensor:
            seen[site].append(a.detach().flatten(-2))
            return a

        return edit

    for group, layer in sites:
        check_site(adapter, group, layer)
    with _hooked(adapter, [(site, keeper(site)) for site in sites]):
        yield seen
