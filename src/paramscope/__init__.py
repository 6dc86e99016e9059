"""paramscope: how a language model's behaviour depends on parts of its parameters."""

__version__ = "0.1.0"
