"""Task profiles: per-unit scale factors saved as a small file and applied at inference time.

A profile turns one base model into a task-specific one without touching its weights ("one model,
several task profiles"): loading a model with a profile registers the same reversible hooks as the
ablation atlas (`interventions.apply` with `op="scale"`), so nothing is copied or retrained.

The file (JSON, UTF-8), format version 1::

    {
      "format": "paramscope-profile",
      "format_version": 1,
      "model": "scratch",                    # the name it was made under (informative)
      "model_digest": "c92bd5ae8258a986",    # paramscope.models.zoo.digest of the weights (enforced)
      "task": "arith",
      "units": [                             # only factors != 1; every other unit is left as is
        {"group": "heads",   "layer": 2, "units": [1],            "scale": 1.5},
        {"group": "neurons", "layer": 0, "units": [64, ..., 127], "scale": 0.25},
        {"group": "mlp",     "layer": 3, "units": [],             "scale": 0.0}
      ],
      "provenance": {"method": "coordinate", "objective": "...", "split": "dev", ...}
    }

Groups are the atlas's: `heads` (slices of the attention output projection's input), `neurons` (entries
of the MLP down projection's input; a profile lists a neuron group's indices), `attn`/`mlp` (a
sublayer's contribution to the residual stream) and `layers`. A scale of 0 removes a unit, 1 leaves it
alone, 2 doubles it. Scales are stored as JSON numbers that read back as the very same float64, so a
saved profile reproduces the numbers measured before it was saved bit for bit.

A profile refuses to be applied to any model whose digest differs from `model_digest`: scale
factors found for one set of weights mean nothing for another (a fine-tuned sibling included).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from paramscope.ablation.interventions import GROUPS, UnitSpec, apply
from paramscope.errors import StudyError
from paramscope.models import zoo
from paramscope.models.adapters import Adapter, get_adapter
from paramscope.report.output import write_text

FORMAT = "paramscope-profile"
FORMAT_VERSION = 1
GROUP_ORDER = {g: i for i, g in enumerate(GROUPS)}


@dataclass(frozen=True, order=True)
class Unit:
    """One searchable unit: a head, a group of FFN neurons, or a whole sublayer of one layer."""

    group: str
    layer: int
    units: tuple[int, ...] = ()

    def spec(self, scale: float) -> UnitSpec:
        return UnitSpec(self.group, self.layer, self.units, "scale", float(scale))

    @property
    def label(self) -> int:
        """The atlas's ``unit`` column: head index, first neuron of a group, -1 for a sublayer."""
        return self.units[0] if self.units else -1

    @property
    def name(self) -> str:
        if self.group == "heads":
            return f"L{self.layer} head {self.units[0]}"
        if self.group == "neurons":
            return f"L{self.layer} neurons {self.units[0]}-{self.units[-1]}"
        return f"L{self.layer} {self.group}"

    def sort_key(self) -> tuple:
        return (GROUP_ORDER.get(self.group, len(GROUP_ORDER)), self.layer, self.units)


