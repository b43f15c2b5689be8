"""Round-based sampling methods, built by name from the CLI and the API."""

from __future__ import annotations

from typing import Any

from hasten.errors import HastenError
from hasten.options import option_types, parse_spec
from hasten.methods.base import Method
from hasten.rounds import Eval, Hit
from hasten.methods.chords import Chords
from hasten.methods.sequential import Sequential
from hasten.methods.srds import SRDS
from hasten.methods.window import ParaDiGMS, ParaSolver, ParaSolverTurbo, SlidingWindow

METHODS = ("sequential", "chords", "paradigms", "srds", "parasolver", "parasolver-turbo")

#: the class or function that builds each method from its options
BUILDERS = {"sequential": Sequential, "chords": Chords, "paradigms": ParaDiGMS, "srds": SRDS,
            "parasolver": ParaSolver, "parasolver-turbo": ParaSolverTurbo}

#: Options each method takes, with their types: its builder's keyword arguments (dataclass fields).
OPTIONS: dict[str, dict[str, type]] = {name: option_types(BUILDERS[name]) for name in METHODS}


#: what the command line's ``--cores`` (the API's ``cores=``) sets in each method: CHORDS' cores, the sliding
#: window of ParaDiGMS / ParaSolver, SRDS' cap on evaluations a round, ParaSolver-Turbo's rho (its window
#: keeps the paper's per-solver default, see :func:`ParaSolverTurbo`); sequential takes none
BUDGET_OPTION: dict[str, str] = {"chords": "cores", "paradigms": "window", "parasolver": "window",
                                 "srds": "max_per_round", "parasolver-turbo": "rho"}


def make_method(name: str, cores: int | None = None, **options: Any) -> Method:
    """A method by name.

    ``cores`` is the per-round evaluation budget, which each method names its own way
    (``BUDGET_OPTION``); an option given by that name wins over it. Options a method
    does not take are refused; ``None`` values are ignored.
    """
    if name not in METHODS:
        raise HastenError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    options = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(options) - set(OPTIONS[name]))
    if unknown:
        valid = ", ".join(sorted(OPTIONS[name])) or "none"
        raise HastenError(f"method {name} does not take {', '.join(unknown)}; its options: {valid}")
    if cores is not None and name in BUDGET_OPTION:
        options.setdefault(BUDGET_OPTION[name], cores)
    if name == "chords" and options.get("cores") is None and isinstance(options.get("init"), (list, tuple)):
        options["cores"] = len(options["init"])
    return BUILDERS[name](**options)


def parse_method_spec(spec: str, extra: dict[str, type] | None = None) -> tuple[str, dict[str, Any]]:
    """``"name:key=value:key=value"`` (the bench's --methods entries) -> (name, options).

    ``extra`` admits options the caller handles itself (the bench's ``steps``).
    """
    return parse_spec(spec, {name: {**OPTIONS[name], **(extra or {})} for name in METHODS}, "method")


__all__ = [
    "BUDGET_OPTION", "BUILDERS", "Chords", "Eval", "Hit", "METHODS", "Method", "OPTIONS", "ParaDiGMS", "ParaSolver", "ParaSolverTurbo", "SRDS",
    "Sequential", "SlidingWindow", "make_method", "parse_method_spec",
]
