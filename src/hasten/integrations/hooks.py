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
#: every diffusers cache hook hasten knows, by name -> its config class in diffusers (the race runs all six)
CONFIG_CLASSES = {"firstblock": "FirstBlockCacheConfig", "taylorseer": "TaylorSeerCacheConfig",
                  "magcache": "MagCacheConfig", "fastercache": "FasterCacheConfig",
                  "pab": "PyramidAttentionBroadcastConfig", "seacache": "SeaCacheConfig"}


def config_class(name: str, valid=HOOKS, what: str = "diffusers cache", where: str = ""):
    """diffusers' config class of hook ``name`` (one of ``valid``); a HastenError naming ``what`` (and the flag
    ``where`` it came from) otherwise."""
    import diffusers

    if name not in valid:
        raise HastenError(f"unknown {what} {name!r}{where}; valid: {', '.join(valid)}")
    cls = getattr(diffusers, CONFIG_CLASSES[name], None)
    if cls is None:
        raise HastenError(f"this diffusers version ({diffusers.__version__}) has no {CONFIG_CLASSES[name]}")
    return cls


def parse_hook_spec(spec: str) -> tuple[str, dict]:
    """``diffusers:NAME[:key=value...]`` -> (NAME, options typed by the diffusers config's fields)."""
    prefix, _, rest = str(spec).partition(":")
    if prefix != "diffusers":
        raise HastenError(f"a diffusers cache spec starts with 'diffusers:', got {spec!r}")
    name = rest.split(":")[0]
    return parse_spec(rest, {name: option_types(config_class(name))}, "diffusers cache")


def hook_config(name: str, options: dict):
    """The diffusers config for a hook name (``firstblock``, ``taylorseer``, ``magcache``)."""
    cls = config_class(name)
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
