"""Round-based sampling methods, built by name from the CLI and the API."""

from __future__ import annotations

from typing import Any

from hasten.errors import HastenError
from hasten.methods.base import Method
from hasten.rounds import Eval, Hit
from hasten.methods.chords import Chords
from hasten.methods.sequential import Sequential
from hasten.methods.srds import SRDS
from hasten.methods.window import ParaDiGMS, ParaSolver, ParaSolverTurbo, SlidingWindow

METHODS = ("sequential", "chords", "paradigms", "srds", "parasolver", "parasolver-turbo")

#: Options each method takes (besides ``cores``), with their types.
OPTIONS: dict[str, dict[str, type]] = {
    "sequential": {},
    "chords": {"init": str, "speedup": float},
    "paradigms": {"window": int, "tol": float, "max_iters": int},
    "srds": {"blocks": int, "tol": float, "max_iters": int},
    "parasolver": {"window": int, "tol": float, "max_iters": int, "precondition": int, "subintervals": int},
    "parasolver-turbo": {"window": int, "rho": int, "tol": float, "max_iters": int, "precondition": int,
                         "subintervals": int},
}


def make_method(name: str, cores: int | None = None, **options: Any) -> Method:
    """A method by name.

    ``cores`` is the per-round evaluation budget where a method has one: CHORDS
    cores, the ParaDiGMS / ParaSolver window, the SRDS per-round cap and the
    ParaSolver-Turbo rho (its window keeps the paper's per-solver default, see
    :func:`ParaSolverTurbo`). Options a method does not take are refused;
    ``None`` values are ignored.
    """
    if name not in METHODS:
        raise HastenError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    options = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(options) - set(OPTIONS[name]))
    if unknown:
        valid = ", ".join(sorted(OPTIONS[name])) or "none"
        raise HastenError(f"method {name} does not take {', '.join(unknown)}; its options: {valid}")
    if name == "sequential":
        return Sequential()
    if name == "chords":
        init = options.get("init")
        if cores is None and isinstance(init, (list, tuple)):
            cores = len(init)
        return Chords(cores=cores, init=init, speedup=options.get("speedup"))
    if name == "srds":
        return SRDS(cores_cap=cores, **options)
    if name == "paradigms":
        return ParaDiGMS(**{"window": cores, **options} if cores is not None else options)
    if name == "parasolver":
        return ParaSolver(**{"window": cores, **options} if cores is not None else options)
    if cores is not None:
        options.setdefault("rho", cores)
    return ParaSolverTurbo(**options)


def parse_method_spec(spec: str, extra: dict[str, type] | None = None) -> tuple[str, dict[str, Any]]:
    """``"name:key=value:key=value"`` (the bench's --methods entries) -> (name, options).

    ``extra`` admits options the caller handles itself (the bench's ``steps``).
    """
    name, *parts = spec.split(":")
    if name not in METHODS:
        raise HastenError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    allowed = {**OPTIONS[name], **(extra or {})}
    options: dict[str, Any] = {}
    for part in parts:
        key, eq, value = part.partition("=")
        key = key.replace("-", "_")
        if not eq or key not in allowed:
            valid = ", ".join(sorted(allowed)) or "none"
            raise HastenError(f"bad option {part!r} for {name} in {spec!r}; use key=value with key in: {valid}")
        try:
            options[key] = allowed[key](value)
        except ValueError:
            raise HastenError(f"option {key} of {name} needs a {allowed[key].__name__}, got {value!r}") from None
    return name, options


__all__ = [
    "Chords", "Eval", "Hit", "METHODS", "Method", "OPTIONS", "ParaDiGMS", "ParaSolver", "ParaSolverTurbo", "SRDS",
    "Sequential", "SlidingWindow", "make_method", "parse_method_spec",
]
