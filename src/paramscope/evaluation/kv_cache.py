"""The key/value cache across transformers versions: the forward argument and the output field are named
`cache` in recent releases, `past_key_values` before (deprecated there, removed in 5.40)."""

from __future__ import annotations

import inspect

from torch import nn


def cache_argument(module: nn.Module) -> str:
    """The name under which ``module.forward`` takes a key/value cache."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def output_cache(output):
    """The key/value cache a forward pass returned."""
    value = output.get("cache")
    return output.past_key_values if value is None else value


def passed_cache(kwargs: dict):
    """The cache a forward call was given, under either name (for forward pre-hooks); None if none."""
    value = kwargs.get("cache")
    return kwargs.get("past_key_values") if value is None else value
