"""Fast exact ablation maps: branch at the ablated layer and run every variant of that layer at once.

The one-unit-at-a-time loop (`interventions.apply` + `scorer.score` per unit) runs the whole model
for every unit. Ablating a unit of layer l changes nothing before block l, so here, per batch of
documents (one-token choices read at the last context position; multi-token choices packed one row
per document, `evaluation.packing`, exactly as the scorer runs them):

1. **Trunk.** The clean model runs once. A forward pre-hook on every block records exactly what the
   model passed to it: the residual stream entering block l, and the attention mask, rotary
   `position_embeddings`, position ids, ... that the family's own forward built for that block.
   Hooks also record the pieces of each branch block that the variants reuse (below).
2. **Branch.** For every layer l, its variants (heads, neuron blocks, or its single site) are
   stacked along the batch dimension (row v*B + b is variant v of document b), and blocks l+1..L-1
   run on them with their recorded arguments, tensors with a batch dimension tiled to match. The
   output of block l itself is rebuilt from recorded pieces, with the family's own arithmetic and
   modules, recomputing only what the ablation changes:
     - layers: input + gate x (output - input), the `layers` hook's own formula;
     - neurons / mlp: the MLP output (the down projection re-applied to the gated neuron
       activations, or gate x the MLP output) plus the residual it is added to;
     - heads / attn: the attention output (the output projection re-applied to the gated head
       activations, or gate x the attention output); then for a parallel residual
       (`Adapter.parallel_residual`) (MLP output + attention output) + input, and for a sequential
       block the MLP re-run on the new residual (its norm and MLP modules only: queries, keys and
       values are not recomputed).
   The pieces are the adapter's, named after TransformerLens's hook points (`models.adapters`):
   resid_pre, z, attn_out, resid_mid, post, mlp_out, resid_post.
   Each rebuild is checked bit for bit against the clean block output of the first trunk (with
   gates 1); where a block does something else, that site falls back to re-running block
   l whole under `interventions.gated`, which is exact for any block.
3. **Readout.** Only the read positions (the last context position, and a packed row's choice
   positions) are normalised and unembedded, and the last block's MLP runs at those positions only
   (`_mlp_at`): nothing else of the last block is read.

Why call the blocks with recorded arguments rather than re-run the base model with a hook that
swaps block l's input: the base model cannot skip blocks 0..l-1 without mutating its layer list,
and the recorded arguments are by construction what transformers v5 builds for each family (GPT-2
passes the causal mask positionally, GPT-Neo by keyword with absolute position embeddings added
before block 0, GPT-NeoX/Llama/Qwen2 pass `position_embeddings=(cos, sin)` from their rotary module,
Qwen2 may pass a different mask per layer type). Nothing is re-derived, so nothing drifts from the
model's own forward, and the model is never modified (only hooks, removed on exit).

Exactness: every variant performs the loop's floating-point operations on the same values; what
differs is batch composition (variants x documents instead of documents) and the last block's MLP
on one position, which can change BLAS blocking. The tests bound the difference at 1e-5; on a
trained model it is at the level of the loop's own batch-size sensitivity.

Documents that are not plain multiple choice (loglikelihood, multiple-input) or do not pack
(`packing.packing_limit`) fall back to the plain loop (`apply` + `score`) and are merged back in order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from paramscope.ablation.alignment import picked_positions
from paramscope.ablation.interventions import (
    UnitSpec,
    apply,
    check_site,
    gated,
    n_units,
    output_tensor,
    with_output_tensor,
)
from paramscope.ablation.units import unit_specs
from paramscope.evaluation.documents import ContinuationDoc, Doc, MultiContextDoc, Scores, docs_metric
from paramscope.evaluation.packing import (
    Batch,
    Readout,
    batch_of,
    is_multi_token,
    log_probs_at,
    packed_length,
    packing_limit,
    single_token_batch,
)
from paramscope.evaluation.positions import context_lengths
from paramscope.evaluation.scorer import score
from paramscope.models.adapters import Adapter

log = logging.getLogger(__name__)

FAST_OPS = ("zero", "scale")
DEFAULT_MAX_BATCH_TOKENS = 32768

def gate_value(op: str, value: float) -> float:
    """The multiplicative gate that stands for `op`: 0 for zero, alpha for scale."""
    if op not in FAST_OPS:
        raise ValueError(f"fast maps support ops {', '.join(FAST_OPS)}; got '{op}' (use the plain loop)")
    return 0.0 if op == "zero" else float(value)


def _branchable(doc: Doc, limit: int | None) -> bool:
    """Plain multiple choice whose choices are one token, or pack into one row (`packing`).
    Loglikelihood and multiple-input documents (one context per choice) take the plain loop, which
    routes them to their scorers."""
    if isinstance(doc, (ContinuationDoc, MultiContextDoc)):
        return False
    return not is_multi_token(doc) or limit is None or packed_length(doc) <= limit


def _split_branchable(adapter: Adapter, docs: Sequence[Doc]) -> tuple[list[int], list[int]]:
    """Indices of the documents the engine branches, and of those it leaves to the plain loop."""
    limit = packing_limit(adapter.model)
    flags = [_branchable(d, limit) for d in docs]
    return [i for i, f in enumerate(flags) if f], [i for i, f in enumerate(flags) if not f]


def _batches(docs: Sequence[Doc], batch_size: int, max_tokens: int, device: torch.device, dtype: torch.dtype
             ) -> Iterator[tuple[list[int], Batch]]:
    """(indices, model inputs) of every batch: one-token documents as right-padded contexts, the others
    packed one row per document; each kind in length order, cut by `_doc_batches`."""
    for packed in (False, True):
        kind = [i for i, d in enumerate(docs) if is_multi_token(d) == packed]
        for cut in _doc_batches([packed_length(docs[i]) for i in kind], batch_size, max_tokens):
            idx = [kind[j] for j in cut]
            yield idx, batch_of([docs[i] for i in idx], device, dtype)


def _doc_batches(lengths: Sequence[int], batch_size: int, max_tokens: int) -> list[list[int]]:
    """Indices sorted by length, cut into batches of at most `batch_size` docs and docs x width at
    most `max_tokens` (a single over-long doc still gets a batch of its own)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[i]  # ascending: the newest doc is the widest
        if current and (len(current) >= batch_size or (len(current) + 1) * width > max_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def _read(adapter: Adapter, hidden: Tensor, readout: Readout, n_variants: int) -> list[list[np.ndarray]]:
    """lls[variant][doc]: choice log-likelihoods from the last block's output, `readout` tiled for
    `n_variants` (row v*B + b is variant v of document b)."""
    logp = log_probs_at(adapter.final_norm(), adapter.unembedding(), hidden, readout)
    per_row = readout.per_doc(readout.log_likelihoods(logp))
    batch = len(per_row) // n_variants
    return [per_row[v * batch : (v + 1) * batch] for v in range(n_variants)]


def _input_of(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


# ----------------------------------------------------------------------------------------- trunk


@dataclass
class _Trunk:
    """What the clean forward of one batch of documents left behind."""

    calls: list[tuple[tuple, dict]]  # (args, kwargs) each block was called with
    final: Tensor  # the last block's output, before the final norm
    seen: dict[tuple[str, int], Tensor] = field(default_factory=dict)  # (piece, layer) -> tensor, `_pieces`

    def block_in(self, layer: int) -> Tensor:
        return _input_of(*self.calls[layer])

    def block_out(self, layer: int) -> Tensor:
        return self.block_in(layer + 1) if layer + 1 < len(self.calls) else self.final


# The trunk records these pieces of a block for the branch to reuse (shapes in `models.adapters`);
# resid_pre and resid_post are the recorded block calls and outputs.
#   z          [batch, pos, n_heads * d_head]  heads are gated here        attn_out  [batch, pos, d_model]
#   post       [batch, pos, d_ffn]             neurons are gated here      mlp_out   [batch, pos, d_model]
#   resid_mid  [batch, pos, d_model]           what the MLP re-runs on, sequential blocks only
def _pieces(adapter: Adapter, group: str, layer: int) -> tuple[str, ...]:
    """The pieces needed to rebuild block `layer` with `group` gated (empty: re-run the block)."""
    if group == "layers":
        return ()
    site = {"heads": ("z",), "neurons": ("post",)}.get(group, ())
    if adapter.parallel_residual(layer):
        return tuple(sorted({*site, "attn_out", "mlp_out"}))
    return tuple(sorted({*site, "attn_out", "mlp_out", "resid_mid"}))


def _trunk(adapter: Adapter, batch: Batch, wanted: Sequence[tuple[str, int]]) -> _Trunk:
    """Run the clean model once, recording block calls, the final block output and `wanted` pieces."""
    n = adapter.n_layers
    calls: list[tuple[tuple, dict] | None] = [None] * n
    final: list[Tensor] = []
    seen: dict[tuple[str, int], Tensor] = {}
    handles = []

    def on_call(layer: int):
        def hook(module, args, kwargs):
            calls[layer] = (args, dict(kwargs))

        return hook

    def on_input(key):
        def hook(module, args, kwargs):
            seen[key] = _input_of(args, kwargs)

        return hook

    def on_output(key):
        def hook(module, args, output):
            seen[key] = output_tensor(output)

        return hook

    try:
        for layer, block in enumerate(adapter.blocks()):
            handles.append(block.register_forward_pre_hook(on_call(layer), with_kwargs=True, prepend=True))
        handles.append(adapter.block(n - 1).register_forward_hook(lambda m, a, o: final.append(output_tensor(o))))
        for piece, layer in wanted:
            module, is_input = adapter.hook_point(piece, layer)
            key = (piece, layer)
            if is_input:
                handles.append(module.register_forward_pre_hook(on_input(key), with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(on_output(key)))
        adapter.model.base_model(**batch.model_inputs(), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    missing = [i for i, c in enumerate(calls) if c is None]
    if missing:
        raise RuntimeError(f"blocks {missing} were not called by the base model's forward")
    return _Trunk(calls=calls, final=final[-1], seen=seen)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- branch


class _Tiler:
    """Repeat every tensor with a leading batch dimension `n` times along it (row v*B + b is variant
    v of document b); tensors without one (e.g. position ids of shape (1, T)) broadcast as they did.
    Results are memoised, since families pass one mask / one (cos, sin) to every block."""

    def __init__(self, batch: int, n: int) -> None:
        self.batch, self.n = batch, n
        self.memo: dict[int, tuple[Tensor, Tensor]] = {}

    def __call__(self, x: Any) -> Any:
        if isinstance(x, Tensor):
            if x.dim() == 0 or x.shape[0] != self.batch or self.n == 1:
                return x
            if id(x) not in self.memo:  # the original is kept alive with its copy, so ids stay unique
                self.memo[id(x)] = (x, x.repeat(self.n, *([1] * (x.dim() - 1))))
            return self.memo[id(x)][1]
        if isinstance(x, tuple):
            return tuple(self(v) for v in x)
        if isinstance(x, list):
            return [self(v) for v in x]
        return x


@contextmanager
def _mlp_at(adapter: Adapter, layer: int, readout: Readout) -> Iterator[None]:
    """Run block `layer`'s MLP only at the read positions, zeros elsewhere: after the last block only
    those are read, and the MLP acts on each position alone, so nothing that is read changes and
    most of the block's work is skipped. Hooks inside the MLP are told which positions they see."""
    state: dict[str, Any] = {}
    rows, positions = readout.rows, readout.positions

    def pick(module, args, kwargs):
        x = _input_of(args, kwargs)
        state["shape"] = x.shape
        picked = x[rows, positions].unsqueeze(1)
        if args:
            return (picked, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": picked}

    def put_back(module, args, output):
        first = output_tensor(output)
        full = first.new_zeros(*state["shape"][:-1], first.shape[-1])
        full[rows, positions] = first[:, 0]
        return with_output_tensor(output, full)

    mlp = adapter.mlp(layer)
    handles = [mlp.register_forward_pre_hook(pick, with_kwargs=True), mlp.register_forward_hook(put_back)]
    try:
        with picked_positions(rows, positions):
            yield
    finally:
        for h in handles:
            h.remove()


def _run_blocks(adapter: Adapter, trunk: _Trunk, first: int, hidden: Tensor, tiler: _Tiler, read: Readout) -> Tensor:
    """Blocks `first`..L-1 on `hidden` (already tiled), each with its own recorded arguments (tiled),
    under whatever hooks are active. Only the positions `read` reads are valid in the result."""
    last_block = adapter.n_layers - 1
    for k in range(first, adapter.n_layers):
        args, kwargs = trunk.calls[k]
        if args:
            rest_args, rest_kwargs = tuple(tiler(a) for a in args[1:]), {n: tiler(v) for n, v in kwargs.items()}
        else:
            rest_args, rest_kwargs = (), {n: tiler(v) for n, v in kwargs.items() if n != "hidden_states"}
        with _mlp_at(adapter, k, read) if k == last_block else nullcontext():
            hidden = output_tensor(adapter.block(k)(hidden, *rest_args, **rest_kwargs))
    return hidden


def _scaled(x: Tensor, gate: Tensor) -> Tensor:
    """A single-unit site (batch, ..., d) times its per-row gate, as `interventions._gate_edit` does."""
    return x * gate.reshape((gate.shape[0],) + (1,) * (x.dim() - 1)).to(x.dtype)


def _rebuild(
    adapter: Adapter, trunk: _Trunk, group: str, layer: int, gate: Tensor, tiler: _Tiler, read: Readout | None,
    gates_1: bool
) -> Tensor:
    """Block `layer`'s output for every tiled row with `group` gated by `gate` (batch, n_units), from
    the trunk's pieces with the block's own arithmetic. With `gates_1` (the check), the rows are the
    trunk's documents and the gate is all ones: the result must equal the clean block output."""
    t = (lambda x: x) if gates_1 else tiler
    seen = {name: t(trunk.seen[(name, layer)]) for name in _pieces(adapter, group, layer)}
    resid_pre = t(trunk.block_in(layer))
    if group == "layers":
        return resid_pre + _scaled(t(trunk.block_out(layer)) - resid_pre, gate)
    if group in ("neurons", "mlp"):
        if group == "neurons":
            with gated(adapter, {(group, layer): gate}):
                mlp_out = adapter.mlp_down_proj(layer)(seen["post"])
        else:
            mlp_out = _scaled(seen["mlp_out"], gate)
        if adapter.parallel_residual(layer):
            return mlp_out + seen["attn_out"] + resid_pre
        return seen["resid_mid"] + mlp_out
    if group == "heads":
        with gated(adapter, {(group, layer): gate}):
            attn_out = adapter.attn_out_proj(layer)(seen["z"])
    else:
        attn_out = _scaled(seen["attn_out"], gate)
    if adapter.parallel_residual(layer):
        return seen["mlp_out"] + attn_out + resid_pre
    resid_mid = resid_pre + attn_out
    norm, mlp = adapter.mlp_norm(layer), adapter.mlp(layer)
    with _mlp_at(adapter, layer, read) if layer == adapter.n_layers - 1 and not gates_1 else nullcontext():
        return resid_mid + output_tensor(mlp(norm(resid_mid)))


def _rebuild_ok(adapter: Adapter, trunk: _Trunk, group: str, layer: int) -> bool:
    """Whether rebuilding block `layer` with all gates 1 gives the clean output bit for bit (and, for
    heads and neurons, whether the projection alone gives the recorded sublayer output)."""
    if group == "layers":
        return True
    batch = trunk.block_in(layer).shape[0]
    dev = trunk.block_in(layer).device
    ones = torch.ones(batch, n_units(adapter, group), device=dev)
    try:
        rebuilt = _rebuild(adapter, trunk, group, layer, ones, _Tiler(batch, 1), None, gates_1=True)
        same = torch.equal(rebuilt, trunk.block_out(layer))
        if group in ("heads", "neurons"):  # nothing follows the projection inside its sublayer
            proj = adapter.attn_out_proj(layer) if group == "heads" else adapter.mlp_down_proj(layer)
            site, sublayer = ("z", "attn_out") if group == "heads" else ("post", "mlp_out")
            same = same and torch.equal(proj(trunk.seen[(site, layer)]), trunk.seen[(sublayer, layer)])
    except (KeyError, AttributeError, RuntimeError):  # a piece is not where the adapter said it is
        same = False
    if not same:
        log.warning("%s block %d: rebuilding its output under %s ablation is not exact here; re-running the block",
                    adapter.family, layer, group)
    return same


def _unit_gate(adapter: Adapter, spec: UnitSpec) -> Tensor:
    """The gate row of one variant: 1 everywhere but the spec's units."""
    gate = torch.ones(n_units(adapter, spec.group))
    gate[list(spec.units) or [0]] = gate_value(spec.op, spec.value)
    return gate


@torch.inference_mode()
def _fast_branched(
    adapter: Adapter,
    docs: Sequence[Doc],
    specs: Sequence[UnitSpec],
    batch_size: int,
    max_batch_tokens: int,
    rebuild: bool,
) -> list[list[np.ndarray]]:
    """lls[s][i]: choice log-likelihoods of doc i with spec s applied (every doc branchable)."""
    param = next(adapter.model.parameters())
    by_site: dict[tuple[int, str], list[int]] = {}  # variants that branch at the same site
    for s, spec in enumerate(specs):
        by_site.setdefault((spec.layer, spec.group), []).append(s)
    wanted = sorted({(p, layer) for layer, g in by_site for p in (_pieces(adapter, g, layer) if rebuild else ())})
    gates = [_unit_gate(adapter, spec).to(param.device) for spec in specs]
    out: list[list[np.ndarray]] = [[None] * len(docs) for _ in specs]  # type: ignore[list-item]
    # The trunk keeps every block's input and some pieces of it: cap its tokens so that this cache,
    # n_layers deep, stays about the size of one branched forward.
    trunk_tokens = max(1, max_batch_tokens // adapter.n_layers)
    exact: dict[tuple[int, str], bool] = {}  # per site: whether block rebuilding is bit-exact
    for idx, batch in _batches(docs, batch_size, trunk_tokens, param.device, param.dtype):
        n_docs, width = batch.ids.shape
        trunk = _trunk(adapter, batch, wanted)
        per_chunk = max(1, max_batch_tokens // (n_docs * width))
        for (layer, group), members in sorted(by_site.items()):
            if (layer, group) not in exact:  # the same operations on every batch: check once
                exact[(layer, group)] = (rebuild or group == "layers") and _rebuild_ok(adapter, trunk, group, layer)
            fast = exact[(layer, group)]
            for start in range(0, len(members), per_chunk):
                chunk = members[start : start + per_chunk]
                tiler = _Tiler(n_docs, len(chunk))
                read = batch.readout.tiled(len(chunk))
                gate = torch.stack([gates[s] for s in chunk]).repeat_interleave(n_docs, dim=0)
                if fast:
                    hidden = _rebuild(adapter, trunk, group, layer, gate, tiler, read, gates_1=False)
                    hidden = _run_blocks(adapter, trunk, layer + 1, hidden, tiler, read)
                else:
                    with gated(adapter, {(group, layer): gate}):
                        hidden = _run_blocks(adapter, trunk, layer, tiler(trunk.block_in(layer)), tiler, read)
                for s, per_doc in zip(chunk, _read(adapter, hidden, read, len(chunk))):
                    for i, ll in zip(idx, per_doc):
                        out[s][i] = ll
    return out


def fast_map(
    adapter: Adapter,
    docs: Sequence[Doc],
    group: str,
    op: str = "zero",
    value: float = 0.0,
    batch_size: int = 64,
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
    neuron_block: int = 64,
    specs: Sequence[UnitSpec] | None = None,
    rebuild: bool = True,
) -> list[tuple[UnitSpec, Scores]]:
    """Scores of every unit of `group` ablated in turn (`op` zero or scale by `value`), in
    `atlas.unit_specs` order: each equals `score(model, docs, batch_size)` under
    `apply(adapter, [spec])` to float rounding (see the module docstring).

    `batch_size` caps documents per trunk batch; `max_batch_tokens` caps variants x documents x padded
    width of one branched forward (activation memory; the trunk's cache is capped at
    `max_batch_tokens / n_layers` tokens x n_layers). `specs` replaces the unit list (any zero/scale
    `UnitSpec`s of one unit selection each; `group`, `op`, `value` are then ignored). `rebuild=False`
    re-runs the ablated block whole instead of rebuilding its output from the trunk's pieces.
    """
    if adapter.model.training:
        raise ValueError("the model is in training mode: call .eval() (dropout would randomise every map)")
    docs = list(docs)
    if specs is None:
        gate_value(op, value)
        specs = list(unit_specs(adapter, group, op, value, neuron_block))
    specs = list(specs)
    for spec in specs:
        gate_value(spec.op, spec.value)  # only gate-expressible operations
        check_site(adapter, spec.group, spec.layer, spec.units)
    branched, looped = _split_branchable(adapter, docs)
    lls: list[list[np.ndarray]] = [[None] * len(docs) for _ in specs]  # type: ignore[list-item]
    if branched:
        fast = _fast_branched(adapter, [docs[i] for i in branched], specs, batch_size, max_batch_tokens, rebuild)
        for s in range(len(specs)):
            for j, i in enumerate(branched):
                lls[s][i] = fast[s][j]
    if looped:  # the plain loop: documents that are not plain multiple choice or do not pack
        looped_docs = [docs[i] for i in looped]
        for s, spec in enumerate(specs):
            with apply(adapter, [spec]):
                ablated = score(adapter.model, looped_docs, batch_size)
            for j, i in enumerate(looped):
                lls[s][i] = ablated.lls[j]
    return list(zip(specs, _as_scores(docs, lls)))


def _as_scores(docs: Sequence[Doc], lls: list[list[np.ndarray]]) -> list[Scores]:
    doc_ids = np.array([d.doc_id for d in docs])
    gold = np.array([d.gold for d in docs])
    chars = [np.array(d.choice_chars, dtype=np.float64) for d in docs]
    metric = docs_metric(docs)
    return [Scores(doc_ids=doc_ids, lls=per_doc, gold=gold, choice_chars=chars, metric=metric) for per_doc in lls]


# A variant of `branched_scores`: the first block it can change, and a context that applies it for one
# batch, given the batch (hooks that depend on positions or contexts, e.g. `mean` and `resample`, read
# them from it: branched blocks run without the base model's forward).
Variant = tuple[int, Callable[[Batch], AbstractContextManager]]


@torch.inference_mode()
def branched_scores(adapter: Adapter, docs: Sequence[Doc], variants: Sequence[Variant], batch_size: int = 64,
                    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS) -> list[Scores]:
    """The model scored under each variant in turn (weight edits, or hooks of any intervention), with
    blocks before the variant's first changed block taken from one clean trunk per batch of documents:
    the loop's result (`score` under the variant) to float rounding, at the cost of the blocks that
    can differ. Documents with a multi-token choice take the plain loop."""
    if adapter.model.training:
        raise ValueError("the model is in training mode: call .eval() (dropout would randomise every score)")
    for first, _ in variants:
        if not 0 <= first < adapter.n_layers:
            raise ValueError(f"a variant's first block must be in 0..{adapter.n_layers - 1}, got {first}")
    docs = list(docs)
    param = next(adapter.model.parameters())
    lls: list[list[np.ndarray]] = [[None] * len(docs) for _ in variants]  # type: ignore[list-item]
    branched, looped = _split_branchable(adapter, docs)
    trunk_tokens = max(1, max_batch_tokens // adapter.n_layers)
    for idx, batch in _batches([docs[i] for i in branched], batch_size, trunk_tokens, param.device, param.dtype):
        trunk = _trunk(adapter, batch, ())
        tiler = _Tiler(len(idx), 1)
        for v, (first, enter) in enumerate(variants):
            # a variant sees the batch (its positions and contexts), and hooks that must not see the
            # choices are told where each packed row's context ends
            with enter(batch), context_lengths(batch.context_lengths) if batch.packed else nullcontext():
                hidden = _run_blocks(adapter, trunk, first, trunk.block_in(first), tiler, batch.readout)
                [per_doc] = _read(adapter, hidden, batch.readout, 1)
            for j, ll in zip(idx, per_doc):
                lls[v][branched[j]] = ll
    if looped:
        looped_docs = [docs[i] for i in looped]
        placeholder = single_token_batch(looped_docs[:1], param.device)
        for v, (_, enter) in enumerate(variants):
            with enter(placeholder):  # the loop's own forwards declare their rows to the hooks
                loop = score(adapter.model, looped_docs, batch_size)
            for j, i in enumerate(looped):
                lls[v][i] = loop.lls[j]
    return _as_scores(docs, lls)
