"""Argument checks shared by every layer: one wording for every error."""

from __future__ import annotations

import math

from hasten.errors import HastenError


def check_int(name: str, value, low: int, high: int | None = None, allow_none: bool = False) -> None:
    """Refuse anything but an integer in [low, high] (or None where allowed), naming the argument."""
    if value is None and allow_none:
        return
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
    if not ok:
        bound = f">= {low}" if high is None else f"in {low}..{high}"
        raise HastenError(f"{name} must be an integer {bound}, got {value!r}")


def check_positive(name: str, value, allow_none: bool = False) -> None:
    """Refuse anything but a finite number > 0 (or None where allowed), naming the argument."""
    if value is None and allow_none:
        return
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
        raise HastenError(f"{name} must be a finite number > 0, got {value!r}")


def check_finite(name: str, value, low: float | None = None) -> None:
    """Refuse anything but a finite real number (>= ``low`` where given), naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
            low is not None and value < low):
        need = "a finite number" + ("" if low is None else f" >= {low:g}")
        raise HastenError(f"{name} must be {need}, got {value!r}")


def check_nonempty(name: str, value) -> str:
    """``value`` if it is a string with something in it, else an error naming the argument."""
    if not isinstance(value, str) or not value.strip():
        raise HastenError(f"{name} must be a non-empty string, got {value!r}")
    return value
