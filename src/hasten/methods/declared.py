"""One declaration per method's options, in the style of diffusers' hook configs.

A method is a dataclass whose fields are its options; each is declared once
with :func:`option`: its default, what it means (the help of its command-line
flag), the values it takes (checked when the method is built) and, where the
command line reads it otherwise than the spec grammar, its parser. The spec
grammar (:func:`hasten.options.option_types` reads the fields' types), the
validation (:func:`check_options`, from each method's ``__post_init__``) and
the CLI flags (:func:`hasten.cli.options.add_method_options`) all come from it.
Checks that need the step count stay in each method's ``validate(steps)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from hasten.checks import check_int, check_positive
from hasten.errors import HastenError


@dataclass(frozen=True)
class Option:
    """What an option's field declares besides its default and type."""

    help: str
    low: int | None = None  # an integer >= low
    positive: bool = False  # a finite number > 0
    above: float | None = None  # a finite number > above
    parse: Callable[[str], Any] | None = None  # the command line's reader, where not the spec grammar's
    metavar: str | None = None

    def check(self, name: str, value: Any) -> None:
        """Refuse a value this option does not take, naming it (None is the default's "not given")."""
        if value is None:
            return
        if self.low is not None:
            check_int(name, value, self.low)
        if self.positive:
            check_positive(name, value)
        if self.above is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                       or not self.above < value < float("inf")):
            raise HastenError(f"{name} must be > {self.above:g} and finite, got {value!r}")


def option(default: Any, help: str, **declared: Any) -> Any:
    """A method option: a dataclass field with its :class:`Option` (help, checks, parser) in its metadata."""
    return dataclasses.field(default=default, metadata={"option": Option(help, **declared)})


def declared_options(method: Any) -> dict[str, Option]:
    """``{name: Option}`` of a method class or object, in declaration order (none for a method without fields)."""
    if not dataclasses.is_dataclass(method):
        return {}
    return {f.name: f.metadata["option"] for f in dataclasses.fields(method) if "option" in f.metadata}


def check_options(method: Any) -> None:
    """Check every declared option of a built method (its ``__post_init__`` calls this)."""
    for name, declared in declared_options(method).items():
        declared.check(name, getattr(method, name))
