"""One grammar for every spec string: ``name[:positional][:key=value...]``.

Methods (``paradigms:window=8:tol=0.05``), caches (``abcache:2:interval=3``),
diffusers hooks (``diffusers:firstblock:threshold=0.2``) and bench step entries
(``ddpm:1000``) all parse here, with the same errors: an unknown name or key
names what is valid, a value of the wrong type names the type. The options a
name takes come from its builder's signature (:func:`option_types`), so a new
field of a method or cache config is an option everywhere at once.
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any, Callable

from hasten.errors import HastenError

#: how a value of each option type is read from a spec
_READERS: dict[type, Callable[[str], Any]] = {int: int, float: float, str: str}


def _scalar_type(hint: Any) -> type | None:
    """The spec type of an annotation: int, float or str (the first in a union; a sequence reads as str)."""
    if hint in _READERS:
        return hint
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            found = _scalar_type(arg)
            if found is not None:
                return found
    if origin is not None or hint is typing.Any:
        return str
    return None


def option_types(builder: Callable, skip: tuple[str, ...] = ()) -> dict[str, type]:
    """``{option: type}`` from a builder's keyword parameters (a dataclass's fields, a factory's arguments)."""
    hints = typing.get_type_hints(builder.__init__ if inspect.isclass(builder) else builder)
    out = {}
    for name, param in inspect.signature(builder).parameters.items():
        if name in skip or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        kind = _scalar_type(hints.get(name, str))
        if kind is not None:
            out[name] = kind
    return out


def read_value(name: str, key: str, value: str, kind: type) -> Any:
    """``value`` read as ``kind``, or an error naming the option of ``name`` and the type it needs."""
    try:
        return _READERS[kind](value)
    except ValueError:
        need = {int: "an integer", float: "a number", str: "a string"}[kind]
        raise HastenError(f"option {key} of {name} needs {need}, got {value!r}") from None


def parse_spec(spec: str, names: dict[str, dict[str, type]], what: str,
               positional: str | None = None) -> tuple[str, dict[str, Any]]:
    """``"name:key=value:..."`` -> (name, options), checked against ``names`` (name -> option types).

    ``positional``: the option a bare first part sets (``abcache:2`` is ``order=2``).
    Dashes in keys read as underscores (``max-iters`` is ``max_iters``).
    """
    text = str(spec)
    if not text.strip():
        raise HastenError(f"{what} must not be empty; valid: {', '.join(names)}")
    if any(ch.isspace() for ch in text.strip()):
        raise HastenError(f"{what} {text!r} has a space in it; write it as name:key=value:key=value, no spaces")
    name, *parts = text.strip().split(":")
    if name not in names:
        where = "" if text.strip() == name else f" in {spec!r}"
        raise HastenError(f"unknown {what} {name!r}{where}; valid: {', '.join(names)}")
    allowed = names[name]
    options: dict[str, Any] = {}
    for n, part in enumerate(parts):
        key, eq, value = part.partition("=")
        if not eq and n == 0 and positional in allowed:
            key, value = positional, part
        key = key.replace("-", "_")
        if (not eq and key != positional) or key not in allowed:
            valid = ", ".join(allowed) or "none"
            raise HastenError(f"bad option {part!r} for {name} in {spec!r}; use key=value with key in: {valid}")
        if key in options:
            raise HastenError(f"option {key} of {name} is given twice in {spec!r}"
                              + (f" ({positional} is also the bare first part)" if key == positional else "")
                              + "; give it once")
        options[key] = read_value(name, key, value, allowed[key])
    return name, options