@dataclass(frozen=True)
class Profile:
    """Scale factors for one model and task; `scales` holds only the factors that are not 1."""

    model_digest: str
    task: str
    scales: tuple[tuple[Unit, float], ...]
    model: str = ""
    provenance: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        kept = {}
        for unit, scale in self.scales:
            scale = float(scale)
            if not math.isfinite(scale) or scale < 0:
                raise StudyError(f"profile scale for {unit.name} must be a finite number >= 0, got {scale}")
            if unit in kept:
                raise StudyError(f"profile lists {unit.name} twice")
            if scale != 1.0:
                kept[unit] = scale
        ordered = tuple(sorted(kept.items(), key=lambda item: item[0].sort_key()))
        object.__setattr__(self, "scales", ordered)
        object.__setattr__(self, "provenance", dict(self.provenance))

    @classmethod
    def from_vector(cls, units: Sequence[Unit], values: Sequence[float], **kw) -> Profile:
        return cls(scales=tuple(zip(units, (float(v) for v in values))), **kw)

    @property
    def n_factors(self) -> int:
        return len(self.scales)

    @property
    def strength(self) -> float:
        """Mean |scale - 1| over the factors that are not 1 (0 for the identity profile).

        |scale - 1| rather than |log scale|: the search range [0, 2] includes 0 (removal), whose log
        does not exist.
        """
        return sum(abs(s - 1.0) for _, s in self.scales) / self.n_factors if self.scales else 0.0

    def specs(self) -> list[UnitSpec]:
        return [unit.spec(scale) for unit, scale in self.scales]

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": self.model,
            "model_digest": self.model_digest,
            "task": self.task,
            "units": [{"group": u.group, "layer": u.layer, "units": list(u.units), "scale": s} for u, s in self.scales],
            "provenance": dict(self.provenance),
        }

    @classmethod
    def from_json(cls, data: Mapping, source: str = "profile") -> Profile:
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise StudyError(f"{source} is not a paramscope profile (no \"format\": \"{FORMAT}\")")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise StudyError(f"{source} has format_version {version!r}; this paramscope reads version {FORMAT_VERSION}")
        missing = [k for k in ("model_digest", "task", "units") if k not in data]
        if missing:
            raise StudyError(f"{source} lacks {', '.join(missing)}")
        scales = []
        for entry in data["units"]:
            group = entry.get("group")
            if group not in GROUPS:
                raise StudyError(f"{source}: unknown group '{group}'; valid: {', '.join(GROUPS)}")
            try:
                spec = UnitSpec(group, int(entry["layer"]), tuple(entry.get("units", ())), "scale",
                                float(entry["scale"]))
            except (KeyError, TypeError, ValueError) as e:
                raise StudyError(f"{source}: bad unit entry {entry}: {e}") from None
            scales.append((Unit(spec.group, spec.layer, spec.units), spec.value))
        return cls(model_digest=str(data["model_digest"]), task=str(data["task"]), scales=tuple(scales),
                   model=str(data.get("model", "")), provenance=dict(data.get("provenance", {})))

    def save(self, path: Path) -> None:
        """Written atomically; float64 scales survive the round trip exactly (Python's shortest repr)."""
        write_text(Path(path), json.dumps(self.to_json(), indent=2, sort_keys=True, allow_nan=False) + "\n")

    @classmethod
    def load(cls, path: Path) -> Profile:
        path = Path(path)
        if not path.is_file():
            raise StudyError(f"no profile file at {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise StudyError(f"{path} is not valid JSON: {e}") from None
        return cls.from_json(data, source=str(path))

    def check_model(self, digest: str) -> None:
        """Refuse a model whose weights are not the ones this profile was made for."""
        if digest != self.model_digest:
            made = f"'{self.model}' " if self.model else ""
            raise StudyError(
                f"profile for task '{self.task}' was made for model {made}digest {self.model_digest}, "
                f"but this model's digest is {digest}; run the search for this model instead"
            )


@contextmanager
def applied(target, profile: Profile, digest: str | None = None) -> Iterator[Adapter]:
    """The model with ``profile`` applied (hooks removed on exit); refuses another model's profile.

    ``digest`` skips rehashing the weights when the caller already knows it.
    """
    adapter = target if isinstance(target, Adapter) else get_adapter(target)
    profile.check_model(digest or zoo.digest(adapter.model))
    with apply(adapter, profile.specs()):
        yield adapter


@contextmanager
def load_with_profile(name: str, profile: Profile | Path, root: Path | None = None, device: str = "cpu"
                      ) -> Iterator[tuple[object, object]]:
    """``(model, tokenizer)`` of a study model, with a task profile applied for the duration of the block.

    >>> with load_with_profile("scratch", Path("results/optimize/profiles/scratch/arith.json")) as (m, tok):
    ...     scores = score(m, docs)
    """
    if not isinstance(profile, Profile):
        profile = Profile.load(profile)
    model, tokenizer = zoo.load(name, root, device=device)
    with applied(model, profile):
        yield model, tokenizer
