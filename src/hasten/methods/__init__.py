"""Round-based sampling methods (sequential, CHORDS, ParaDiGMS, SRDS, ParaSolver, ParaSolver-Turbo), built by name.

Each method class declares its options as fields (:mod:`hasten.methods.declared`):
the spec grammar (``paradigms:window=8:tol=0.05``), their checks and the CLI
flags all come from those fields.
"""

from __future__ import annotations

from typing import Any

from hasten.errors import HastenError
from hasten.methods.base import Method
from hasten.methods.chords import Chords
from hasten.methods.declared import Option, declared_options
from hasten.methods.sequential import Sequential
from hasten.methods.srds import SRDS
from hasten.methods.window import ParaDiGMS, ParaSolver, ParaSolverTurbo, SlidingWindow
from hasten.options import option_types, parse_spec
from hasten.rounds import Eval, Hit

#: the method classes by name, in the order the CLI lists them
BUILDERS: dict[str, type] = {cls.name: cls for cls in (Sequential, Chords, ParaDiGMS, SRDS, ParaSolver,
                                                       ParaSolverTurbo)}
METHODS = tuple(BUILDERS)

#: each method's declared options (help, checks, parser), from its fields
DECLARED: dict[str, dict[str, Option]] = {name: declared_options(cls) for name, cls in BUILDERS.items()}
#: each method's options with their spec types, from the same fields
OPTIONS: dict[str, dict[str, type]] = {name: option_types(cls) if DECLARED[name] else {}
                                       for name, cls in BUILDERS.items()}
#: what the command line's ``--cores`` (the API's ``cores=``) sets in each method: CHORDS' cores, the sliding
#: window of ParaDiGMS / ParaSolver, SRDS' cap on evaluations a round, ParaSolver-Turbo's rho (its window keeps
#: the paper's per-solver default); sequential takes none
BUDGET_OPTION: dict[str, str] = {name: cls.budget for name, cls in BUILDERS.items() if cls.budget is not None}


def make_method(name: str, cores: int | None = None, **options: Any) -> Method:
    """A method by name, its options checked (by the method's own declaration).

    ``cores`` is the per-round evaluation budget, which each method names its own way
    (``BUDGET_OPTION``); an option given by that name wins over it. Options a method
    does not take are refused, naming those it does; ``None`` values are ignored.
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
    return BUILDERS[name](**options)


def parse_method_spec(spec: str, extra: dict[str, type] | None = None) -> tuple[str, dict[str, Any]]:
    """``"name:key=value:key=value"`` (the bench's --methods entries) -> (name, options).

    ``extra`` admits options the caller handles itself (the bench's ``steps``).
    """
    return parse_spec(spec, {name: {**OPTIONS[name], **(extra or {})} for name in METHODS}, "method")


__all__ = [
    "BUDGET_OPTION", "BUILDERS", "Chords", "DECLARED", "Eval", "Hit", "METHODS", "Method", "OPTIONS", "ParaDiGMS",
    "ParaSolver", "ParaSolverTurbo", "SRDS", "Sequential", "SlidingWindow", "make_method", "parse_method_spec",
]
