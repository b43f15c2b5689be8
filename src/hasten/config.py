"""Config files: a run description saved as JSON (``hasten tune``'s ``best.json``), read by every surface.

A config file holds keys of the run description's flat dict form
(:class:`hasten.spec.RunSpec`: ``method``, ``cores``, ``options``, ``steps``,
``solver``, ``stop``, ``cache``, ``model``, ...) plus ``hasten_config`` (the
format version) and ``tune`` (what the tuner measured, for people; not read
back). ``hasten sample --config FILE``, ``hasten.sample(..., config=FILE)`` and
``hasten.accelerate(pipe, config=FILE)`` read it under what the caller gives:
everything given wins, and a method of another name drops the file's cores
and options (:meth:`hasten.spec.Sampling.merged`). A file tuned for another
model is used with a notice.

Version 1 files (before ``model`` was recorded) read the same way.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

from hasten.checks import check_int
from hasten.errors import HastenError
from hasten.jsonable import json_safe
from hasten.spec import Placement, RunSpec, Sampling

log = logging.getLogger(__name__)

CONFIG_VERSION = 2
VERSIONS = (1, 2)
#: keys a config file may hold: the run description's, the version and the tuner's record
CONFIG_KEYS = ("hasten_config", *RunSpec.KEYS, "tune")


def read_json_file(path: "str | os.PathLike", where: str) -> Any:
    """A JSON file's content, or a HastenError starting with ``where``: missing, a folder, not UTF-8, not JSON."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise HastenError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise HastenError(f"{where} is a folder; give the JSON file") from None
    except UnicodeDecodeError:
        raise HastenError(f"{where} is not a JSON file: it is not UTF-8 text") from None
    except OSError as err:
        raise HastenError(f"{where} could not be read: {err}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise HastenError(f"{where} is not a JSON file: {err}") from None


#: the JSON type each key of a config file holds (None allowed for every key but hasten_config and method)
KEY_TYPES: dict[str, tuple[type, ...]] = {
    "hasten_config": (int,), "method": (str,), "cores": (int,), "options": (dict,), "steps": (int,),
    "solver": (str,), "stop": (str,), "cache": (str,), "executor": (str,), "device": (str,), "dtype": (str,),
    "max_batch": (int,), "compile": (str,), "backend": (str,), "timeout": (int, float), "context_parallel": (str,),
    "model": (str,), "call": (dict,), "seed": (int,), "batch": (int,), "local_files_only": (bool,), "tune": (dict,),
}
_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", dict: "an object", bool: "true or false"}


def _check_types(where: str, data: dict) -> None:
    """Refuse a key whose value has the wrong JSON type, naming the key and the type it takes."""
    for key, value in data.items():
        kinds = KEY_TYPES[key]
        if value is None and key not in ("hasten_config", "method"):
            continue
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if not ok:
            need = " or ".join(_TYPE_NAMES[k] for k in kinds)
            raise HastenError(f"{where}: key {key!r} must be {need}, got {type(value).__name__} {value!r:.60}")


def _read(source: "str | os.PathLike | Mapping") -> tuple[dict, str]:
    if isinstance(source, Mapping):
        return dict(source), "config"
    where = f"config {str(source)!r}"
    if Path(source).is_dir():
        raise HastenError(f"{where} is a folder; give the JSON file (e.g. best.json)")
    return read_json_file(source, where), where


def load_config(source: "str | os.PathLike | Mapping") -> dict:
    """A config (file path or dict), validated; raises a HastenError naming the bad key.

    Returns the file's keys with every sampling key present (None where the file leaves it open).
    """
    data, where = _read(source)
    if not isinstance(data, dict):
        raise HastenError(f"{where} must hold a JSON object with keys {', '.join(CONFIG_KEYS)}")
    unknown = [k for k in data if k not in CONFIG_KEYS]
    if unknown:
        raise HastenError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(CONFIG_KEYS)}")
    if "method" not in data:
        raise HastenError(f"{where}: key 'method' is required")
    _check_types(where, {k: v for k, v in data.items() if k != "hasten_config" or v is not None})
    version = data.get("hasten_config")
    if version is not None and version not in VERSIONS:
        raise HastenError(f"{where}: hasten_config {version!r} is not a version this hasten reads "
                          f"({', '.join(map(str, VERSIONS))}); it was written by another release")
    data.setdefault("options", {})
    for key in Sampling.KEYS:
        data.setdefault(key, None)
    _as_key(where, "method", lambda: _check_method(data["method"]))
    _as_key(where, "steps", lambda: check_int("steps", data["steps"], 1, allow_none=True))
    name = data["method"].split(":")[0]
    for key in ("solver", "cache", "stop"):
        if data[key] is not None:
            _as_key(where, key, lambda: Sampling(method=name, steps=None, **{key: data[key]}))
    _as_key(where, "options' (or 'cores", lambda: Sampling(**{k: data[k] for k in Sampling.KEYS}))
    placement = {k: data[k] for k in Placement.KEYS if k in data}
    if placement:
        _as_key(where, "/".join(placement), lambda: Placement(**placement))
    return data


def _check_method(method: Any) -> None:
    from hasten.methods import METHODS

    if not isinstance(method, str) or method.split(":")[0] not in METHODS:
        raise HastenError(f"must be one of {', '.join(METHODS)}, got {method!r}")


def _as_key(where: str, key: str, check) -> None:
    try:
        check()
    except (HastenError, TypeError) as err:
        raise HastenError(f"{where}: key '{key}': {err}") from None


def merge_config(source: "str | os.PathLike | Mapping", model: Any = None, **given: Any) -> RunSpec:
    """The run a config describes under what the caller gave (keys of :meth:`RunSpec.from_dict`; None: not given).

    Sampling keys merge as :meth:`hasten.spec.Sampling.merged` (a method of
    another name drops the file's cores and options); every other key given wins.
    """
    return RunSpec.from_dict(merged_keys(source, model=model, **given))


def merged_keys(source: "str | os.PathLike | Mapping", **given: Any) -> dict[str, Any]:
    """:func:`merge_config` as a flat dict (``steps`` may stay None: ``hasten.accelerate`` takes it per call)."""
    config = load_config(source)
    given = {k: v for k, v in given.items() if v is not None}
    tuned_for, model = config.get("model"), given.get("model")
    names = {tuned_for, (config.get("tune") or {}).get("model")}  # the spec tuned on, and that model's name
    if tuned_for is not None and isinstance(model, str) and model not in names:
        log.warning("hasten: this config was tuned for model %s; it runs here on %s, where its quality target "
                    "was not measured", tuned_for, model)
    file_sampling = Sampling(**{k: config[k] for k in Sampling.KEYS})
    sampling = file_sampling.merged(**{k: given.pop(k) for k in Sampling.KEYS if k in given})
    rest = {k: config[k] for k in (*Placement.KEYS, *RunSpec.OWN_KEYS) if config.get(k) is not None}
    return {**rest, **sampling.to_dict(raw=True), **given}


def save_config(config: Mapping[str, Any], path: "str | os.PathLike") -> Path:
    """Write a config (validated first, the version added) as JSON; returns the path."""
    data = {"hasten_config": CONFIG_VERSION, **load_config(dict(config))}
    path = Path(path)
    path.write_text(json.dumps(json_safe(data), indent=2) + "\n")
    return path
