"""Bad input from the user: reported as one line and a non-zero exit, never as a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


class StudyError(Exception):
    """Something the user asked for does not exist or cannot work; the message names the valid choices."""


def check_choice(kind: str, value: object, valid: Iterable[object]) -> None:
    valid = list(valid)
    if value not in valid:
        raise StudyError(f"unknown {kind} '{value}'; valid: {', '.join(map(str, valid))}")


def number(key: str, value: object, kind: type[float] | type[int] = float, example: str = "") -> float:
    """``value`` as a float (or an int, for ``kind=int``), else one line naming the key and what it takes."""
    wanted = "an integer" if kind is int else "a number"
    hint = f"; e.g. {key}={example}" if example else ""
    if isinstance(value, bool | type(None)):
        raise StudyError(f"{key} must be {wanted}, got {value!r}{hint}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise StudyError(f"{key} must be {wanted}, got {value!r}{hint}") from None
    if kind is int:
        if not x.is_integer():
            raise StudyError(f"{key} must be {wanted}, got {value!r}{hint}")
        return int(x)
    return x


def guard(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn a StudyError raised inside a stage into one stderr line and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except StudyError as e:
            print(f"paramscope: error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapper
