"""The study's models: ``paramscope.models.load(name)`` returns ``(model, tokenizer)``."""

from paramscope.models.zoo import digest, load, model_dirs

__all__ = ["digest", "load", "model_dirs"]
