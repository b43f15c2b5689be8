"""Round-based sampling methods."""

from __future__ import annotations

from typing import Sequence

from hasten.errors import HastenError
from hasten.methods.base import Eval, Hit, Method
from hasten.methods.chords import Chords
from hasten.methods.sequential import Sequential

METHODS = ("sequential", "chords")


def make_method(
    name: str,
    cores: int | None = None,
    init: Sequence[int] | str | None = None,
    speedup: float | None = None,
) -> Method:
    """A method by name with its options; options a method does not take are refused."""
    if name == "sequential":
        if init is not None or speedup is not None:
            raise HastenError("init and speedup apply to chords only, not to the sequential method")
        return Sequential()
    if name == "chords":
        if cores is None:
            cores = len(init) if isinstance(init, (list, tuple)) else 4
        return Chords(cores=cores, init=init, speedup=speedup)
    raise HastenError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")


__all__ = ["Chords", "Eval", "Hit", "METHODS", "Method", "Sequential", "make_method"]
