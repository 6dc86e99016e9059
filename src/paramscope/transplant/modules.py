"""The transplant registry: which modules a donor and a target share (STUDY.md section 5).

A module is a Linear leaf of an attention or MLP block (`Adapter.linear_modules()`: no embeddings,
norms or unembedding) with the same name and shape in both models. A pair is only accepted when the
two models are the same architecture with every parameter of the same name and shape: a transplant
between models that differ anywhere else (another vocabulary, another width) would mix
representations that do not line up, so the refusal names the first difference instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedModel

from paramscope.ablation.weights import matrix_type
from paramscope.errors import StudyError
from paramscope.models.adapters import get_adapter


@dataclass(frozen=True)
class Module:
    """One transplantable projection: its full name, block, sublayer (attn/mlp) and role within it."""

    name: str
    layer: int
    kind: str  # "attn" or "mlp"
    role: str  # the projection's name inside its sublayer, e.g. "query_key_value", "dense_4h_to_h"
    shape: tuple[int, ...]


def check_compatible(donor: PreTrainedModel, target: PreTrainedModel, names: tuple[str, str] = ("donor", "target")
                     ) -> None:
    """Raise a one-line StudyError naming the first difference in architecture or parameter shape.

    ``names`` label the two models in the message (e.g. their study names, before roles are decided).
    """
    d, t = names
    families = (donor.config.model_type, target.config.model_type)
    if families[0] != families[1]:
        raise StudyError(f"cannot transplant between architectures: {d} is {families[0]}, {t} is {families[1]}")
    donor_shapes = {name: tuple(p.shape) for name, p in donor.state_dict().items()}
    target_shapes = {name: tuple(p.shape) for name, p in target.state_dict().items()}
    for name in [*donor_shapes, *(n for n in target_shapes if n not in donor_shapes)]:  # model order
        if name not in target_shapes:
            raise StudyError(f"cannot transplant: parameter {name} is in {d} but not in {t}")
        if name not in donor_shapes:
            raise StudyError(f"cannot transplant: parameter {name} is in {t} but not in {d}")
        if donor_shapes[name] != target_shapes[name]:
            raise StudyError(f"cannot transplant: shapes differ at {name}: {d} {list(donor_shapes[name])}, "
                             f"{t} {list(target_shapes[name])}")


def module_registry(donor: PreTrainedModel, target: PreTrainedModel, names: tuple[str, str] = ("donor", "target")
                    ) -> list[Module]:
    """Every transplantable module of a compatible pair, in block order (refuses other pairs)."""
    check_compatible(donor, target, names)
    adapter = get_adapter(target)
    blocks = adapter._blocks + "."
    found = []
    for name, module in adapter.linear_modules().items():
        layer_text, sub_path = name[len(blocks):].split(".", 1)
        role = sub_path.split(".", 1)[1]  # drop the sublayer's own name (attention / mlp / attn)
        found.append(Module(name, int(layer_text), matrix_type(adapter, name), role, tuple(module.weight.shape)))
    return found
