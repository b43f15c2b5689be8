"""The race's entrants: hasten's caches and methods against diffusers' own cache hooks, parsed and validated.

An entrant is a spec string:

* ``hasten:sequential``: the reference (always run first, whatever the list says);
* ``hasten:CACHE``: sequential sampling with a hasten cache (``reuse:interval=2``,
  ``abcache:3:interval=3``, ``abcache:2:tol=0.05``; :mod:`hasten.caches`);
* ``hasten:chords:K`` or ``hasten:chords:K+CACHE``: CHORDS with K cores, alone or with a cache;
* ``diffusers:HOOK[:key=value...]``: sequential sampling with one of diffusers' hooks
  (:data:`HOOKS`) enabled on the transformer through ``enable_cache``, its options
  the hook config's own fields. ``magcache`` is calibrated on the same model first, as
  its docs say (a ``calibrate=True`` run whose printed ratios become ``mag_ratios``);
  ``pab`` and ``fastercache`` read the current timestep from the transformer's call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hasten.caches import parse_cache_spec
from hasten.errors import HastenError
from hasten.integrations.hooks import CONFIG_CLASSES, config_class
from hasten.options import option_types, parse_spec
from hasten.spec import Sampling

#: diffusers 0.42's cache hooks by the race's short name -> config class
HOOKS = tuple(CONFIG_CLASSES)
#: config fields the race sets itself (from the run) and a spec may not
_SET_BY_RACE = ("mag_ratios", "calibrate", "num_inference_steps", "current_timestep_callback", "is_guidance_distilled",
                "raw_vision_callback", "attention_weight_callback", "low_frequency_weight_callback",
                "high_frequency_weight_callback")


@dataclass(frozen=True)
class Entrant:
    """One row of the race: ``name`` (its spec), ``kind`` (``hasten`` / ``diffusers``), what it runs.

    hasten entrants carry the ``sampling`` they run; diffusers entrants the hook's short name and options.
    """

    name: str
    kind: str
    sampling: Sampling | None = None
    hook: str | None = None
    options: dict = field(default_factory=dict)

    @property
    def settings(self) -> dict:
        if self.kind == "diffusers":
            return {"hook": self.hook, **self.options}
        s = self.sampling
        return {"method": s.name, "cores": s.cores, "cache": None if s.cache is None else str(s.cache),
                "stop": s.stop}


def _config_class(hook: str):
    return config_class(hook, HOOKS, "diffusers hook", " in --race-entrants")


def parse_entrant(spec: str, steps: int) -> Entrant:
    """A spec string -> :class:`Entrant`, validated (a bad spec is a one-line HastenError naming --race-entrants)."""
    text = str(spec).strip()
    kind, _, rest = text.partition(":")
    if kind not in ("hasten", "diffusers") or not rest:
        raise HastenError(f"--race-entrants: an entrant is hasten:... or diffusers:..., got {spec!r}")
    if kind == "diffusers":
        hook = rest.split(":")[0]
        cls = _config_class(hook)
        types = {k: v for k, v in option_types(cls).items() if k not in _SET_BY_RACE}
        _, options = parse_spec(rest, {hook: types}, "diffusers hook")
        entrant = Entrant(text, "diffusers", hook=hook, options=options)
        hook_config(entrant, steps, mag_ratios=[1.0] * steps)  # validates the options now
        return entrant
    if rest == "sequential":
        return Entrant(text, "hasten", Sampling("sequential", steps=steps))
    if rest.startswith("chords"):
        method, _, cache = rest.partition("+")
        name, _, cores = method.partition(":")
        if name != "chords" or not cores.isdigit():
            raise HastenError(f"--race-entrants: CHORDS is hasten:chords:K[+CACHE], got {spec!r}")
        parse_cache_spec(cache or "none")
        return Entrant(text, "hasten", Sampling("chords", int(cores), steps=steps, cache=cache or None))
    if parse_cache_spec(rest) is None:
        raise HastenError(f"--race-entrants: hasten:none is the reference; write hasten:sequential, got {spec!r}")
    return Entrant(text, "hasten", Sampling("sequential", steps=steps, cache=rest))


def hook_config(entrant: Entrant, steps: int, mag_ratios: list[float] | None = None, timestep=None,
                guidance_distilled: bool = True, calibrate: bool = False) -> Any:
    """The diffusers config of a hook entrant for a run of ``steps`` steps.

    ``timestep``: a callable giving the current timestep on the scheduler's 0..1000 scale
    (PAB and FasterCache skip by timestep range); ``mag_ratios``: MagCache's calibrated ratios.
    """
    cls = _config_class(entrant.hook)
    opts: dict = dict(entrant.options)
    if entrant.hook == "magcache":
        opts.update(num_inference_steps=steps, **({"calibrate": True} if calibrate else {"mag_ratios": mag_ratios}))
    if entrant.hook in ("pab", "fastercache"):
        opts["current_timestep_callback"] = timestep or (lambda: 500)
    if entrant.hook == "pab" and not any(k.endswith("_skip_range") and not k.endswith("timestep_skip_range")
                                         for k in opts):
        opts["spatial_attention_block_skip_range"] = 2  # the docs' example; PAB skips nothing without a range
    if entrant.hook == "fastercache":
        opts["is_guidance_distilled"] = guidance_distilled
    try:
        return cls(**opts)
    except (TypeError, ValueError) as err:
        raise HastenError(f"--race-entrants {entrant.name}: {err}") from None


def default_entrants(steps: int) -> list[str]:
    """The full field: AB-Cache orders 1-4 at intervals 2-4, a tolerance sweep, CHORDS (with and without a cache)
    and each diffusers hook at its documented settings and over a sweep."""
    field_ = ["hasten:sequential"]
    field_ += [f"hasten:{'reuse' if k == 1 else f'abcache:{k}'}:interval={t}" for k in (1, 2, 3, 4) for t in (2, 3, 4)]
    field_ += [f"hasten:abcache:2:tol={tol:g}" for tol in (0.01, 0.02, 0.05, 0.1)]
    field_ += [f"hasten:abcache:3:tol={tol:g}" for tol in (0.02, 0.05)]
    field_ += ["hasten:chords:4", "hasten:chords:4+abcache:2:interval=2"]
    field_ += [f"diffusers:firstblock:threshold={t:g}" for t in (0.05, 0.1, 0.2, 0.4)]
    field_ += ["diffusers:taylorseer"] + [f"diffusers:taylorseer:cache_interval={i}:max_order={o}"
                                          for i, o in ((3, 1), (3, 2), (5, 2))]
    field_ += [f"diffusers:magcache:threshold={t:g}" for t in (0.06, 0.12, 0.24)]
    field_ += ["diffusers:fastercache", "diffusers:pab:spatial_attention_block_skip_range=2",
               "diffusers:pab:spatial_attention_block_skip_range=3", "diffusers:seacache"]
    return field_


def parse_entrants(specs: list[str] | None, steps: int) -> list[Entrant]:
    """Every entrant, the reference first (added when missing); a name given twice is refused."""
    specs = list(specs) if specs else default_entrants(steps)
    twice = sorted({s for s in specs if specs.count(s) > 1})
    if twice:
        raise HastenError(f"--race-entrants lists {', '.join(twice)} more than once")
    entrants = [parse_entrant(s, steps) for s in specs]
    reference = [e for e in entrants if e.name == "hasten:sequential"] or [parse_entrant("hasten:sequential", steps)]
    return reference + [e for e in entrants if e.name != "hasten:sequential"]
