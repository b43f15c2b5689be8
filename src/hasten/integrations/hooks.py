"""diffusers' own cache hooks (FirstBlockCache, TaylorSeer, MagCache) as a baseline beside AB-Cache.

They hook inside the network (transformer blocks), not between the method and
the executor as hasten's caches do, so they serve sequential sampling only: a
hook assumes one trajectory per ``cache_context``. The engine's NFE therefore
stays N; what they save shows in wall time.
"""

from __future__ import annotations

from contextlib import contextmanager

from hasten.errors import HastenError
from hasten.options import option_types, parse_spec

HOOKS = ("firstblock", "taylorseer", "magcache")


def _config_class(name: str):
    import diffusers

    classes = {"firstblock": "FirstBlockCacheConfig", "taylorseer": "TaylorSeerCacheConfig",
               "magcache": "MagCacheConfig"}
    if name not in classes:
        raise HastenError(f"unknown diffusers cache {name!r}; valid: {', '.join(HOOKS)}")
    cls = getattr(diffusers, classes[name], None)
    if cls is None:
        raise HastenError(f"this diffusers version has no {classes[name]}")
    return cls


def parse_hook_spec(spec: str) -> tuple[str, dict]:
    """``diffusers:NAME[:key=value...]`` -> (NAME, options typed by the diffusers config's fields)."""
    prefix, _, rest = str(spec).partition(":")
    if prefix != "diffusers":
        raise HastenError(f"a diffusers cache spec starts with 'diffusers:', got {spec!r}")
    name = rest.split(":")[0]
    return parse_spec(rest, {name: option_types(_config_class(name))}, "diffusers cache")


def hook_config(name: str, options: dict):
    """The diffusers config for a hook name (``firstblock``, ``taylorseer``, ``magcache``)."""
    cls = _config_class(name)
    try:
        return cls(**options)
    except (TypeError, ValueError) as err:
        raise HastenError(f"diffusers cache {name}: {err}") from None


@contextmanager
def diffusers_cache(network, denoiser, config):
    """Enable a diffusers cache hook on ``network`` for one run, with every call in a cache context."""
    if not hasattr(network, "enable_cache"):
        raise HastenError(f"{type(network).__name__} does not support diffusers cache hooks")
    try:
        network.enable_cache(config)
    except Exception as err:  # noqa: BLE001 - diffusers refuses models a hook cannot serve
        raise HastenError(f"{type(network).__name__} cannot use {type(config).__name__}: {err}") from None
    denoiser.context = lambda: network.cache_context("hasten")
    try:
        yield
    finally:
        denoiser.context = None
        network.disable_cache()
