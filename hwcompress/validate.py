"""Checks for the numbers users give, one line each: the option, the value, the allowed range.

The command line and the Python API share them, so ``--episodes 0`` and ``compress(episodes=0)`` are
refused with the same sentence.
"""

from __future__ import annotations

import math
from typing import Any

from hwcompress.errors import UserError


def whole(value: Any, option: str, low: int, high: int | None = None) -> int:
    """``value`` as a whole number in ``[low, high]``, else a :class:`UserError` naming ``option``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{option} must be a whole number (got {value!r})")
    if value < low or (high is not None and value > high):
        allowed = f"at least {low}" if high is None else f"between {low} and {high}"
        raise UserError(f"{option} must be {allowed} (got {value})")
    return value


def number(value: Any, option: str, low: float | None = None, high: float | None = None, *,
           low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite number within the bounds (open or closed), else a :class:`UserError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{option} must be a finite number (got {value!r})")
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if below or above:
        left = "(" if low_open or low is None else "["
        right = ")" if high_open or high is None else "]"
        span = f"{left}{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}{right}"
        raise UserError(f"{option} must be in {span} (got {value!r})")
    return float(value)
